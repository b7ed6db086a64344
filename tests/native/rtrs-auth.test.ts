// Session authentication over RDMA (native/transport/rdma/rtrs_wire.h, auth_proof.h): the C++
// proof held to vectors computed outside the project (Python's hmac, in
// tests/support/vectors/rtrs-auth.json), the layout of what the RTRS messages carry for it, and the
// properties the protocol rests on. The exchange itself runs between our daemons in the soft-RoCE
// guest (tests/rdma/rdma-daemons.test.ts, I).
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/backend/native.js';
import { loadTestAddon } from '../../harness/test-addon.js';

type Role = 'server' | 'client';
interface Vec { name: string; role: Role; secret: string; clientNonce: string; serverNonce: string; pathsUuid: string; sessUuid: string; sessname: string; proof: string }
const V = JSON.parse(readFileSync(join(projectRoot, 'tests/support/vectors/rtrs-auth.json'), 'utf8')) as {
  pathProof: Vec[];
  layout: { authTailSize: number; transcriptSize: number; serverProofSize: number; infoRspAuthFailed: number };
};
const auth = loadTestAddon<{
  rtrsAuth: {
    pathProof(secret: Buffer, role: Role, cn: Buffer, sn: Buffer, pathsUuid: Buffer, sessUuid: Buffer, sessname: string): Buffer;
    layout(): Record<string, number>;
  };
}>().rtrsAuth;

const hex = (s: string) => Buffer.from(s, 'hex');
const proofOf = (v: Vec, over: Partial<Vec> = {}) => {
  const x = { ...v, ...over };
  return auth.pathProof(hex(x.secret), x.role, hex(x.clientNonce), hex(x.serverNonce), hex(x.pathsUuid), hex(x.sessUuid), x.sessname).toString('hex');
};

test('pathProof matches every vector computed with Python hmac', (t) => {
  t.true(V.pathProof.length >= 3);
  for (const v of V.pathProof) t.is(proofOf(v), v.proof, v.name);
});

test('each input changes the proof: role, both nonces, session uuid, path uuid, name, secret', (t) => {
  const v = V.pathProof[0]!;
  const flip = (h: string) => (h.slice(0, -2) + (parseInt(h.slice(-2), 16) ^ 1).toString(16).padStart(2, '0'));
  const variants: Array<[string, Partial<Vec>]> = [
    ['role', { role: v.role === 'client' ? 'server' : 'client' }],
    ['client nonce', { clientNonce: flip(v.clientNonce) }],
    ['server nonce', { serverNonce: flip(v.serverNonce) }],
    ['session (paths) uuid', { pathsUuid: flip(v.pathsUuid) }],
    ['path (sess) uuid', { sessUuid: flip(v.sessUuid) }],
    ['name', { sessname: `${v.sessname}2` }],
    ['secret', { secret: flip(v.secret) }],
  ];
  for (const [what, over] of variants) t.not(proofOf(v, over), v.proof, `${what} is covered by the proof`);
});

test('layout: the bytes RTRS leaves reserved carry the exchange', (t) => {
  const l = auth.layout();
  t.is(l.connReqFlagsOffset, 44, "conn_req's flags byte (first_conn is bit 0)");
  t.is(l.authConnBit, 2, 'the client asks with bit 1');
  t.is(l.knowsRefusalBit, 4, 'and says it understands a refusal with bit 2');
  t.is(l.connRspFlagsOffset, 16);
  t.is(l.connRspReservedOffset, 20, "the server's nonce: conn_rsp.reserved[0..31] (36 bytes there)");
  t.is(l.flagAuth, 0x80000000);
  t.is(l.infoReqSize, 272);
  t.is(l.authTailSize, V.layout.authTailSize);
  t.is(l.transcriptSize, V.layout.transcriptSize);
  t.is(l.serverProofSize, V.layout.serverProofSize);
  t.is(l.infoRspAuthFailed, V.layout.infoRspAuthFailed);
});

test('bad arguments are EINVAL, never a crash', (t) => {
  const v = V.pathProof[0]!;
  t.throws(() => auth.pathProof(hex(v.secret), v.role, Buffer.alloc(31), hex(v.serverNonce), hex(v.pathsUuid), hex(v.sessUuid), 'x'), { message: /EINVAL|clientNonce/ });
  t.throws(() => auth.pathProof(hex(v.secret), v.role, hex(v.clientNonce), hex(v.serverNonce), hex(v.pathsUuid), hex(v.sessUuid), 'n'.repeat(255)), { message: /too long/ });
});
