// Device names: ibnbd<N> with the smallest free N, as IBNBD numbered /dev/ibnbd<N>.
export class NameAllocator {
  private readonly used = new Set<number>();

  allocate(): { index: number; name: string } {
    let n = 0;
    while (this.used.has(n)) n++;
    this.used.add(n);
    return { index: n, name: `ibnbd${n}` };
  }

  /** Claim a specific index (re-mapping on the same socket path after a restart). */
  claim(index: number): boolean {
    if (this.used.has(index)) return false;
    this.used.add(index);
    return true;
  }

  release(index: number): void {
    this.used.delete(index);
  }
}
