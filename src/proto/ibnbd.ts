// The IBNBD block protocol codec (docs/protocol.md, "RNBD/IBNBD messages"): RNBD protocol v2 layouts
// with IBNBD's io_mode in OPEN byte 5. A pure codec, no I/O: encode() builds the bytes of one
// message, decode() checks and reads one message and never throws. The same layouts and the
// same checks, in the same order, are native/proto/ibnbd_proto.h; both are held to the golden
// bytes of tests/support/vectors/ibnbd.json.
import { IbnbdError, type ErrnoName } from '../errors.js';

// ---- constants ------------------------------------------------------------------------------

export const PROTO_VER_MAJOR = 2;
export const PROTO_VER_V1 = 1;
export const NAME_MAX = 255; // dev_name field, NUL included: names are 1..254 bytes
export const SECTOR_SIZE = 512;
export const DEFAULT_PORT = 1234;

export const HDR_SIZE = 4;
export const SESS_INFO_SIZE = 36;
export const OPEN_SIZE = 264;
export const OPEN_RSP_SIZE = 56;
export const CLOSE_SIZE = 8;
export const IO_SIZE = 32; // v2: prio plus 6 bytes of tail padding
export const IO_V1_SIZE = 24; // v1: no prio
export const MAX_MSG_SIZE = OPEN_SIZE;

export const MSG_TYPES = ['SESS_INFO', 'SESS_INFO_RSP', 'OPEN', 'OPEN_RSP', 'IO', 'CLOSE'] as const;
export type MsgTypeName = (typeof MSG_TYPES)[number];

export const IO_OPS = ['READ', 'WRITE', 'FLUSH', 'DISCARD', 'SECURE_ERASE', 'WRITE_ZEROES'] as const;
export type IoOp = (typeof IO_OPS)[number];
export const OP_MASK = 0xff;
export const F_SYNC = 1 << 8;
export const F_FUA = 1 << 9;
const F_KNOWN = F_SYNC | F_FUA;

export const ACCESS_MODES = ['ro', 'rw', 'migration'] as const;
export type AccessMode = (typeof ACCESS_MODES)[number];

/** IBNBD's OPEN byte 5: how the server opens the device (mainline RNBD sends 0). */
export const IO_MODES = ['fileio', 'blockio'] as const;
export type IoMode = (typeof IO_MODES)[number];

export const CACHE_FUA = 1 << 0;
export const CACHE_WRITEBACK = 1 << 1;

const U64_MAX = (1n << 64n) - 1n;

// ---- messages -------------------------------------------------------------------------------

export interface SessInfoMsg {
  type: 'SESS_INFO';
  /** Protocol major version the client speaks (2; 1 for out-of-tree IBNBD). */
  ver: number;
}

export interface SessInfoRspMsg {
  type: 'SESS_INFO_RSP';
  ver: number;
}

export interface OpenMsg {
  type: 'OPEN';
  accessMode: AccessMode;
  ioMode: IoMode;
  /** Path relative to the server's dev_search_path: 1..254 bytes of UTF-8, no NUL. */
  devName: string;
}

export interface OpenRspMsg {
  type: 'OPEN_RSP';
  deviceId: number;
  /** Capacity in 512-byte sectors. */
  nsectors: bigint;
  maxHwSectors: number;
  maxWriteZeroesSectors: number;
  maxDiscardSectors: number;
  /** Bytes. */
  discardGranularity: number;
  /** Bytes. */
  discardAlignment: number;
  physicalBlockSize: number;
  logicalBlockSize: number;
  maxSegments: number;
  /** Non-zero: secure erase supported. */
  secureDiscard: number;
  rotational: boolean;
  cachePolicy: { writeback: boolean; fua: boolean };
}

export interface IoMsg {
  type: 'IO';
  deviceId: number;
  /** Start, in 512-byte sectors. */
  sector: bigint;
  op: IoOp;
  sync: boolean;
  fua: boolean;
  /** Bytes covered by the request (for DISCARD/WRITE_ZEROES: the range; no data travels). */
  biSize: number;
  /** ioprio; 0 in the v1 (24-byte) form. */
  prio: number;
}

export interface CloseMsg {
  type: 'CLOSE';
  deviceId: number;
}

export type Message = SessInfoMsg | SessInfoRspMsg | OpenMsg | OpenRspMsg | IoMsg | CloseMsg;

// ---- errors ---------------------------------------------------------------------------------

/** A message that breaks the protocol: .code is the errno name, .field the wire field at fault. */
export class ProtocolError extends IbnbdError {
  readonly field: string;

  constructor(code: ErrnoName, field: string, message: string) {
    super(code, `${field}: ${message}`);
    this.name = 'ProtocolError';
    this.field = field;
  }
}

export type DecodeResult = { ok: true; msg: Message } | { ok: false; error: ProtocolError };

