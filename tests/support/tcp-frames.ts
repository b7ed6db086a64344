// The TCP transport's wire format in TypeScript (pure, no I/O): the handshake a connection opens
// with and the 24-byte header of every frame after it. The C++ twin is
// native/transport/tcp/frames.{h,cc}; tests/support/vectors/tcp-frames.json holds the bytes both must
// produce. Layouts and the sequence: docs/tcp-transport.md. All integers little-endian.

import { createHmac } from 'node:crypto';

export const MAGIC = 0x54434249; // "IBCT"
export const VERSION = 1;
export const HANDSHAKE_REQ_SIZE = 64; // + sessname bytes
export const HANDSHAKE_RSP_SIZE = 32;
export const FRAME_HEADER_SIZE = 24;
export const MAX_SESSNAME_LEN = 256;
export const MAX_CONNS_PER_PATH = 1025;
export const MAX_QUEUE_DEPTH = 65535;
export const MIN_MAX_IO_SIZE = 4096;
export const MAX_MAX_IO_SIZE = 16 * 1024 * 1024;
export const MAX_USR_LEN = 512;
// authentication (docs/tcp-transport.md, "Authentication")
export const FLAG_AUTH = 1;
export const AUTH_NONCE_LEN = 32;
export const AUTH_PROOF_LEN = 32;
export const AUTH_CHALLENGE_SIZE = 80;
export const AUTH_PROOF_SIZE = 48;
export const AUTH_KIND_CHALLENGE = 1;
export const AUTH_KIND_PROOF = 2;
const AUTH_LABELS = { server: 'ibnbd auth v1 server', client: 'ibnbd auth v1 client' } as const;

export const FRAME_KINDS = { READ_REQ: 1, WRITE_REQ: 2, RESPONSE: 3, HEARTBEAT: 4, HEARTBEAT_ACK: 5, FENCE: 6, FENCE_ACK: 7 } as const;
export type FrameKind = keyof typeof FRAME_KINDS;
const KIND_BY_VALUE = new Map<number, FrameKind>(Object.entries(FRAME_KINDS).map(([k, v]) => [v, k as FrameKind]));

export interface HandshakeReq {
  version: number;
  connIndex: number; // 0 = service connection
  connCount: number;
  queueDepth: number;
  maxIoSize: number;
  incarnation: number; // the path's connect attempt; a higher one retires older connections
  sessionUuid: Buffer; // 16 bytes
  pathUuid: Buffer; // 16 bytes, the same across the path's reconnects
  flags: number; // FLAG_AUTH: the client authenticates; clientNonce follows the name
  sessname: string;
  clientNonce?: Buffer; // 32 bytes, with FLAG_AUTH
}

export interface AuthChallenge {
  serverNonce: Buffer; // 32 bytes
  serverProof: Buffer; // 32 bytes
}

export interface AuthProof {
  clientProof: Buffer; // 32 bytes
}

export interface HandshakeRsp {
  version: number;
  errno: number; // 0 or a negative errno
  queueDepth: number;
  maxIoSize: number;
}

export interface FrameHeader {
  kind: FrameKind;
  usrLen: number;
  id: number;
  dataLen: number;
  errno: number;
  cookie: bigint;
}

export type Decoded<T> = { ok: true; value: T } | { ok: false; errno: 'EPROTO' | 'EPROTONOSUPPORT' | 'EINVAL'; field: string };

const bad = (errno: 'EPROTO' | 'EPROTONOSUPPORT' | 'EINVAL', field: string): { ok: false; errno: typeof errno; field: string } => ({ ok: false, errno, field });
const allZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

