#!/usr/bin/env node
// Writes tests/support/vectors/ibnbd.json, the golden bytes both IBNBD codecs (src/proto/ibnbd.ts and
// native/proto/ibnbd_proto.h) are tested against. The bytes are laid out here by hand from the
// offset tables of docs/protocol.md, "RNBD/IBNBD messages" (and nothing of either codec is
// imported), so a codec that drifts from the layout fails against them. Run it only to add
// vectors, then review the diff:
//   node tests/support/vectors/make-ibnbd.mjs
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// ---- byte layout (offsets from docs/protocol.md, "RNBD/IBNBD messages") ----------------------
const T = { SESS_INFO: 0, SESS_INFO_RSP: 1, OPEN: 2, OPEN_RSP: 3, IO: 4, CLOSE: 5 };
const OP = { READ: 0, WRITE: 1, FLUSH: 2, DISCARD: 3, SECURE_ERASE: 4, WRITE_ZEROES: 5 };
const SYNC = 0x100, FUA = 0x200;

function bytes(size, type) {
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  if (size >= 2) v.setUint16(0, type, true);
  return { b, v };
}
function sessInfo(type, ver) {
  const { b } = bytes(36, type);
  b[4] = ver;
  return b;
}
function open(access, ioMode, name /* Uint8Array or string */) {
  const { b } = bytes(264, T.OPEN);
  b[4] = access;
  b[5] = ioMode;
  b.set(typeof name === 'string' ? new TextEncoder().encode(name) : name, 6);
  return b;
}
function openRsp(f) {
  const { b, v } = bytes(56, T.OPEN_RSP);
  v.setUint32(4, f.deviceId, true);
  v.setBigUint64(8, BigInt(f.nsectors), true);
  v.setUint32(16, f.maxHwSectors, true);
  v.setUint32(20, f.maxWriteZeroesSectors, true);
  v.setUint32(24, f.maxDiscardSectors, true);
  v.setUint32(28, f.discardGranularity, true);
  v.setUint32(32, f.discardAlignment, true);
  v.setUint16(36, f.physicalBlockSize, true);
  v.setUint16(38, f.logicalBlockSize, true);
  v.setUint16(40, f.maxSegments, true);
  v.setUint16(42, f.secureDiscard, true);
  b[44] = f.rotational ? 1 : 0;
  b[45] = (f.cachePolicy.fua ? 1 : 0) | (f.cachePolicy.writeback ? 2 : 0);
  return b;
}
function io(f, size = 32) {
  const { b, v } = bytes(32, T.IO);
  v.setUint32(4, f.deviceId, true);
  v.setBigUint64(8, BigInt(f.sector), true);
  v.setUint32(16, OP[f.op] | (f.sync ? SYNC : 0) | (f.fua ? FUA : 0), true);
  v.setUint32(20, f.biSize, true);
  v.setUint16(24, f.prio, true);
  return b.slice(0, size);
}
function close(deviceId) {
  const { b, v } = bytes(8, T.CLOSE);
  v.setUint32(4, deviceId, true);
  return b;
}

// Field-grouped hex (spaces are ignored by the readers) so a vector can be checked by eye.
function hex(b, cuts = []) {
  const parts = [];
  let at = 0;
  for (const cut of [...cuts, b.length]) {
    const end = Math.min(cut, b.length);
    if (end > at) parts.push(Buffer.from(b.subarray(at, end)).toString('hex'));
    at = Math.max(at, end);
  }
  return parts.join(' ');
}
const CUTS = {
  [T.SESS_INFO]: [2, 4, 5], [T.SESS_INFO_RSP]: [2, 4, 5], [T.OPEN]: [2, 4, 5, 6, 261],
  [T.OPEN_RSP]: [2, 4, 8, 16, 20, 24, 28, 32, 36, 38, 40, 42, 44, 45, 46],
  [T.IO]: [2, 4, 8, 16, 20, 24, 26], [T.CLOSE]: [2, 4],
};
const hexOf = (b) => hex(b, CUTS[b.length >= 2 ? b[0] | (b[1] << 8) : -1] ?? []);
function patch(b, at, ...vals) {
  const c = new Uint8Array(b);
  c.set(vals, at);
  return c;
}
function resize(b, n) {
  const c = new Uint8Array(n);
  c.set(b.subarray(0, Math.min(n, b.length)));
  return c;
}

