// One job at a time, in the order they were queued. The client daemon keeps one queue per
// session for its admin traffic (maps, unmaps, the re-open after a reconnect: a request the
// server does not answer holds up that session only) and one global lock for the short local
// steps that pick names and sockets (client.ts).
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }

  /** fn in its turn, unless that turn does not come within waitMs: then QUEUE_BUSY at once, and
   *  fn never runs (its turn is skipped). Once fn started, its own result is awaited in full. */
  runWithin<T>(waitMs: number, fn: () => Promise<T>): Promise<T | typeof QUEUE_BUSY> {
    return new Promise((resolve, reject) => {
      let turn: 'waiting' | 'started' | 'given up' = 'waiting';
      const timer = setTimeout(() => {
        if (turn !== 'waiting') return;
        turn = 'given up';
        resolve(QUEUE_BUSY);
      }, Math.max(0, waitMs));
      void this.run(async () => {
        if (turn === 'given up') return;
        turn = 'started';
        clearTimeout(timer);
        try {
          resolve(await fn());
        } catch (e) {
          reject(e);
        }
      });
    });
  }
}

/** runWithin's answer when the queue did not get free in time. */
export const QUEUE_BUSY: unique symbol = Symbol('queue busy');