export function encodeHandshakeReq(r: HandshakeReq): Buffer {
  const name = Buffer.from(r.sessname, 'utf8');
  if (r.sessionUuid.length !== 16 || r.pathUuid.length !== 16) throw new RangeError('uuids are 16 bytes');
  const auth = (r.flags & FLAG_AUTH) !== 0;
  if (auth && r.clientNonce?.length !== AUTH_NONCE_LEN) throw new RangeError('the auth flag needs a 32-byte clientNonce');
  const b = Buffer.alloc(HANDSHAKE_REQ_SIZE + name.length + (auth ? AUTH_NONCE_LEN : 0));
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt16LE(r.version, 4);
  b.writeUInt16LE(r.connIndex, 6);
  b.writeUInt16LE(r.connCount, 8);
  b.writeUInt16LE(name.length, 10);
  b.writeUInt32LE(r.queueDepth, 12);
  b.writeUInt32LE(r.maxIoSize, 16);
  b.writeUInt32LE(r.incarnation, 20);
  r.sessionUuid.copy(b, 24);
  r.pathUuid.copy(b, 40);
  b.writeUInt32LE(r.flags, 56);
  name.copy(b, HANDSHAKE_REQ_SIZE);
  if (auth) r.clientNonce!.copy(b, HANDSHAKE_REQ_SIZE + name.length);
  return b;
}

/** The whole handshake (fixed part + name), with the checks the server applies. */
export function decodeHandshakeReq(b: Buffer): Decoded<HandshakeReq> {
  if (b.length < HANDSHAKE_REQ_SIZE) return bad('EINVAL', 'length');
  if (b.readUInt32LE(0) !== MAGIC) return bad('EPROTO', 'magic');
  const version = b.readUInt16LE(4);
  if (version !== VERSION) return bad('EPROTONOSUPPORT', 'version');
  const flags = b.readUInt32LE(56);
  if ((flags & ~FLAG_AUTH) !== 0 || !allZero(b.subarray(60, 64))) return bad('EPROTO', 'reserved');
  const auth = (flags & FLAG_AUTH) !== 0;
  const connIndex = b.readUInt16LE(6);
  const connCount = b.readUInt16LE(8);
  const nameLen = b.readUInt16LE(10);
  const queueDepth = b.readUInt32LE(12);
  const maxIoSize = b.readUInt32LE(16);
  const incarnation = b.readUInt32LE(20);
  const sessionUuid = Buffer.from(b.subarray(24, 40));
  const pathUuid = Buffer.from(b.subarray(40, 56));
  if (nameLen === 0 || nameLen > MAX_SESSNAME_LEN) return bad('EINVAL', 'sessname_len');
  if (connCount < 2 || connCount > MAX_CONNS_PER_PATH) return bad('EINVAL', 'conn_count');
  if (connIndex >= connCount) return bad('EINVAL', 'conn_index');
  if (queueDepth === 0 || queueDepth > MAX_QUEUE_DEPTH) return bad('EINVAL', 'queue_depth');
  if (maxIoSize < MIN_MAX_IO_SIZE || maxIoSize > MAX_MAX_IO_SIZE) return bad('EINVAL', 'max_io_size');
  if (allZero(sessionUuid) || allZero(pathUuid)) return bad('EINVAL', 'uuid');
  if (b.length !== HANDSHAKE_REQ_SIZE + nameLen + (auth ? AUTH_NONCE_LEN : 0)) return bad('EINVAL', 'length');
  const nameBytes = b.subarray(HANDSHAKE_REQ_SIZE, HANDSHAKE_REQ_SIZE + nameLen);
  if (nameBytes.some((c) => c < 0x20 || c === 0x7f || c === 0x2f)) return bad('EINVAL', 'sessname');
  const sessname = nameBytes.toString('latin1');
  if (sessname === '.' || sessname === '..') return bad('EINVAL', 'sessname');
  const value: HandshakeReq = { version, connIndex, connCount, queueDepth, maxIoSize, incarnation, sessionUuid, pathUuid, flags, sessname: nameBytes.toString('utf8') };
  if (auth) value.clientNonce = Buffer.from(b.subarray(HANDSHAKE_REQ_SIZE + nameLen));
  return { ok: true, value };
}

function authHeader(size: number, kind: number): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt16LE(VERSION, 4);
  b.writeUInt16LE(kind, 6);
  return b;
}

function checkAuthHeader(b: Buffer, size: number, kind: number): Decoded<null> {
  if (b.length !== size) return bad('EINVAL', 'length');
  if (b.readUInt32LE(0) !== MAGIC) return bad('EPROTO', 'magic');
  if (b.readUInt16LE(4) !== VERSION) return bad('EPROTONOSUPPORT', 'version');
  if (b.readUInt16LE(6) !== kind) return bad('EPROTO', 'kind');
  if (!allZero(b.subarray(8, 16))) return bad('EPROTO', 'reserved');
  return { ok: true, value: null };
}

