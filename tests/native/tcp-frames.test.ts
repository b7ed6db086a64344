// One description of the TCP framing per language, same bytes: the TS codec and the C++ codec
// (through its test binding) against tests/support/vectors/tcp-frames.json, then against each other on
// random and mutated buffers.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/backend/native.js';
import { loadTestAddon } from '../../harness/test-addon.js';
import * as F from '../support/tcp-frames.js';

interface Vec {
  name: string;
  value: Record<string, unknown>;
  hex: string;
}
const V = JSON.parse(readFileSync(join(projectRoot, 'tests/support/vectors/tcp-frames.json'), 'utf8')) as {
  handshakeReq: Vec[];
  handshakeRsp: Vec[];
  frameHeader: Vec[];
  authChallenge: Vec[];
  authProof: Vec[];
  authProofCompute: { name: string; role: 'server' | 'client'; secret: string; clientNonce: string; serverNonce: string; transcript: string; proof: string }[];
  invalid: { what: 'handshakeReq' | 'handshakeRsp' | 'frameHeader' | 'authChallenge' | 'authProof'; name: string; hex: string; errno: string }[];
};

type Codec = {
  encodeHandshakeReq(v: F.HandshakeReq): Buffer;
  decodeHandshakeReq(b: Buffer): F.Decoded<F.HandshakeReq>;
  encodeHandshakeRsp(v: F.HandshakeRsp): Buffer;
  decodeHandshakeRsp(b: Buffer): F.Decoded<F.HandshakeRsp>;
  encodeFrameHeader(v: F.FrameHeader): Buffer;
  decodeFrameHeader(b: Buffer): F.Decoded<F.FrameHeader>;
  encodeAuthChallenge(v: F.AuthChallenge): Buffer;
  decodeAuthChallenge(b: Buffer): F.Decoded<F.AuthChallenge>;
  encodeAuthProof(v: F.AuthProof): Buffer;
  decodeAuthProof(b: Buffer): F.Decoded<F.AuthProof>;
  computeProof(secret: Buffer, role: 'server' | 'client', clientNonce: Buffer, serverNonce: Buffer, transcript: Buffer): Buffer;
};
const cpp = loadTestAddon<{ tcpFrames: Codec }>().tcpFrames;
const codecs: [string, Codec][] = [['ts', F as unknown as Codec], ['c++', cpp]];

const reqValue = (v: Record<string, unknown>): F.HandshakeReq => {
  const r: F.HandshakeReq = { ...(v as unknown as F.HandshakeReq), sessionUuid: Buffer.from(v.sessionUuid as string, 'hex'), pathUuid: Buffer.from(v.pathUuid as string, 'hex') };
  if (typeof v.clientNonce === 'string') r.clientNonce = Buffer.from(v.clientNonce, 'hex');
  return r;
};
/** hex fields → Buffers */
const bufs = (v: Record<string, unknown>): any => Object.fromEntries(Object.entries(v).map(([k, x]) => [k, Buffer.from(x as string, 'hex')]));
const hdrValue = (v: Record<string, unknown>): F.FrameHeader => ({ ...(v as unknown as F.FrameHeader), cookie: BigInt(v.cookie as string) });