// ---- valid vectors: decode(hex) == msg and encode(msg) == hex ------------------------------
const valid = [];
const add = (name, msg, b, extra = {}) => valid.push({ name, msg, hex: hexOf(b), ...extra });

add('SESS_INFO v2', { type: 'SESS_INFO', ver: 2 }, sessInfo(T.SESS_INFO, 2));
add('SESS_INFO from a v1 IBNBD client', { type: 'SESS_INFO', ver: 1 }, sessInfo(T.SESS_INFO, 1));
add('SESS_INFO_RSP v2', { type: 'SESS_INFO_RSP', ver: 2 }, sessInfo(T.SESS_INFO_RSP, 2));
add('SESS_INFO_RSP from a future version', { type: 'SESS_INFO_RSP', ver: 255 }, sessInfo(T.SESS_INFO_RSP, 255));

add('OPEN rw blockio', { type: 'OPEN', accessMode: 'rw', ioMode: 'blockio', devName: 'vol/disk1' },
  open(1, 1, 'vol/disk1'));
add('OPEN ro fileio', { type: 'OPEN', accessMode: 'ro', ioMode: 'fileio', devName: 'images/base.img' },
  open(0, 0, 'images/base.img'));
add('OPEN migration, UTF-8 name', { type: 'OPEN', accessMode: 'migration', ioMode: 'blockio', devName: 'données/vm-é€😀' },
  open(2, 1, 'données/vm-é€😀'));
const longName = 'n'.repeat(250) + '/end';
add('OPEN with a 254-byte name (the longest)', { type: 'OPEN', accessMode: 'rw', ioMode: 'fileio', devName: longName },
  open(1, 0, longName));

const rspFull = {
  type: 'OPEN_RSP', deviceId: 3, nsectors: '2097152', maxHwSectors: 256, maxWriteZeroesSectors: 65535,
  maxDiscardSectors: 4194303, discardGranularity: 4096, discardAlignment: 512, physicalBlockSize: 4096,
  logicalBlockSize: 512, maxSegments: 128, secureDiscard: 1, rotational: false,
  cachePolicy: { fua: true, writeback: true },
};
add('OPEN_RSP all geometry fields, writeback + FUA', rspFull, openRsp(rspFull));
const rspPlain = {
  type: 'OPEN_RSP', deviceId: 0, nsectors: '0', maxHwSectors: 0, maxWriteZeroesSectors: 0,
  maxDiscardSectors: 0, discardGranularity: 0, discardAlignment: 0, physicalBlockSize: 4096,
  logicalBlockSize: 4096, maxSegments: 0, secureDiscard: 0, rotational: true,
  cachePolicy: { fua: false, writeback: false },
};
add('OPEN_RSP rotational, no discard, write-through', rspPlain, openRsp(rspPlain));
const rspHuge = {
  ...rspFull, deviceId: 0xffffffff, nsectors: '18446744073709551615', maxHwSectors: 0xffffffff,
  discardGranularity: 0xffffffff, maxSegments: 0xffff, secureDiscard: 0xffff, physicalBlockSize: 32768,
  logicalBlockSize: 32768, cachePolicy: { fua: false, writeback: true },
};
add('OPEN_RSP extreme values (u64 nsectors above 2^53)', rspHuge, openRsp(rspHuge));

