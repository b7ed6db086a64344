// The C++ IBNBD codec (native/proto/ibnbd_proto.h, through the addon) against the same golden
// vectors as the TS codec, and against the TS codec itself on mutated and random buffers: the
// two must accept the same bytes with the same fields and reject the rest with the same errno.
import test from 'ava';
import { isDeepStrictEqual } from 'node:util';
import { IbnbdError } from '../../src/errors.js';
import {
  CLOSE_SIZE, HDR_SIZE, IO_SIZE, IO_V1_SIZE, NAME_MAX, OPEN_RSP_SIZE, OPEN_SIZE, PROTO_VER_MAJOR, SESS_INFO_SIZE,
  MSG_TYPES, decode, encode, msgSize, peekHeader, type DecodeResult,
} from '../../src/proto/ibnbd.js';
import { nativeDecode, nativeDecodeAs, nativeEncode, nativeFrameSize, nativePeek, nativeProtoSizes } from '../support/proto-native.js';
import { accepted, malformed, prng, unencodable, valid } from '../support/vectors/ibnbd-vectors.js';

const show = (x: unknown) => JSON.stringify(x, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v));

test('the C++ constants are the TS constants', (t) => {
  t.deepEqual(nativeProtoSizes(), {
    hdr: HDR_SIZE, sessInfo: SESS_INFO_SIZE, open: OPEN_SIZE, openRsp: OPEN_RSP_SIZE, close: CLOSE_SIZE,
    io: IO_SIZE, ioV1: IO_V1_SIZE, nameMax: NAME_MAX, protoVerMajor: PROTO_VER_MAJOR,
  });
});

for (const v of valid) {
  test(`valid: ${v.name}: C++ decodes to its fields and encodes to its bytes`, (t) => {
    const r = nativeDecode(v.bytes);
    if (!r.ok) return t.fail(`rejected: ${r.error.code} ${r.error.field}`);
    t.deepEqual(r.msg, v.msg);
    t.is(nativeEncode(v.msg, { version: v.version }).toString('hex'), v.bytes.toString('hex'));
  });
}

for (const v of accepted) {
  test(`accepted: ${v.name} (C++)`, (t) => {
    const r = nativeDecode(v.bytes);
    if (!r.ok) return t.fail(`rejected: ${r.error.code} ${r.error.field}`);
    t.deepEqual(r.msg, v.msg);
    t.is(nativeEncode(v.msg).toString('hex'), v.canonical.toString('hex'));
  });
}

for (const v of malformed) {
  test(`malformed: ${v.name} → ${v.errno} (${v.field}) in C++`, (t) => {
    const r = nativeDecode(v.bytes);
    if (r.ok) return t.fail(`accepted as ${show(r.msg)}`);
    t.is(r.error.code, v.errno);
    t.is(r.error.field, v.field);
  });
}

for (const v of unencodable) {
  test(`unencodable: ${v.name} → ${v.errno} in C++`, (t) => {
    const e = t.throws(() => nativeEncode(v.msg, { version: v.version }), { instanceOf: IbnbdError });
    t.is(e?.code, v.errno);
  });
}

test('the typed C++ decoders (DecodeIo, ...) decode their own type and refuse the others with EPROTO', (t) => {
  for (const v of valid) {
    for (const type of MSG_TYPES) {
      const r = nativeDecodeAs(v.bytes, type);
      if (type === v.msg.type) t.deepEqual(r, { ok: true, msg: v.msg }, `${v.name} as ${type}`);
      else t.deepEqual(r.ok ? 'accepted' : [r.error.code, r.error.field], ['EPROTO', 'hdr.type'], `${v.name} as ${type}`);
    }
  }
  // a malformed buffer of the right type fails the typed decoder exactly as it fails Decode
  for (const v of malformed) {
    const hdr = peekHeader(v.bytes);
    if (!hdr.ok) continue;
    const r = nativeDecodeAs(v.bytes, hdr.type);
    t.deepEqual(r.ok ? 'accepted' : [r.error.code, r.error.field], [v.errno, v.field], v.name);
  }
});

test('C++ FrameSize learns each message size from its header, as the TS stream decoder does', (t) => {
  for (const v of valid) {
    const r = nativeFrameSize(v.bytes.subarray(0, 4), v.version);
    t.deepEqual(r, { ok: true, size: v.bytes.length }, v.name);
    t.is(msgSize(v.msg.type, v.version), v.bytes.length);
  }
  t.deepEqual(nativeFrameSize(Buffer.from([4, 0, 0, 0]), 1), { ok: true, size: 24 });
  const bad = nativeFrameSize(Buffer.from([4, 0, 1, 0]), 2);
  t.deepEqual(bad.ok ? 'accepted' : [bad.error.code, bad.error.field], ['EPROTO', 'hdr.padding']);
  const short = nativeFrameSize(Buffer.from([4, 0, 0]), 2);
  t.deepEqual(short.ok ? 'accepted' : [short.error.code, short.error.field], ['EINVAL', 'length']);
});