// ---- sizes ----------------------------------------------------------------------------------

/** The size of a message of this type (IO: for protocol version `version`, default 2). */
export function msgSize(type: MsgTypeName, version: number = PROTO_VER_MAJOR): number {
  switch (type) {
    case 'SESS_INFO':
    case 'SESS_INFO_RSP':
      return SESS_INFO_SIZE;
    case 'OPEN':
      return OPEN_SIZE;
    case 'OPEN_RSP':
      return OPEN_RSP_SIZE;
    case 'IO':
      return version >= 2 ? IO_SIZE : IO_V1_SIZE;
    case 'CLOSE':
      return CLOSE_SIZE;
  }
}

// ---- decode ---------------------------------------------------------------------------------

class Reject {
  constructor(readonly error: ProtocolError) {}
}
const reject = (code: ErrnoName, field: string, message: string) => new Reject(new ProtocolError(code, field, message));

function isBlockSize(v: number): boolean {
  return v >= 512 && (v & (v - 1)) === 0;
}

function allZero(b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (b[i] !== 0) return false;
  return true;
}

/**
 * Header only: at least 4 bytes, a known type, zero padding. A stream framing reads this first
 * to learn the size of the message.
 */
export function peekHeader(buf: Uint8Array): { ok: true; type: MsgTypeName } | { ok: false; error: ProtocolError } {
  const r = checkHeader(buf);
  return r instanceof Reject ? { ok: false, error: r.error } : { ok: true, type: r };
}

function checkHeader(buf: Uint8Array): MsgTypeName | Reject {
  if (!(buf instanceof Uint8Array)) return reject('EINVAL', 'length', 'not a byte buffer');
  if (buf.length < HDR_SIZE) return reject('EINVAL', 'length', `${buf.length} bytes, shorter than the 4-byte header`);
  const t = buf[0]! | (buf[1]! << 8);
  const type = MSG_TYPES[t];
  if (type === undefined) return reject('EPROTO', 'hdr.type', `unknown message type ${t}`);
  if (buf[2] !== 0 || buf[3] !== 0) return reject('EPROTO', 'hdr.padding', 'header padding is not zero');
  return type;
}

function checkLength(type: MsgTypeName, len: number): Reject | undefined {
  if (type === 'IO' && len === IO_V1_SIZE) return undefined;
  const size = msgSize(type);
  if (len < size) return reject('EINVAL', 'length', `${type} of ${len} bytes, expected ${size}${type === 'IO' ? ' (or 24)' : ''}`);
  if (len > size) return reject('EMSGSIZE', 'length', `${type} of ${len} bytes, expected ${size}`);
  return undefined;
}

/**
 * Decodes exactly one message occupying all of `buf` (the framing knows each message's length).
 * Never throws: any malformed input gives { ok: false, error } with the errno of docs/protocol.md.
 */
export function decode(buf: Uint8Array): DecodeResult {
  if (!(buf instanceof Uint8Array)) return { ok: false, error: new ProtocolError('EINVAL', 'length', 'not a byte buffer') };
  const type = checkHeader(buf);
  if (type instanceof Reject) return { ok: false, error: type.error };
  const bad = checkLength(type, buf.length);
  if (bad) return { ok: false, error: bad.error };
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const r = decodeBody(type, buf, view);
  return r instanceof Reject ? { ok: false, error: r.error } : { ok: true, msg: r };
}

