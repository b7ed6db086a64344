// Newline framing of the control socket. Bytes arrive in arbitrary chunks; a request is complete
// at "\n". A peer that never sends "\n" must not make us buffer without bound, so a line longer
// than the limit is reported once as an overflow and everything after it is dropped (the server
// answers EINVAL and closes the connection).

export const MAX_LINE_BYTES = 64 * 1024;

export type LineEvent = { line: string } | { overflow: true };

export class LineSplitter {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private overflowed = false;

  constructor(private readonly maxLineBytes = MAX_LINE_BYTES) {}

  /** Feeds one chunk; returns the complete lines it finished (without "\n" or a trailing "\r"). */
  push(chunk: Buffer): LineEvent[] {
    if (this.overflowed) return [];
    const events: LineEvent[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      if (this.buffered + (nl - start) > this.maxLineBytes) return this.overflow(events);
      this.chunks.push(chunk.subarray(start, nl));
      let line = Buffer.concat(this.chunks).toString('utf8');
      if (line.endsWith('\r')) line = line.slice(0, -1);
      events.push({ line });
      this.chunks = [];
      this.buffered = 0;
      start = nl + 1;
    }
    const rest = chunk.length - start;
    if (rest > 0) {
      if (this.buffered + rest > this.maxLineBytes) return this.overflow(events);
      // copy: the caller may reuse the chunk's memory
      this.chunks.push(Buffer.from(chunk.subarray(start)));
      this.buffered += rest;
    }
    return events;
  }

  /** Bytes of an unfinished line held back (a request cut off by the end of the connection). */
  get pendingBytes(): number {
    return this.buffered;
  }

  private overflow(events: LineEvent[]): LineEvent[] {
    this.overflowed = true;
    this.chunks = [];
    this.buffered = 0;
    events.push({ overflow: true });
    return events;
  }
}