test('C++ decodes from a view into a larger buffer at an odd offset', (t) => {
  for (const v of valid) {
    const big = Buffer.alloc(v.bytes.length + 7, 0xee);
    v.bytes.copy(big, 3);
    t.deepEqual(nativeDecode(new Uint8Array(big.buffer, big.byteOffset + 3, v.bytes.length)), { ok: true, msg: v.msg }, v.name);
  }
});

// Agreement check cheap enough for hundreds of thousands of buffers: assert only on a difference.
function same(t: import('ava').ExecutionContext, a: DecodeResult, b: DecodeResult, what: string): boolean {
  if (a.ok && b.ok && isDeepStrictEqual(a.msg, b.msg)) return true;
  if (!a.ok && !b.ok && a.error.code === b.error.code && a.error.field === b.error.field) return true;
  if (a.ok !== b.ok) {
    t.fail(`${what}: TS ${show(a.ok ? a.msg : a.error.code)} vs C++ ${show(b.ok ? b.msg : b.error.code)}`);
    return false;
  }
  if (a.ok && b.ok) return t.deepEqual(b.msg, a.msg, what);
  if (!a.ok && !b.ok) return t.deepEqual([b.error.code, b.error.field], [a.error.code, a.error.field], what);
  return false;
}

test('TS and C++ agree on every byte of every vector XOR-ed with 6 masks, and re-encode alike', (t) => {
  let acceptedCount = 0;
  let rejectedCount = 0;
  const bases = [...valid.map((v) => v.bytes), ...accepted.map((v) => v.bytes)];
  for (const base of bases) {
    for (let at = 0; at < base.length; at++) {
      for (const mask of [0x01, 0x02, 0x80, 0x7f, 0xff, 0x40]) {
        const b = Buffer.from(base);
        b[at] ^= mask;
        const ts = decode(b);
        const cc = nativeDecode(b);
        if (!same(t, ts, cc, `byte ${at} ^ ${mask} of ${base.toString('hex').slice(0, 16)}…`)) return;
        if (ts.ok) {
          acceptedCount++;
          const version = b.length === IO_V1_SIZE ? 1 : 2;
          t.is(nativeEncode(ts.msg, { version }).toString('hex'), encode(ts.msg, { version }).toString('hex'));
        } else rejectedCount++;
      }
    }
  }
  t.log(`${acceptedCount} mutations accepted by both, ${rejectedCount} rejected by both with the same errno and field`);
  t.true(acceptedCount > 1000 && rejectedCount > 1000);
});

test('TS and C++ agree on random buffers of every length up to 300 bytes', (t) => {
  const rand = prng(42);
  for (let i = 0; i < 20000; i++) {
    const len = i < 301 ? i : Math.floor(rand() * 301);
    const b = Buffer.alloc(len);
    for (let k = 0; k < len; k++) b[k] = rand() < 0.6 ? 0 : Math.floor(rand() * 256);
    if (len >= 4 && rand() < 0.8) { b[0] = Math.floor(rand() * 7); b[1] = 0; b[2] = 0; b[3] = 0; }
    if (!same(t, decode(b), nativeDecode(b), `random ${b.toString('hex')}`)) return;
    const p1 = peekHeader(b);
    const p2 = nativePeek(b);
    if (p1.ok !== p2.ok || (p1.ok && p2.ok && p1.type !== p2.type) || (!p1.ok && !p2.ok && p1.error.code !== p2.error.code)) {
      return t.fail(`peek of ${b.subarray(0, 4).toString('hex')}`);
    }
  }
  t.pass();
});

test('TS and C++ agree on OPEN dev_names of up to four bytes drawn from UTF-8 edge bytes', (t) => {
  // lead/continuation bytes at the edges of the UTF-8 rules: overlongs, surrogates, > U+10FFFF
  const edge = [0x00, 0x2f, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff];
  const base = valid.find((v) => v.msg.type === 'OPEN')!.bytes;
  let n = 0;
  const rec = (prefix: number[]) => {
    if (prefix.length > 0) {
      const b = Buffer.from(base);
      b.fill(0, 6, 261);
      b.set(prefix, 6);
      if (!same(t, decode(b), nativeDecode(b), `dev_name ${Buffer.from(prefix).toString('hex')}`)) throw new Error('disagree');
      n++;
    }
    // four bytes only matter after a 4-byte lead (0xf0..0xf4, and the invalid ones around them)
    const longest = prefix.length > 0 && prefix[0]! >= 0xf0 ? 4 : 3;
    if (prefix.length < longest) for (const x of edge) rec([...prefix, x]);
  };
  rec([]);
  t.log(`${n} names`);
  t.true(n > 100000);
});