for (const [lang, c] of codecs) {
  test(`${lang}: handshake requests encode and decode to the golden bytes`, (t) => {
    for (const v of V.handshakeReq) {
      const value = reqValue(v.value);
      t.is(c.encodeHandshakeReq(value).toString('hex'), v.hex, v.name);
      const d = c.decodeHandshakeReq(Buffer.from(v.hex, 'hex'));
      t.true(d.ok, v.name);
      if (d.ok) t.deepEqual(d.value, value, v.name);
    }
  });
  test(`${lang}: handshake responses`, (t) => {
    for (const v of V.handshakeRsp) {
      t.is(c.encodeHandshakeRsp(v.value as unknown as F.HandshakeRsp).toString('hex'), v.hex, v.name);
      const d = c.decodeHandshakeRsp(Buffer.from(v.hex, 'hex'));
      t.deepEqual(d, { ok: true, value: v.value }, v.name);
    }
  });
  test(`${lang}: frame headers`, (t) => {
    for (const v of V.frameHeader) {
      const value = hdrValue(v.value);
      t.is(c.encodeFrameHeader(value).toString('hex'), v.hex, v.name);
      t.deepEqual(c.decodeFrameHeader(Buffer.from(v.hex, 'hex')), { ok: true, value }, v.name);
    }
  });
  test(`${lang}: the authentication challenge and proof, and the HMAC over them`, (t) => {
    for (const [vecs, enc, dec] of [
      [V.authChallenge, c.encodeAuthChallenge, c.decodeAuthChallenge],
      [V.authProof, c.encodeAuthProof, c.decodeAuthProof],
    ] as const) {
      for (const v of vecs) {
        const value = bufs(v.value);
        t.is((enc as (x: unknown) => Buffer)(value).toString('hex'), v.hex, v.name);
        t.deepEqual(dec(Buffer.from(v.hex, 'hex')), { ok: true, value }, v.name);
      }
    }
    for (const v of V.authProofCompute) {
      const got = c.computeProof(Buffer.from(v.secret, 'hex'), v.role, Buffer.from(v.clientNonce, 'hex'), Buffer.from(v.serverNonce, 'hex'), Buffer.from(v.transcript, 'hex'));
      t.is(got.toString('hex'), v.proof, v.name);
    }
  });
  test(`${lang}: invalid bytes are refused with the listed errno`, (t) => {
    for (const v of V.invalid) {
      const b = Buffer.from(v.hex, 'hex');
      const dec = { handshakeReq: c.decodeHandshakeReq, handshakeRsp: c.decodeHandshakeRsp, frameHeader: c.decodeFrameHeader, authChallenge: c.decodeAuthChallenge, authProof: c.decodeAuthProof }[v.what];
      const d = (dec as (b: Buffer) => F.Decoded<unknown>)(b);
      t.false(d.ok, v.name);
      if (!d.ok) t.is(d.errno as string, v.errno, v.name);
    }
  });
}

const verdict = (d: F.Decoded<unknown>): unknown => (d.ok ? d.value : d.errno);

test('the two codecs agree on 20k random and mutated buffers', (t) => {
  const seeds = [...V.handshakeReq, ...V.handshakeRsp, ...V.frameHeader, ...V.authChallenge, ...V.authProof].map((v) => Buffer.from(v.hex, 'hex'));
  let accepted = 0;
  for (let i = 0; i < 20_000; i++) {
    let b: Buffer;
    if (i % 2 === 0) {
      b = Buffer.from(seeds[i % seeds.length]!);
      const flips = 1 + (i % 3);
      for (let k = 0; k < flips; k++) b[Math.floor(Math.random() * b.length)] = Math.floor(Math.random() * 256);
    } else {
      b = randomBytes([24, 32, 48, 64, 65, 70, 80][i % 7]!);
      if (i % 3 === 0) b.writeUInt32LE(F.MAGIC, 0);
    }
    for (const fn of ['decodeHandshakeReq', 'decodeHandshakeRsp', 'decodeFrameHeader', 'decodeAuthChallenge', 'decodeAuthProof'] as const) {
      const a = verdict(F[fn](b));
      const n = verdict(cpp[fn](b));
      if (JSON.stringify(a, (_k, x) => (typeof x === 'bigint' ? x.toString() : x)) !== JSON.stringify(n, (_k, x) => (typeof x === 'bigint' ? x.toString() : x))) {
        t.fail(`${fn} disagrees on ${b.toString('hex')}: ts ${String(a)} c++ ${String(n)}`);
        return;
      }
      if (typeof a === 'object') accepted++;
    }
  }
  t.true(accepted > 100, `some mutated buffers decode (${accepted})`);
});
