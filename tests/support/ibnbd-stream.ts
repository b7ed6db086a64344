// Reassembles IBNBD messages from a byte stream that delivers them in arbitrary pieces (a TCP
// socket): IBNBD has no length field, so each message's size comes from its header's type
// (msgSize; IO by the negotiated version). Pure: chunks in, messages out, no I/O.
// After a protocol error the stream cannot be resynchronised, so the decoder stays failed.
import { HDR_SIZE, PROTO_VER_MAJOR, ProtocolError, decode, msgSize, peekHeader, type Message } from '../../src/proto/ibnbd.js';

export interface StreamResult {
  /** Whole messages completed by this chunk, in order (those before an error included). */
  messages: Message[];
  /** Set once the stream broke the protocol; every later push returns it again. */
  error?: ProtocolError;
}

export class IbnbdStreamDecoder {
  private pending: Buffer = Buffer.alloc(0);
  private failed: ProtocolError | undefined;
  private readonly version: number;

  /** `version`: the negotiated protocol version, which fixes the IO size (2: 32 bytes, 1: 24). */
  constructor(options: { version?: number } = {}) {
    this.version = options.version ?? PROTO_VER_MAJOR;
  }

  /** Bytes held back waiting for the rest of a message. */
  get bufferedBytes(): number {
    return this.pending.length;
  }

  get error(): ProtocolError | undefined {
    return this.failed;
  }

  push(chunk: Uint8Array): StreamResult {
    const messages: Message[] = [];
    if (this.failed) return { messages, error: this.failed };
    const buf = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    let at = 0;
    while (buf.length - at >= HDR_SIZE) {
      const hdr = peekHeader(buf.subarray(at, at + HDR_SIZE));
      if (!hdr.ok) return this.fail(messages, hdr.error);
      const size = msgSize(hdr.type, this.version);
      if (buf.length - at < size) break;
      const r = decode(buf.subarray(at, at + size));
      if (!r.ok) return this.fail(messages, r.error);
      messages.push(r.msg);
      at += size;
    }
    // copy the tail: the caller may reuse its chunk, and a retained subarray would pin it
    this.pending = Buffer.from(buf.subarray(at));
    return { messages };
  }

  /** The stream has ended: an error if it stopped inside a message (or had failed already). */
  end(): ProtocolError | undefined {
    if (this.failed) return this.failed;
    if (this.pending.length === 0) return undefined;
    const hdr = peekHeader(this.pending);
    const what = hdr.ok ? `${hdr.type} (${this.pending.length} of ${msgSize(hdr.type, this.version)} bytes)` : `header (${this.pending.length} of ${HDR_SIZE} bytes)`;
    this.failed = new ProtocolError('EINVAL', 'length', `stream ended inside a ${what}`);
    return this.failed;
  }

  private fail(messages: Message[], error: ProtocolError): StreamResult {
    this.failed = error;
    this.pending = Buffer.alloc(0);
    return { messages, error };
  }
}
