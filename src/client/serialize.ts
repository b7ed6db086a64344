// Control commands change shared state (names, sessions, sockets) across awaits; running them one
// at a time keeps "smallest free N" and "EEXIST for the same device_path" exact.
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}
