// The TypeScript IBNBD codec against the golden vectors (tests/support/vectors/ibnbd.json): exact bytes
// both ways for every message type, the errno and field of every malformed buffer, and a stream
// of messages reassembled from chunks cut at every possible point.
import test from 'ava';
import { IbnbdError } from '../../src/errors.js';
import {
  IO_SIZE, IO_V1_SIZE, MSG_TYPES, OPEN_RSP_SIZE, OPEN_SIZE, ProtocolError, SESS_INFO_SIZE, CLOSE_SIZE,
  decode, encode, msgSize, peekHeader, type Message,
} from '../../src/proto/ibnbd.js';
import { IbnbdStreamDecoder } from '../support/ibnbd-stream.js';
import { accepted, malformed, prng, unencodable, valid } from '../support/vectors/ibnbd-vectors.js';

test('the golden file covers every message type, every IO op and flag, and 30+ malformed buffers', (t) => {
  const types = new Set(valid.map((v) => v.msg.type));
  t.deepEqual([...types].sort(), [...MSG_TYPES].sort());
  const ios = valid.map((v) => v.msg).filter((m): m is Extract<Message, { type: 'IO' }> => m.type === 'IO');
  t.deepEqual(new Set(ios.map((m) => m.op)), new Set(['READ', 'WRITE', 'FLUSH', 'DISCARD', 'SECURE_ERASE', 'WRITE_ZEROES']));
  t.true(ios.some((m) => m.sync) && ios.some((m) => m.fua));
  t.true(valid.some((v) => v.bytes.length === IO_V1_SIZE));
  t.true(malformed.length >= 30, `${malformed.length} malformed`);
});

test('message sizes are those of docs/protocol.md', (t) => {
  t.is(msgSize('SESS_INFO'), SESS_INFO_SIZE);
  t.is(SESS_INFO_SIZE, 36);
  t.is(msgSize('SESS_INFO_RSP'), 36);
  t.is(msgSize('OPEN'), OPEN_SIZE);
  t.is(OPEN_SIZE, 264);
  t.is(msgSize('OPEN_RSP'), OPEN_RSP_SIZE);
  t.is(OPEN_RSP_SIZE, 56);
  t.is(msgSize('CLOSE'), CLOSE_SIZE);
  t.is(CLOSE_SIZE, 8);
  t.is(msgSize('IO'), IO_SIZE);
  t.is(IO_SIZE, 32);
  t.is(msgSize('IO', 1), 24);
});

for (const v of valid) {
  test(`valid: ${v.name}: decodes to its fields and encodes to its bytes`, (t) => {
    const r = decode(v.bytes);
    if (!r.ok) return t.fail(`rejected: ${r.error.code} ${r.error.message}`);
    t.deepEqual(r.msg, v.msg);
    t.is(encode(v.msg, { version: v.version }).toString('hex'), v.bytes.toString('hex'));
  });
}

for (const v of accepted) {
  test(`accepted: ${v.name}`, (t) => {
    const r = decode(v.bytes);
    if (!r.ok) return t.fail(`rejected: ${r.error.code} ${r.error.message}`);
    t.deepEqual(r.msg, v.msg);
    t.is(encode(v.msg).toString('hex'), v.canonical.toString('hex'));
  });
}

for (const v of malformed) {
  test(`malformed: ${v.name} → ${v.errno} (${v.field})`, (t) => {
    let r: ReturnType<typeof decode>;
    try {
      r = decode(v.bytes);
    } catch (e) {
      return t.fail(`threw ${String(e)}`);
    }
    if (r.ok) return t.fail(`accepted as ${JSON.stringify(r.msg, (_k, x) => (typeof x === 'bigint' ? String(x) : x))}`);
    t.true(r.error instanceof ProtocolError);
    t.true(r.error instanceof IbnbdError);
    t.is(r.error.code, v.errno);
    t.is(r.error.field, v.field);
    t.true(r.error.message.startsWith(`${v.field}: `), r.error.message);
  });
}

for (const v of unencodable) {
  test(`unencodable: ${v.name} → ${v.errno}`, (t) => {
    const e = t.throws(() => encode(v.msg, { version: v.version }), { instanceOf: ProtocolError });
    t.is(e?.code, v.errno);
  });
}