function decodeBody(type: MsgTypeName, b: Uint8Array, v: DataView): Message | Reject {
  switch (type) {
    case 'SESS_INFO':
    case 'SESS_INFO_RSP': {
      const ver = b[4]!;
      if (ver === 0) return reject('EPROTO', 'ver', 'protocol version 0');
      if (!allZero(b, 5, SESS_INFO_SIZE)) return reject('EPROTO', 'reserved', 'reserved bytes are not zero');
      return { type, ver };
    }
    case 'OPEN': {
      const accessMode = ACCESS_MODES[b[4]!];
      if (accessMode === undefined) return reject('EINVAL', 'access_mode', `unknown access mode ${b[4]}`);
      const ioMode = IO_MODES[b[5]!];
      if (ioMode === undefined) return reject('EINVAL', 'io_mode', `unknown io mode ${b[5]}`);
      const field = b.subarray(6, 6 + NAME_MAX);
      const nul = field.indexOf(0);
      if (nul < 0) return reject('EINVAL', 'dev_name', 'not NUL-terminated within 255 bytes');
      if (nul === 0) return reject('EINVAL', 'dev_name', 'empty');
      const name = field.subarray(0, nul);
      if (!isUtf8(name)) return reject('EINVAL', 'dev_name', 'not valid UTF-8');
      if (!allZero(b, 261, OPEN_SIZE)) return reject('EPROTO', 'reserved', 'reserved bytes are not zero');
      return { type, accessMode, ioMode, devName: Buffer.from(name).toString('utf8') };
    }
    case 'OPEN_RSP': {
      const msg: OpenRspMsg = {
        type,
        deviceId: v.getUint32(4, true),
        nsectors: v.getBigUint64(8, true),
        maxHwSectors: v.getUint32(16, true),
        maxWriteZeroesSectors: v.getUint32(20, true),
        maxDiscardSectors: v.getUint32(24, true),
        discardGranularity: v.getUint32(28, true),
        discardAlignment: v.getUint32(32, true),
        physicalBlockSize: v.getUint16(36, true),
        logicalBlockSize: v.getUint16(38, true),
        maxSegments: v.getUint16(40, true),
        secureDiscard: v.getUint16(42, true),
        rotational: b[44] === 1,
        cachePolicy: { writeback: (b[45]! & CACHE_WRITEBACK) !== 0, fua: (b[45]! & CACHE_FUA) !== 0 },
      };
      const bad = checkOpenRsp(msg.physicalBlockSize, msg.logicalBlockSize, b[44]!, b[45]!);
      if (bad) return bad;
      if (!allZero(b, 46, OPEN_RSP_SIZE)) return reject('EPROTO', 'reserved', 'reserved bytes are not zero');
      return msg;
    }
    case 'IO': {
      const rw = v.getUint32(16, true);
      const bad = checkRw(rw);
      if (bad) return bad;
      return {
        type,
        deviceId: v.getUint32(4, true),
        sector: v.getBigUint64(8, true),
        op: IO_OPS[rw & OP_MASK]!,
        sync: (rw & F_SYNC) !== 0,
        fua: (rw & F_FUA) !== 0,
        biSize: v.getUint32(20, true),
        prio: b.length >= IO_SIZE ? v.getUint16(24, true) : 0, // bytes 26..31: padding, ignored
      };
    }
    case 'CLOSE':
      return { type, deviceId: v.getUint32(4, true) };
  }
}

function checkOpenRsp(physical: number, logical: number, rotational: number, cachePolicy: number): Reject | undefined {
  if (!isBlockSize(physical)) return reject('EINVAL', 'physical_block_size', `${physical} is not a power of two >= 512`);
  if (!isBlockSize(logical)) return reject('EINVAL', 'logical_block_size', `${logical} is not a power of two >= 512`);
  if (logical > physical) return reject('EINVAL', 'logical_block_size', `${logical} is above physical_block_size ${physical}`);
  if (rotational > 1) return reject('EINVAL', 'rotational', `${rotational} is not 0 or 1`);
  if ((cachePolicy & ~(CACHE_FUA | CACHE_WRITEBACK)) !== 0) return reject('EINVAL', 'cache_policy', `unknown bits in 0x${cachePolicy.toString(16)}`);
  return undefined;
}

function checkRw(rw: number): Reject | undefined {
  if ((rw & OP_MASK) >= IO_OPS.length) return reject('EOPNOTSUPP', 'rw.op', `unknown IO op ${rw & OP_MASK}`);
  if ((rw & ~OP_MASK & ~F_KNOWN) !== 0) return reject('EINVAL', 'rw.flags', `unknown IO flags 0x${((rw & ~OP_MASK & ~F_KNOWN) >>> 0).toString(16)}`);
  return undefined;
}

// Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF), the same rule as
// the C++ codec's IsUtf8; Buffer.from().toString() would silently replace bad bytes instead.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
function isUtf8(b: Uint8Array): boolean {
  try {
    utf8.decode(b);
    return true;
  } catch {
    return false;
  }
}

// ---- encode ---------------------------------------------------------------------------------

export interface EncodeOptions {
  /** Negotiated protocol version: 1 sends the 24-byte IO (without prio). Default 2. */
  version?: number;
}

function fail(code: ErrnoName, field: string, message: string): never {
  throw new ProtocolError(code, field, message);
}

function uint(value: unknown, bits: 8 | 16 | 32, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
    fail('EINVAL', field, `${String(value)} is not a u${bits}`);
  }
  return value;
}

function u64(value: unknown, field: string): bigint {
  if (typeof value !== 'bigint' || value < 0n || value > U64_MAX) fail('EINVAL', field, `${String(value)} is not a u64 bigint`);
  return value;
}

function bool(value: unknown, field: string): boolean {
  if (typeof value !== 'boolean') fail('EINVAL', field, `${String(value)} is not a boolean`);
  return value;
}

function oneOf<T extends string>(list: readonly T[], value: unknown, code: ErrnoName, field: string): number {
  const i = list.indexOf(value as T);
  if (i < 0) fail(code, field, `${String(value)} is not one of ${list.join(', ')}`);
  return i;
}