export function encodeAuthChallenge(c: AuthChallenge): Buffer {
  const b = authHeader(AUTH_CHALLENGE_SIZE, AUTH_KIND_CHALLENGE);
  c.serverNonce.copy(b, 16);
  c.serverProof.copy(b, 48);
  return b;
}

export function decodeAuthChallenge(b: Buffer): Decoded<AuthChallenge> {
  const h = checkAuthHeader(b, AUTH_CHALLENGE_SIZE, AUTH_KIND_CHALLENGE);
  if (!h.ok) return h;
  return { ok: true, value: { serverNonce: Buffer.from(b.subarray(16, 48)), serverProof: Buffer.from(b.subarray(48, 80)) } };
}

export function encodeAuthProof(p: AuthProof): Buffer {
  const b = authHeader(AUTH_PROOF_SIZE, AUTH_KIND_PROOF);
  p.clientProof.copy(b, 16);
  return b;
}

export function decodeAuthProof(b: Buffer): Decoded<AuthProof> {
  const h = checkAuthHeader(b, AUTH_PROOF_SIZE, AUTH_KIND_PROOF);
  if (!h.ok) return h;
  return { ok: true, value: { clientProof: Buffer.from(b.subarray(16, 48)) } };
}

/** HMAC-SHA256(secret, label || clientNonce || serverNonce || transcript): the request as sent,
 *  without its nonce (native/transport/core/auth.h). */
export function computeProof(secret: Buffer, role: 'server' | 'client', clientNonce: Buffer, serverNonce: Buffer, transcript: Buffer): Buffer {
  return createHmac('sha256', secret).update(AUTH_LABELS[role]).update(clientNonce).update(serverNonce).update(transcript).digest();
}

export function encodeHandshakeRsp(r: HandshakeRsp): Buffer {
  const b = Buffer.alloc(HANDSHAKE_RSP_SIZE);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt16LE(r.version, 4);
  b.writeInt32LE(r.errno, 8);
  b.writeUInt32LE(r.queueDepth, 12);
  b.writeUInt32LE(r.maxIoSize, 16);
  return b;
}

export function decodeHandshakeRsp(b: Buffer): Decoded<HandshakeRsp> {
  if (b.length !== HANDSHAKE_RSP_SIZE) return bad('EINVAL', 'length');
  if (b.readUInt32LE(0) !== MAGIC) return bad('EPROTO', 'magic');
  const version = b.readUInt16LE(4);
  if (version !== VERSION) return bad('EPROTONOSUPPORT', 'version');
  if (!allZero(b.subarray(6, 8)) || !allZero(b.subarray(20, 32))) return bad('EPROTO', 'reserved');
  const errno = b.readInt32LE(8);
  if (errno > 0 || errno < -4095) return bad('EPROTO', 'errno');
  return { ok: true, value: { version, errno, queueDepth: b.readUInt32LE(12), maxIoSize: b.readUInt32LE(16) } };
}

export function encodeFrameHeader(h: FrameHeader): Buffer {
  const b = Buffer.alloc(FRAME_HEADER_SIZE);
  b.writeUInt8(FRAME_KINDS[h.kind], 0);
  b.writeUInt16LE(h.usrLen, 2);
  b.writeUInt32LE(h.id, 4);
  b.writeUInt32LE(h.dataLen, 8);
  b.writeInt32LE(h.errno, 12);
  b.writeBigUInt64LE(h.cookie, 16);
  return b;
}

/** Header checks that need no session state (kind, reserved byte, errno range). */
export function decodeFrameHeader(b: Buffer): Decoded<FrameHeader> {
  if (b.length !== FRAME_HEADER_SIZE) return bad('EINVAL', 'length');
  const kind = KIND_BY_VALUE.get(b[0]!);
  if (!kind) return bad('EPROTO', 'kind');
  if (b[1] !== 0) return bad('EPROTO', 'reserved');
  const errno = b.readInt32LE(12);
  if (errno > 0 || errno < -4095) return bad('EPROTO', 'errno');
  return { ok: true, value: { kind, usrLen: b.readUInt16LE(2), id: b.readUInt32LE(4), dataLen: b.readUInt32LE(8), errno, cookie: b.readBigUInt64LE(16) } };
}