test('encode rejects fields of the wrong type or range with EINVAL naming the field', (t) => {
  const io = valid.find((v) => v.msg.type === 'IO')!.msg;
  const cases: [Record<string, unknown>, string][] = [
    [{ ...io, deviceId: -1 }, 'device_id'],
    [{ ...io, deviceId: 2 ** 32 }, 'device_id'],
    [{ ...io, deviceId: 1.5 }, 'device_id'],
    [{ ...io, sector: 5 }, 'sector'],
    [{ ...io, sector: 1n << 64n }, 'sector'],
    [{ ...io, sector: -1n }, 'sector'],
    [{ ...io, biSize: '4096' }, 'bi_size'],
    [{ ...io, prio: 65536 }, 'prio'],
    [{ ...io, sync: 1 }, 'rw.flags'],
    [{ type: 'SESS_INFO', ver: 256 }, 'ver'],
    [{ type: 'OPEN', accessMode: 'RW', ioMode: 'blockio', devName: 'a' }, 'access_mode'],
    [{ type: 'OPEN', accessMode: 'rw', ioMode: 'autoio', devName: 'a' }, 'io_mode'],
    [{ type: 'OPEN', accessMode: 'rw', ioMode: 'blockio', devName: 'a\ud800' }, 'dev_name'],
    [{ type: 'CLOSE' }, 'device_id'],
  ];
  for (const [msg, field] of cases) {
    const e = t.throws(() => encode(msg as unknown as Message), { instanceOf: ProtocolError }, field);
    t.is(e?.code, 'EINVAL', field);
    t.is(e?.field, field);
  }
  t.is(t.throws(() => encode({ ...io, op: 'TRIM' } as unknown as Message), { instanceOf: ProtocolError })?.code, 'EOPNOTSUPP');
  t.is(t.throws(() => encode({ type: 'PING' } as unknown as Message), { instanceOf: ProtocolError })?.code, 'EPROTO');
  t.is(t.throws(() => encode(null as unknown as Message), { instanceOf: ProtocolError })?.code, 'EPROTO');
});

test('decode reads from a view into a larger buffer at an odd offset', (t) => {
  for (const v of valid) {
    const big = Buffer.alloc(v.bytes.length + 7, 0xee);
    v.bytes.copy(big, 3);
    const r = decode(new Uint8Array(big.buffer, big.byteOffset + 3, v.bytes.length));
    t.deepEqual(r, { ok: true, msg: v.msg }, v.name);
  }
});

test('decode of something that is not a byte buffer is EINVAL, not an exception', (t) => {
  for (const x of [undefined, null, 'abcd', 42, {}, [4, 0, 0, 0]]) {
    const r = decode(x as unknown as Uint8Array);
    t.deepEqual(r.ok ? 'accepted' : [r.error.code, r.error.field], ['EINVAL', 'length'], String(x));
  }
});

test('peekHeader learns the type from 4 bytes and rejects a bad header early', (t) => {
  const io = valid.find((v) => v.msg.type === 'IO')!.bytes;
  t.deepEqual(peekHeader(io.subarray(0, 4)), { ok: true, type: 'IO' });
  const r = peekHeader(Buffer.from([6, 0, 0, 0]));
  t.false(r.ok);
  t.is(!r.ok && r.error.code, 'EPROTO');
  const short = peekHeader(io.subarray(0, 3));
  t.is(!short.ok && short.error.code, 'EINVAL');
});

test('decode never throws on random buffers and on every single-byte mutation of the vectors', (t) => {
  const rand = prng(1);
  let rejected = 0;
  for (let i = 0; i < 5000; i++) {
    const b = Buffer.alloc(Math.floor(rand() * 300));
    for (let k = 0; k < b.length; k++) b[k] = Math.floor(rand() * 256);
    if (rand() < 0.5 && b.length >= 4) { b[0] = Math.floor(rand() * 7); b[1] = 0; b[2] = 0; b[3] = 0; }
    const r = decode(b);
    if (!r.ok) rejected++;
  }
  t.true(rejected > 0);
  for (const v of valid) {
    for (let at = 0; at < v.bytes.length; at++) {
      const b = Buffer.from(v.bytes);
      b[at] ^= 0xa5;
      const r = decode(b);
      if (r.ok) t.deepEqual(decode(encode(r.msg, { version: v.version })), r, `${v.name} @${at}`);
      else t.true(r.error instanceof ProtocolError);
    }
  }
});

// ---- split-chunk decoding ------------------------------------------------------------------

const v2 = valid.filter((v) => v.version === 2);
const stream = Buffer.concat(v2.map((v) => v.bytes));
const expected = v2.map((v) => v.msg);

function feed(dec: IbnbdStreamDecoder, chunks: Uint8Array[]): Message[] {
  const out: Message[] = [];
  for (const c of chunks) {
    const r = dec.push(c);
    if (r.error) throw r.error;
    out.push(...r.messages);
  }
  return out;
}

test(`stream: ${v2.length} messages (${stream.length} bytes) cut into two chunks at every split point`, (t) => {
  for (let cut = 0; cut <= stream.length; cut++) {
    const dec = new IbnbdStreamDecoder();
    const got = feed(dec, [stream.subarray(0, cut), stream.subarray(cut)]);
    if (got.length !== expected.length) return t.fail(`cut at ${cut}: ${got.length} messages`);
    t.deepEqual(got, expected, `cut at ${cut}`);
    t.is(dec.bufferedBytes, 0);
    t.is(dec.end(), undefined);
  }
});