const ioBase = { type: 'IO', deviceId: 7, sector: '2048', op: 'READ', sync: false, fua: false, biSize: 4096, prio: 0 };
const addIo = (name, f) => add(name, { ...ioBase, ...f }, io({ ...ioBase, ...f }));
addIo('IO READ', {});
addIo('IO READ SYNC with prio', { sync: true, prio: 0x4004 });
addIo('IO WRITE', { op: 'WRITE', biSize: 131072 });
addIo('IO WRITE SYNC FUA', { op: 'WRITE', sync: true, fua: true, biSize: 512 });
addIo('IO FLUSH (FUA as the kernel client sends it)', { op: 'FLUSH', sector: '0', fua: true, sync: true, biSize: 0 });
addIo('IO DISCARD', { op: 'DISCARD', sector: '1000000', biSize: 1 << 20 });
addIo('IO SECURE_ERASE', { op: 'SECURE_ERASE', biSize: 65536 });
addIo('IO WRITE_ZEROES', { op: 'WRITE_ZEROES', sector: '8', biSize: 0x80000000 });
addIo('IO extreme device_id, sector and prio', { deviceId: 0xffffffff, sector: '18446744073709551615', biSize: 0xffffffff, prio: 0xffff });
add('IO v1 (24 bytes, no prio) from an IBNBD v1 client', { ...ioBase, op: 'WRITE', sync: true },
  io({ ...ioBase, op: 'WRITE', sync: true }, 24), { version: 1 });

add('CLOSE', { type: 'CLOSE', deviceId: 3 }, close(3));
add('CLOSE device 0xffffffff', { type: 'CLOSE', deviceId: 0xffffffff }, close(0xffffffff));

// ---- accepted but not canonical: decode(hex) == msg, encode(msg) == canonical --------------
const accepted = [];
{
  const base = io({ ...ioBase, op: 'WRITE' });
  const garbage = patch(base, 26, 0xde, 0xad, 0xbe, 0xef, 0x55, 0xaa);
  accepted.push({ name: 'IO tail padding is garbage (kernel clients do not zero it)',
    msg: { ...ioBase, op: 'WRITE' }, hex: hexOf(garbage), canonical: hexOf(base) });
  const name = open(1, 1, 'vol/a');
  const junk = patch(name, 6 + 6, 0x78, 0x79, 0x7a, 0xff);  // after 'vol/a' NUL: ignored bytes
  accepted.push({ name: 'OPEN dev_name bytes after the NUL are ignored',
    msg: { type: 'OPEN', accessMode: 'rw', ioMode: 'blockio', devName: 'vol/a' }, hex: hexOf(junk), canonical: hexOf(name) });
}

// ---- malformed: decode(hex) fails with errno (and names field) -----------------------------
const malformed = [];
const bad = (name, b, errno, field) => malformed.push({ name, hex: hexOf(b), errno, field });
const si = sessInfo(T.SESS_INFO, 2);
const op = open(1, 1, 'vol/disk1');
const rsp = openRsp(rspFull);
const iw = io({ ...ioBase, op: 'WRITE' });
const cl = close(3);