/**
 * The bytes of one message. Throws ProtocolError for a message decode() would reject (same errno),
 * or a field of the wrong type or range (EINVAL), or a dev_name above 254 bytes (ENAMETOOLONG).
 */
export function encode(msg: Message, options: EncodeOptions = {}): Buffer {
  const version = options.version ?? PROTO_VER_MAJOR;
  const type = (msg as { type?: unknown } | null)?.type;
  const t = oneOf(MSG_TYPES, type, 'EPROTO', 'hdr.type');
  const b = Buffer.alloc(msgSize(MSG_TYPES[t]!, version));
  b.writeUInt16LE(t, 0);
  switch (msg.type) {
    case 'SESS_INFO':
    case 'SESS_INFO_RSP': {
      const ver = uint(msg.ver, 8, 'ver');
      if (ver === 0) fail('EPROTO', 'ver', 'protocol version 0');
      b[4] = ver;
      break;
    }
    case 'OPEN': {
      b[4] = oneOf(ACCESS_MODES, msg.accessMode, 'EINVAL', 'access_mode');
      b[5] = oneOf(IO_MODES, msg.ioMode, 'EINVAL', 'io_mode');
      if (typeof msg.devName !== 'string') fail('EINVAL', 'dev_name', 'not a string');
      if (msg.devName.length === 0) fail('EINVAL', 'dev_name', 'empty');
      if (msg.devName.includes('\0')) fail('EINVAL', 'dev_name', 'contains NUL');
      const name = Buffer.from(msg.devName, 'utf8');
      // a lone surrogate has no UTF-8 form: Buffer would silently write U+FFFD instead
      if (name.toString('utf8') !== msg.devName) fail('EINVAL', 'dev_name', 'not representable in UTF-8 (lone surrogate)');
      const n = name.length;
      if (n >= NAME_MAX) fail('ENAMETOOLONG', 'dev_name', `${n} bytes, at most ${NAME_MAX - 1}`);
      name.copy(b, 6);
      break;
    }
    case 'OPEN_RSP': {
      b.writeUInt32LE(uint(msg.deviceId, 32, 'device_id'), 4);
      b.writeBigUInt64LE(u64(msg.nsectors, 'nsectors'), 8);
      b.writeUInt32LE(uint(msg.maxHwSectors, 32, 'max_hw_sectors'), 16);
      b.writeUInt32LE(uint(msg.maxWriteZeroesSectors, 32, 'max_write_zeroes_sectors'), 20);
      b.writeUInt32LE(uint(msg.maxDiscardSectors, 32, 'max_discard_sectors'), 24);
      b.writeUInt32LE(uint(msg.discardGranularity, 32, 'discard_granularity'), 28);
      b.writeUInt32LE(uint(msg.discardAlignment, 32, 'discard_alignment'), 32);
      b.writeUInt16LE(uint(msg.physicalBlockSize, 16, 'physical_block_size'), 36);
      b.writeUInt16LE(uint(msg.logicalBlockSize, 16, 'logical_block_size'), 38);
      b.writeUInt16LE(uint(msg.maxSegments, 16, 'max_segments'), 40);
      b.writeUInt16LE(uint(msg.secureDiscard, 16, 'secure_discard'), 42);
      b[44] = bool(msg.rotational, 'rotational') ? 1 : 0;
      const cp = msg.cachePolicy;
      if (typeof cp !== 'object' || cp === null) fail('EINVAL', 'cache_policy', 'not an object');
      b[45] = (bool(cp.fua, 'cache_policy') ? CACHE_FUA : 0) | (bool(cp.writeback, 'cache_policy') ? CACHE_WRITEBACK : 0);
      const bad = checkOpenRsp(msg.physicalBlockSize, msg.logicalBlockSize, b[44], b[45]);
      if (bad) throw bad.error;
      break;
    }
    case 'IO': {
      b.writeUInt32LE(uint(msg.deviceId, 32, 'device_id'), 4);
      b.writeBigUInt64LE(u64(msg.sector, 'sector'), 8);
      const op = oneOf(IO_OPS, msg.op, 'EOPNOTSUPP', 'rw.op');
      const rw = op | (bool(msg.sync, 'rw.flags') ? F_SYNC : 0) | (bool(msg.fua, 'rw.flags') ? F_FUA : 0);
      b.writeUInt32LE(rw, 16);
      b.writeUInt32LE(uint(msg.biSize, 32, 'bi_size'), 20);
      const prio = uint(msg.prio, 16, 'prio');
      if (b.length >= IO_SIZE) b.writeUInt16LE(prio, 24);
      else if (prio !== 0) fail('EINVAL', 'prio', 'protocol version 1 has no prio');
      break;
    }
    case 'CLOSE':
      b.writeUInt32LE(uint(msg.deviceId, 32, 'device_id'), 4);
      break;
  }
  return b;
}