test('stream: cut into three chunks at every pair of points around each message boundary', (t) => {
  const bounds: number[] = [];
  let at = 0;
  for (const v of v2) bounds.push((at += v.bytes.length));
  const points = [...new Set(bounds.flatMap((b) => [b - 5, b - 4, b - 3, b - 1, b, b + 1, b + 3, b + 4]).filter((p) => p > 0 && p < stream.length))].sort((a, b) => a - b);
  let runs = 0;
  for (const a of points) {
    for (const b of points) {
      if (b <= a) continue;
      const got = feed(new IbnbdStreamDecoder(), [stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]);
      t.deepEqual(got, expected, `cuts at ${a}, ${b}`);
      runs++;
    }
  }
  t.true(runs > 1000, `${runs} three-way cuts`);
});

test('stream: one byte at a time, and random chunk sizes', (t) => {
  const bytes = [...stream].map((x) => Uint8Array.of(x));
  t.deepEqual(feed(new IbnbdStreamDecoder(), bytes), expected);
  const rand = prng(7);
  for (let round = 0; round < 200; round++) {
    const chunks: Uint8Array[] = [];
    for (let at = 0; at < stream.length; ) {
      const n = Math.min(stream.length - at, Math.floor(rand() * 300));
      chunks.push(stream.subarray(at, at + n));
      at += n;
    }
    t.deepEqual(feed(new IbnbdStreamDecoder(), chunks), expected, `round ${round}`);
  }
});

test('stream: the caller may reuse its chunk buffer after push', (t) => {
  const dec = new IbnbdStreamDecoder();
  const chunk = Buffer.alloc(5);
  const got: Message[] = [];
  for (let at = 0; at < stream.length; at += 5) {
    chunk.fill(0);
    const n = stream.copy(chunk, 0, at, at + 5);
    got.push(...dec.push(chunk.subarray(0, n)).messages);
  }
  t.deepEqual(got, expected);
});

test('stream: protocol version 1 frames IO as 24 bytes', (t) => {
  const v1io = valid.find((v) => v.version === 1)!;
  const close = valid.find((v) => v.msg.type === 'CLOSE')!;
  const s = Buffer.concat([v1io.bytes, close.bytes, v1io.bytes]);
  for (let cut = 0; cut <= s.length; cut++) {
    t.deepEqual(feed(new IbnbdStreamDecoder({ version: 1 }), [s.subarray(0, cut), s.subarray(cut)]), [v1io.msg, close.msg, v1io.msg]);
  }
});

test('stream: a bad header fails as soon as its 4 bytes arrive, after the messages before it', (t) => {
  const first = valid.find((v) => v.msg.type === 'OPEN_RSP')!;
  const dec = new IbnbdStreamDecoder();
  const r1 = dec.push(Buffer.concat([first.bytes, Buffer.from([7, 0])]));
  t.deepEqual(r1.messages, [first.msg]);
  t.is(r1.error, undefined);
  const r2 = dec.push(Buffer.from([0, 0]));
  t.is(r2.error?.code, 'EPROTO');
  t.is(r2.error?.field, 'hdr.type');
  // failed for good: the stream cannot be resynchronised
  const r3 = dec.push(first.bytes);
  t.deepEqual(r3.messages, []);
  t.is(r3.error, r2.error);
  t.is(dec.end(), r2.error);
});

test('stream: malformed message bodies fail with the errno decode() gives', (t) => {
  let checked = 0;
  for (const v of malformed) {
    const hdr = peekHeader(v.bytes);
    // only buffers whose length is their type's frame size: in a stream the header fixes the length
    // (shorter than a header: not a frame at all, see the end() test)
    if (v.bytes.length < 4) continue;
    if (hdr.ok && v.bytes.length !== msgSize(hdr.type, v.bytes.length === IO_V1_SIZE ? 1 : 2)) continue;
    const dec = new IbnbdStreamDecoder({ version: v.bytes.length === IO_V1_SIZE ? 1 : 2 });
    const close = valid.find((x) => x.msg.type === 'CLOSE')!;
    const r = dec.push(Buffer.concat([close.bytes, v.bytes, close.bytes]));
    t.deepEqual(r.messages, [close.msg], v.name);
    t.is(r.error?.code, v.errno, v.name);
    t.is(r.error?.field, v.field, v.name);
    checked++;
  }
  t.true(checked >= 20, `${checked} malformed bodies through the stream`);
});

test('stream: ending inside a message is EINVAL, naming how far it got', (t) => {
  const open = valid.find((v) => v.msg.type === 'OPEN')!;
  const dec = new IbnbdStreamDecoder();
  t.deepEqual(dec.push(open.bytes.subarray(0, 100)).messages, []);
  t.is(dec.bufferedBytes, 100);
  const e = dec.end();
  t.is(e?.code, 'EINVAL');
  t.regex(e?.message ?? '', /OPEN \(100 of 264 bytes\)/);
  const dec2 = new IbnbdStreamDecoder();
  dec2.push(Buffer.from([4]));
  t.regex(dec2.end()?.message ?? '', /header \(1 of 4 bytes\)/);
});