bad('empty buffer', new Uint8Array(0), 'EINVAL', 'length');
bad('3 bytes: no whole header', new Uint8Array([4, 0, 0]), 'EINVAL', 'length');
bad('unknown type 6', patch(cl, 0, 6, 0), 'EPROTO', 'hdr.type');
bad('unknown type 0xffff', patch(si, 0, 0xff, 0xff), 'EPROTO', 'hdr.type');
bad('type 0x0104 (type in the high byte)', patch(iw, 0, 4, 1), 'EPROTO', 'hdr.type');
bad('unknown type wins over non-zero padding', patch(cl, 0, 9, 0, 1, 0), 'EPROTO', 'hdr.type');
bad('header padding non-zero (SESS_INFO)', patch(si, 2, 1, 0), 'EPROTO', 'hdr.padding');
bad('header padding non-zero (IO)', patch(iw, 3, 0x80), 'EPROTO', 'hdr.padding');
bad('header only, type SESS_INFO', resize(si, 4), 'EINVAL', 'length');
bad('SESS_INFO 35 bytes', resize(si, 35), 'EINVAL', 'length');
bad('SESS_INFO 37 bytes', resize(si, 37), 'EMSGSIZE', 'length');
bad('SESS_INFO ver 0', sessInfo(T.SESS_INFO, 0), 'EPROTO', 'ver');
bad('SESS_INFO reserved last byte', patch(si, 35, 1), 'EPROTO', 'reserved');
bad('SESS_INFO_RSP reserved first byte', patch(sessInfo(T.SESS_INFO_RSP, 2), 5, 0x20), 'EPROTO', 'reserved');
bad('OPEN 263 bytes', resize(op, 263), 'EINVAL', 'length');
bad('OPEN 265 bytes', resize(op, 265), 'EMSGSIZE', 'length');
bad('OPEN short wins over bad access_mode', resize(patch(op, 4, 9), 100), 'EINVAL', 'length');
bad('OPEN access_mode 3', patch(op, 4, 3), 'EINVAL', 'access_mode');
bad('OPEN io_mode 2 (IBNBD autoio, unsupported)', patch(op, 5, 2), 'EINVAL', 'io_mode');
bad('OPEN io_mode 0xff', patch(op, 5, 0xff), 'EINVAL', 'io_mode');
bad('OPEN dev_name without NUL', open(1, 1, 'a'.repeat(255)), 'EINVAL', 'dev_name');
bad('OPEN dev_name empty', open(1, 1, ''), 'EINVAL', 'dev_name');
bad('OPEN dev_name invalid UTF-8 byte 0xff', open(1, 1, new Uint8Array([0x76, 0xff, 0x31])), 'EINVAL', 'dev_name');
bad('OPEN dev_name overlong UTF-8 "/"', open(1, 1, new Uint8Array([0x61, 0xc0, 0xaf, 0x62])), 'EINVAL', 'dev_name');
bad('OPEN dev_name UTF-8 surrogate', open(1, 1, new Uint8Array([0x61, 0xed, 0xa0, 0x80])), 'EINVAL', 'dev_name');
bad('OPEN dev_name truncated UTF-8 sequence', open(1, 1, new Uint8Array([0x61, 0xe2, 0x82])), 'EINVAL', 'dev_name');
bad('OPEN dev_name code point above U+10FFFF', open(1, 1, new Uint8Array([0xf4, 0x90, 0x80, 0x80])), 'EINVAL', 'dev_name');
bad('OPEN reserved non-zero', patch(op, 262, 1), 'EPROTO', 'reserved');
bad('OPEN_RSP 55 bytes', resize(rsp, 55), 'EINVAL', 'length');
bad('OPEN_RSP 57 bytes', resize(rsp, 57), 'EMSGSIZE', 'length');
bad('OPEN_RSP physical_block_size 0', patch(rsp, 36, 0, 0), 'EINVAL', 'physical_block_size');
bad('OPEN_RSP physical_block_size 256', patch(rsp, 36, 0, 1), 'EINVAL', 'physical_block_size');
bad('OPEN_RSP logical_block_size 0', patch(rsp, 38, 0, 0), 'EINVAL', 'logical_block_size');
bad('OPEN_RSP logical_block_size 1000 (not a power of two)', patch(rsp, 38, 0xe8, 0x03), 'EINVAL', 'logical_block_size');
bad('OPEN_RSP logical_block_size above physical', patch(rsp, 38, 0, 0x20), 'EINVAL', 'logical_block_size');
bad('OPEN_RSP logical 0 wins over reserved', patch(patch(rsp, 38, 0, 0), 50, 1), 'EINVAL', 'logical_block_size');
bad('OPEN_RSP rotational 2', patch(rsp, 44, 2), 'EINVAL', 'rotational');
bad('OPEN_RSP cache_policy bit 2', patch(rsp, 45, 4), 'EINVAL', 'cache_policy');
bad('OPEN_RSP reserved last byte', patch(rsp, 55, 1), 'EPROTO', 'reserved');
bad('IO 23 bytes', resize(iw, 23), 'EINVAL', 'length');
bad('IO 25 bytes (neither v1 nor v2)', resize(iw, 25), 'EINVAL', 'length');
bad('IO 31 bytes', resize(iw, 31), 'EINVAL', 'length');
bad('IO 33 bytes', resize(iw, 33), 'EMSGSIZE', 'length');
bad('IO op 6', patch(iw, 16, 6), 'EOPNOTSUPP', 'rw.op');
bad('IO op 0xff', patch(iw, 16, 0xff), 'EOPNOTSUPP', 'rw.op');
bad('IO v1 form with op 9', patch(resize(iw, 24), 16, 9), 'EOPNOTSUPP', 'rw.op');
bad('IO unknown op wins over unknown flag', patch(iw, 16, 7, 0x04), 'EOPNOTSUPP', 'rw.op');
bad('IO flag PREFLUSH (1<<10, not negotiated)', patch(iw, 17, 0x04), 'EINVAL', 'rw.flags');
bad('IO flag NOUNMAP (1<<11, not negotiated)', patch(iw, 17, 0x08), 'EINVAL', 'rw.flags');
bad('IO flag bit 31', patch(iw, 19, 0x80), 'EINVAL', 'rw.flags');
bad('CLOSE 7 bytes', resize(cl, 7), 'EINVAL', 'length');
bad('CLOSE 9 bytes', resize(cl, 9), 'EMSGSIZE', 'length');
bad('CLOSE header only', resize(cl, 4), 'EINVAL', 'length');

