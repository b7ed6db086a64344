// Mapping names. A mapping keeps its name (and so its socket <run-dir>/vhost/<name>.sock) for its
// whole life, across daemon restarts (the state file): a name is never handed to another mapping
// while one holds it. Unnamed maps get ibnbd<N> with the smallest free N, as IBNBD numbered
// /dev/ibnbd<N>; `name=` picks one (map-string.ts checks its form).
export class NameAllocator {
  private readonly used = new Set<string>();

  /** The smallest free ibnbd<N>, now taken. */
  allocate(): string {
    let n = 0;
    while (this.used.has(`ibnbd${n}`)) n++;
    this.used.add(`ibnbd${n}`);
    return `ibnbd${n}`;
  }

  /** Takes this name; false when a mapping holds it. */
  claim(name: string): boolean {
    if (this.used.has(name)) return false;
    this.used.add(name);
    return true;
  }

  release(name: string): void {
    this.used.delete(name);
  }
}