// ---- messages no encoder may produce: encode(msg) fails with errno --------------------------
const unencodable = [
  { name: 'SESS_INFO ver 0', msg: { type: 'SESS_INFO', ver: 0 }, errno: 'EPROTO' },
  { name: 'OPEN dev_name of 255 bytes (no room for the NUL)', msg: { type: 'OPEN', accessMode: 'rw', ioMode: 'blockio', devName: 'x'.repeat(255) }, errno: 'ENAMETOOLONG' },
  { name: 'OPEN dev_name of 254 bytes with a 2-byte character at the end', msg: { type: 'OPEN', accessMode: 'rw', ioMode: 'blockio', devName: 'x'.repeat(253) + 'é' }, errno: 'ENAMETOOLONG' },
  { name: 'OPEN empty dev_name', msg: { type: 'OPEN', accessMode: 'ro', ioMode: 'fileio', devName: '' }, errno: 'EINVAL' },
  { name: 'OPEN dev_name with an embedded NUL', msg: { type: 'OPEN', accessMode: 'ro', ioMode: 'fileio', devName: 'a\u0000b' }, errno: 'EINVAL' },
  { name: 'OPEN_RSP logical_block_size 0', msg: { ...rspFull, logicalBlockSize: 0 }, errno: 'EINVAL' },
  { name: 'OPEN_RSP logical above physical', msg: { ...rspFull, logicalBlockSize: 8192 }, errno: 'EINVAL' },
  { name: 'IO v1 cannot carry prio', msg: { ...ioBase, prio: 1 }, version: 1, errno: 'EINVAL' },
];

const file = {
  comment: 'Golden IBNBD messages (docs/protocol.md, "RNBD/IBNBD messages"). Written by make-ibnbd.mjs; hex spaces separate fields and are ignored. u64 fields are decimal strings. valid: decode(hex) = msg and encode(msg, version) = hex. accepted: decode(hex) = msg, encode(msg) = canonical. malformed: decode(hex) fails with errno naming field. unencodable: encode(msg, version) fails with errno.',
  valid, accepted, malformed, unencodable,
};
const out = join(dirname(fileURLToPath(import.meta.url)), 'ibnbd.json');
writeFileSync(out, JSON.stringify(file, null, 2) + '\n');
console.log(`${out}: ${valid.length} valid, ${accepted.length} accepted, ${malformed.length} malformed, ${unencodable.length} unencodable`);
