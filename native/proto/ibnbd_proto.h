// The IBNBD block protocol on the wire (docs/protocol.md, "RNBD/IBNBD messages"): RNBD protocol v2
// layouts with IBNBD's io_mode in OPEN byte 5. Header-only so that the per-IO path (EncodeIo on
// the client, DecodeIo on the server) is inlined and allocation-free. src/proto/ibnbd.ts is the
// same codec in TypeScript; tests/support/vectors/ibnbd.json holds the golden bytes both are held to.
//
// API (stable: other components include this file)
//   Constants     kProtoVerMajor (2), kProtoVerV1 (1), kNameMax (255), kSectorSize, kDefaultPort
//                 kHdrSize 4, kSessInfoSize 36, kOpenSize 264, kOpenRspSize 56, kCloseSize 8,
//                 kIoSize 32 (v2), kIoV1Size 24 (v1, no prio), kMaxMsgSize 264
//   Enums         MsgType, IoOp, AccessMode, IoMode; rw flags kFlagSync, kFlagFua (kFlagsKnown);
//                 cache_policy bits kCacheFua, kCacheWriteback
//   Messages      SessInfoMsg (SESS_INFO and SESS_INFO_RSP), OpenMsg, OpenRspMsg, IoMsg, CloseMsg,
//                 Msg (type + union of the above). Plain aggregates: value-initialise with `{}`.
//   Wire layout   wire::Hdr, wire::SessInfo, wire::Open, wire::OpenRsp, wire::Close, wire::Io:
//                 the C declarations, checked by static_assert; use them for offsets only
//                 (fields are always read with the little-endian helpers, never by casting).
//   Helpers       LoadLe16/32/64, StoreLe16/32/64; MsgSize(type) (IO: v2 size), IoWireSize(ver);
//                 IsKnownMsgType; MsgTypeName, IoOpName
//   Encode        int EncodeX(const XMsg&, uint8_t* out, size_t out_len)
//                 writes exactly MsgSize(type) bytes (padding and reserved zeroed) and returns 0 or
//                 -errno: -ENOBUFS if out_len is too small, otherwise the errno Decode would give
//                 for the bytes (so nothing undecodable is ever sent), -ENAMETOOLONG for a dev_name
//                 of more than 254 bytes. A v1 (24-byte) IO is the first kIoV1Size bytes of the
//                 v2 encoding: send IoWireSize(ver) bytes of it.
//   Decode        int DecodeX(const uint8_t* buf, size_t len, XMsg* out, const char** field = nullptr)
//                 int Decode(const uint8_t* buf, size_t len, Msg* out, const char** field = nullptr)
//                 int PeekHdr(const uint8_t* buf, size_t len, MsgType* type, const char** field)
//                 int FrameSize(const uint8_t* buf, size_t len, uint8_t ver, size_t* size, field)
//                   (a stream framing: PeekHdr, then the size of that message for version `ver`)
//                 Total: 0, or -errno with *field (if given) set to the offending field's name;
//                 on error *out is left as it was (Decode sets only out->type).
//                 `len` must be the message's exact length (the framing knows it); IO accepts
//                 32 bytes (v2) or 24 bytes (v1, prio = 0).
//
// Errno per malformed case, checked in this order (TS and C++ agree exactly; docs/protocol.md):
//   len < 4 ................................................ EINVAL    "length"
//   hdr.type not 0..5 ...................................... EPROTO    "hdr.type"
//   hdr.padding != 0 ....................................... EPROTO    "hdr.padding"
//   (typed decoder) type is another message's .............. EPROTO    "hdr.type"
//   len < the type's size (IO: not 24 and < 32) ............ EINVAL    "length"
//   len > the type's size .................................. EMSGSIZE  "length"
//   then fields in offset order:
//   SESS_INFO[_RSP] ver == 0 ............................... EPROTO    "ver"
//   SESS_INFO[_RSP] reserved != 0 .......................... EPROTO    "reserved"
//   OPEN access_mode > 2 ................................... EINVAL    "access_mode"
//   OPEN io_mode > 1 ....................................... EINVAL    "io_mode"
//   OPEN dev_name: no NUL in 255 bytes, empty, not UTF-8 ... EINVAL    "dev_name"
//   OPEN reserved != 0 ..................................... EPROTO    "reserved"
//   OPEN_RSP physical_block_size not a power of 2 >= 512 ... EINVAL    "physical_block_size"
//   OPEN_RSP logical_block_size not a power of 2 >= 512,
//            or > physical_block_size ...................... EINVAL    "logical_block_size"
//   OPEN_RSP rotational > 1 ................................ EINVAL    "rotational"
//   OPEN_RSP cache_policy has bits other than FUA|WRITEBACK  EINVAL    "cache_policy"
//   OPEN_RSP reserved != 0 ................................. EPROTO    "reserved"
//   IO op (rw & 0xff) > 5 .................................. EOPNOTSUPP "rw.op"
//   IO flags (rw & ~0xff) beyond SYNC|FUA .................. EINVAL    "rw.flags"
// Not checked on purpose: the IO's 6 tail padding bytes (kernel clients leave them
// uninitialised), dev_name bytes after its NUL, and everything that depends on the device
// (ranges, alignment, "..", the search path): the server checks those.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ibnbd::proto {

// ---------------------------------------------------------------------------------------------
// Constants

constexpr uint8_t kProtoVerMajor = 2;  // sent in SESS_INFO; negotiated as min(client, server)
constexpr uint8_t kProtoVerV1 = 1;     // out-of-tree IBNBD: IO without prio (24 bytes)
constexpr size_t kNameMax = 255;       // dev_name field, NUL included
constexpr uint32_t kSectorSize = 512;  // unit of sector, nsectors and max_*_sectors
constexpr uint16_t kDefaultPort = 1234;

constexpr size_t kHdrSize = 4;
constexpr size_t kSessInfoSize = 36;
constexpr size_t kOpenSize = 264;
constexpr size_t kOpenRspSize = 56;
constexpr size_t kCloseSize = 8;
constexpr size_t kIoSize = 32;    // v2: with prio and 6 bytes of tail padding
constexpr size_t kIoV1Size = 24;  // v1: up to bi_size
constexpr size_t kMaxMsgSize = kOpenSize;

enum class MsgType : uint16_t {
  kSessInfo = 0,
  kSessInfoRsp = 1,
  kOpen = 2,
  kOpenRsp = 3,
  kIo = 4,
  kClose = 5,
};
constexpr uint16_t kMsgTypeCount = 6;

// rw = op (bits 0-7) | flags (bits 8+)
enum class IoOp : uint8_t {
  kRead = 0,
  kWrite = 1,
  kFlush = 2,
  kDiscard = 3,
  kSecureErase = 4,
  kWriteZeroes = 5,  // WRITE_SAME in old IBNBD; the value is the same
};
constexpr uint8_t kIoOpCount = 6;
constexpr uint32_t kOpBits = 8;
constexpr uint32_t kOpMask = 0xff;
constexpr uint32_t kFlagSync = 1u << 8;
constexpr uint32_t kFlagFua = 1u << 9;
constexpr uint32_t kFlagsKnown = kFlagSync | kFlagFua;

enum class AccessMode : uint8_t { kRo = 0, kRw = 1, kMigration = 2 };
constexpr uint8_t kAccessModeCount = 3;

// IBNBD's OPEN byte 5 (mainline RNBD calls it resv1 and sends 0, i.e. fileio here).
enum class IoMode : uint8_t { kFileIo = 0, kBlockIo = 1 };
constexpr uint8_t kIoModeCount = 2;

// OPEN_RSP cache_policy bits
constexpr uint8_t kCacheFua = 1u << 0;
constexpr uint8_t kCacheWriteback = 1u << 1;
constexpr uint8_t kCacheKnown = kCacheFua | kCacheWriteback;

// ---------------------------------------------------------------------------------------------
// Wire layouts: the C declarations (natural alignment, little-endian fields), for offsets.

namespace wire {
struct Hdr {
  uint16_t type;
  uint16_t padding;
};
struct SessInfo {  // also SESS_INFO_RSP
  Hdr hdr;
  uint8_t ver;
  uint8_t reserved[31];
};
struct Open {
  Hdr hdr;
  uint8_t access_mode;
  uint8_t io_mode;
  char dev_name[kNameMax];
  uint8_t reserved[3];
};
struct OpenRsp {
  Hdr hdr;
  uint32_t device_id;
  uint64_t nsectors;
  uint32_t max_hw_sectors;
  uint32_t max_write_zeroes_sectors;
  uint32_t max_discard_sectors;
  uint32_t discard_granularity;
  uint32_t discard_alignment;
  uint16_t physical_block_size;
  uint16_t logical_block_size;
  uint16_t max_segments;
  uint16_t secure_discard;
  uint8_t rotational;
  uint8_t cache_policy;
  uint8_t reserved[10];
};
struct Close {
  Hdr hdr;
  uint32_t device_id;
};
struct Io {
  Hdr hdr;
  uint32_t device_id;
  uint64_t sector;
  uint32_t rw;
  uint32_t bi_size;
  uint16_t prio;  // v2 only
};

static_assert(sizeof(Hdr) == kHdrSize);
static_assert(sizeof(SessInfo) == kSessInfoSize && offsetof(SessInfo, ver) == 4 &&
              offsetof(SessInfo, reserved) == 5);
static_assert(sizeof(Open) == kOpenSize && offsetof(Open, access_mode) == 4 &&
              offsetof(Open, io_mode) == 5 && offsetof(Open, dev_name) == 6 &&
              offsetof(Open, reserved) == 261);
static_assert(sizeof(OpenRsp) == kOpenRspSize && offsetof(OpenRsp, device_id) == 4 &&
              offsetof(OpenRsp, nsectors) == 8 && offsetof(OpenRsp, max_hw_sectors) == 16 &&
              offsetof(OpenRsp, max_write_zeroes_sectors) == 20 &&
              offsetof(OpenRsp, max_discard_sectors) == 24 &&
              offsetof(OpenRsp, discard_granularity) == 28 &&
              offsetof(OpenRsp, discard_alignment) == 32 &&
              offsetof(OpenRsp, physical_block_size) == 36 &&
              offsetof(OpenRsp, logical_block_size) == 38 &&
              offsetof(OpenRsp, max_segments) == 40 && offsetof(OpenRsp, secure_discard) == 42 &&
              offsetof(OpenRsp, rotational) == 44 && offsetof(OpenRsp, cache_policy) == 45 &&
              offsetof(OpenRsp, reserved) == 46);
static_assert(sizeof(Close) == kCloseSize && offsetof(Close, device_id) == 4);
static_assert(sizeof(Io) == kIoSize && offsetof(Io, device_id) == 4 && offsetof(Io, sector) == 8 &&
              offsetof(Io, rw) == 16 && offsetof(Io, bi_size) == 20 && offsetof(Io, prio) == 24 &&
              offsetof(Io, prio) == kIoV1Size);
}  // namespace wire

// ---------------------------------------------------------------------------------------------
// Decoded messages (host order). Plain aggregates: `IoMsg m{};`.

struct SessInfoMsg {  // SESS_INFO (client → server) and SESS_INFO_RSP (server → client)
  uint8_t ver;
};

struct OpenMsg {
  AccessMode access_mode;
  IoMode io_mode;
  char dev_name[kNameMax];  // NUL-terminated, 1..254 bytes of UTF-8
};

struct OpenRspMsg {
  uint32_t device_id;
  uint64_t nsectors;
  uint32_t max_hw_sectors;
  uint32_t max_write_zeroes_sectors;
  uint32_t max_discard_sectors;
  uint32_t discard_granularity;
  uint32_t discard_alignment;
  uint16_t physical_block_size;
  uint16_t logical_block_size;
  uint16_t max_segments;
  uint16_t secure_discard;
  uint8_t rotational;
  uint8_t cache_policy;
};

struct IoMsg {
  uint32_t device_id;
  uint64_t sector;
  IoOp op;
  uint32_t flags;  // kFlagSync | kFlagFua (already shifted: bits 8+ of rw)
  uint32_t bi_size;
  uint16_t prio;
};

struct CloseMsg {
  uint32_t device_id;
};

struct Msg {
  MsgType type;
  union {
    SessInfoMsg sess_info;  // kSessInfo and kSessInfoRsp
    OpenMsg open;
    OpenRspMsg open_rsp;
    IoMsg io;
    CloseMsg close;
  };
};

// ---------------------------------------------------------------------------------------------
// Little-endian access (byte shifts: correct on any host, compiled to plain moves on x86)

inline uint16_t LoadLe16(const uint8_t* p) { return uint16_t(p[0] | (uint16_t(p[1]) << 8)); }
inline uint32_t LoadLe32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline uint64_t LoadLe64(const uint8_t* p) {
  return uint64_t(LoadLe32(p)) | (uint64_t(LoadLe32(p + 4)) << 32);
}
inline void StoreLe16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
inline void StoreLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = uint8_t(v >> (8 * i));
}
inline void StoreLe64(uint8_t* p, uint64_t v) {
  StoreLe32(p, uint32_t(v));
  StoreLe32(p + 4, uint32_t(v >> 32));
}

// ---------------------------------------------------------------------------------------------
// Sizes and names

constexpr bool IsKnownMsgType(uint16_t t) { return t < kMsgTypeCount; }

// The size of a message of this type (IO: the v2 size); 0 for an unknown type.
constexpr size_t MsgSize(MsgType type) {
  switch (type) {
    case MsgType::kSessInfo:
    case MsgType::kSessInfoRsp: return kSessInfoSize;
    case MsgType::kOpen: return kOpenSize;
    case MsgType::kOpenRsp: return kOpenRspSize;
    case MsgType::kIo: return kIoSize;
    case MsgType::kClose: return kCloseSize;
  }
  return 0;
}

// How many bytes of an encoded IO to send to a peer of negotiated version `ver`.
constexpr size_t IoWireSize(uint8_t ver) { return ver >= 2 ? kIoSize : kIoV1Size; }

constexpr const char* MsgTypeName(MsgType type) {
  switch (type) {
    case MsgType::kSessInfo: return "SESS_INFO";
    case MsgType::kSessInfoRsp: return "SESS_INFO_RSP";
    case MsgType::kOpen: return "OPEN";
    case MsgType::kOpenRsp: return "OPEN_RSP";
    case MsgType::kIo: return "IO";
    case MsgType::kClose: return "CLOSE";
  }
  return "?";
}

constexpr const char* IoOpName(IoOp op) {
  switch (op) {
    case IoOp::kRead: return "READ";
    case IoOp::kWrite: return "WRITE";
    case IoOp::kFlush: return "FLUSH";
    case IoOp::kDiscard: return "DISCARD";
    case IoOp::kSecureErase: return "SECURE_ERASE";
    case IoOp::kWriteZeroes: return "WRITE_ZEROES";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Validation shared by encode and decode

namespace detail {

inline int Fail(const char** field, const char* name, int err) {
  if (field != nullptr) *field = name;
  return -err;
}

inline bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != 0) return false;
  return true;
}

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), as Buffer.isUtf8.
inline bool IsUtf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t extra;
    uint8_t lo = 0x80, hi = 0xbf;  // range of the first continuation byte
    if (c >= 0xc2 && c <= 0xdf) {
      extra = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
      extra = 2;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      extra = 3;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return false;
    }
    if (n - i <= extra) return false;
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (size_t k = 2; k <= extra; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xbf) return false;
    i += extra + 1;
  }
  return true;
}

inline bool IsBlockSize(uint16_t v) { return v >= 512 && (v & (v - 1)) == 0; }

// dev_name as stored in the 255-byte field: NUL within it, non-empty, UTF-8 before the NUL.
inline int CheckDevName(const char* name, const char** field) {
  const void* nul = std::memchr(name, 0, kNameMax);
  if (nul == nullptr || nul == name) return Fail(field, "dev_name", EINVAL);
  size_t len = size_t(static_cast<const char*>(nul) - name);
  if (!IsUtf8(reinterpret_cast<const uint8_t*>(name), len)) return Fail(field, "dev_name", EINVAL);
  return 0;
}

inline int CheckOpenRsp(const OpenRspMsg& m, const char** field) {
  if (!IsBlockSize(m.physical_block_size)) return Fail(field, "physical_block_size", EINVAL);
  if (!IsBlockSize(m.logical_block_size) || m.logical_block_size > m.physical_block_size)
    return Fail(field, "logical_block_size", EINVAL);
  if (m.rotational > 1) return Fail(field, "rotational", EINVAL);
  if ((m.cache_policy & ~kCacheKnown) != 0) return Fail(field, "cache_policy", EINVAL);
  return 0;
}

inline int CheckRw(uint32_t rw, const char** field) {
  if ((rw & kOpMask) >= kIoOpCount) return Fail(field, "rw.op", EOPNOTSUPP);
  if ((rw & ~kOpMask & ~kFlagsKnown) != 0) return Fail(field, "rw.flags", EINVAL);
  return 0;
}

// Header, type and length checks common to every typed decoder (see the order at the top).
inline int CheckFrame(const uint8_t* buf, size_t len, MsgType want, const char** field) {
  if (len < kHdrSize) return Fail(field, "length", EINVAL);
  uint16_t type = LoadLe16(buf);
  if (!IsKnownMsgType(type)) return Fail(field, "hdr.type", EPROTO);
  if (LoadLe16(buf + 2) != 0) return Fail(field, "hdr.padding", EPROTO);
  if (type != uint16_t(want)) return Fail(field, "hdr.type", EPROTO);
  size_t size = MsgSize(want);
  if (want == MsgType::kIo && len == kIoV1Size) return 0;
  if (len < size) return Fail(field, "length", EINVAL);
  if (len > size) return Fail(field, "length", EMSGSIZE);
  return 0;
}

inline int PrepareOut(MsgType type, uint8_t* out, size_t out_len, const char** field) {
  size_t size = MsgSize(type);
  if (out == nullptr || out_len < size) return Fail(field, "length", ENOBUFS);
  std::memset(out, 0, size);
  StoreLe16(out, uint16_t(type));
  return 0;
}

}  // namespace detail

// Header only: len >= 4, known type, zero padding. For a framing that must learn the size first.
inline int PeekHdr(const uint8_t* buf, size_t len, MsgType* type, const char** field = nullptr) {
  if (len < kHdrSize) return detail::Fail(field, "length", EINVAL);
  uint16_t t = LoadLe16(buf);
  if (!IsKnownMsgType(t)) return detail::Fail(field, "hdr.type", EPROTO);
  if (LoadLe16(buf + 2) != 0) return detail::Fail(field, "hdr.padding", EPROTO);
  *type = MsgType(t);
  return 0;
}

// For a byte stream without lengths: how many bytes the message starting at buf occupies, once
// its 4-byte header is there (IO: 32 bytes for ver >= 2, 24 for ver 1).
inline int FrameSize(const uint8_t* buf, size_t len, uint8_t ver, size_t* size,
                     const char** field = nullptr) {
  MsgType type;
  if (int err = PeekHdr(buf, len, &type, field)) return err;
  *size = type == MsgType::kIo ? IoWireSize(ver) : MsgSize(type);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// IO: the hot path

inline int EncodeIo(const IoMsg& m, uint8_t* out, size_t out_len) {
  uint32_t rw = uint32_t(m.op) | m.flags;
  if (uint32_t(m.op) >= kIoOpCount) return -EOPNOTSUPP;
  if ((m.flags & ~kFlagsKnown) != 0) return -EINVAL;
  if (out == nullptr || out_len < kIoSize) return -ENOBUFS;
  StoreLe16(out, uint16_t(MsgType::kIo));
  StoreLe16(out + 2, 0);
  StoreLe32(out + offsetof(wire::Io, device_id), m.device_id);
  StoreLe64(out + offsetof(wire::Io, sector), m.sector);
  StoreLe32(out + offsetof(wire::Io, rw), rw);
  StoreLe32(out + offsetof(wire::Io, bi_size), m.bi_size);
  StoreLe16(out + offsetof(wire::Io, prio), m.prio);
  std::memset(out + offsetof(wire::Io, prio) + 2, 0, kIoSize - offsetof(wire::Io, prio) - 2);
  return 0;
}

inline int DecodeIo(const uint8_t* buf, size_t len, IoMsg* out, const char** field = nullptr) {
  if (int err = detail::CheckFrame(buf, len, MsgType::kIo, field)) return err;
  uint32_t rw = LoadLe32(buf + offsetof(wire::Io, rw));
  if (int err = detail::CheckRw(rw, field)) return err;
  out->device_id = LoadLe32(buf + offsetof(wire::Io, device_id));
  out->sector = LoadLe64(buf + offsetof(wire::Io, sector));
  out->op = IoOp(rw & kOpMask);
  out->flags = rw & ~kOpMask;
  out->bi_size = LoadLe32(buf + offsetof(wire::Io, bi_size));
  out->prio = len >= kIoSize ? LoadLe16(buf + offsetof(wire::Io, prio)) : 0;
  return 0;
}

// ---------------------------------------------------------------------------------------------
// SESS_INFO / SESS_INFO_RSP (same layout; `rsp` picks the type)

inline int EncodeSessInfo(const SessInfoMsg& m, bool rsp, uint8_t* out, size_t out_len) {
  if (m.ver == 0) return -EPROTO;
  MsgType type = rsp ? MsgType::kSessInfoRsp : MsgType::kSessInfo;
  if (int err = detail::PrepareOut(type, out, out_len, nullptr)) return err;
  out[offsetof(wire::SessInfo, ver)] = m.ver;
  return 0;
}

inline int DecodeSessInfo(const uint8_t* buf, size_t len, bool rsp, SessInfoMsg* out,
                          const char** field = nullptr) {
  MsgType type = rsp ? MsgType::kSessInfoRsp : MsgType::kSessInfo;
  if (int err = detail::CheckFrame(buf, len, type, field)) return err;
  uint8_t ver = buf[offsetof(wire::SessInfo, ver)];
  if (ver == 0) return detail::Fail(field, "ver", EPROTO);
  if (!detail::AllZero(buf + offsetof(wire::SessInfo, reserved), sizeof(wire::SessInfo::reserved)))
    return detail::Fail(field, "reserved", EPROTO);
  out->ver = ver;
  return 0;
}

// ---------------------------------------------------------------------------------------------
// OPEN

inline int EncodeOpen(const OpenMsg& m, uint8_t* out, size_t out_len) {
  if (uint8_t(m.access_mode) >= kAccessModeCount) return -EINVAL;
  if (uint8_t(m.io_mode) >= kIoModeCount) return -EINVAL;
  if (std::memchr(m.dev_name, 0, kNameMax) == nullptr) return -ENAMETOOLONG;
  if (int err = detail::CheckDevName(m.dev_name, nullptr)) return err;
  if (int err = detail::PrepareOut(MsgType::kOpen, out, out_len, nullptr)) return err;
  out[offsetof(wire::Open, access_mode)] = uint8_t(m.access_mode);
  out[offsetof(wire::Open, io_mode)] = uint8_t(m.io_mode);
  std::memcpy(out + offsetof(wire::Open, dev_name), m.dev_name, std::strlen(m.dev_name));
  return 0;
}

// Convenience for callers holding a name and its length (not NUL-terminated).
inline int SetDevName(OpenMsg* m, const char* name, size_t len) {
  if (len >= kNameMax) return -ENAMETOOLONG;
  if (len == 0 || std::memchr(name, 0, len) != nullptr) return -EINVAL;
  std::memcpy(m->dev_name, name, len);
  std::memset(m->dev_name + len, 0, kNameMax - len);
  return 0;
}

inline int DecodeOpen(const uint8_t* buf, size_t len, OpenMsg* out, const char** field = nullptr) {
  if (int err = detail::CheckFrame(buf, len, MsgType::kOpen, field)) return err;
  uint8_t access = buf[offsetof(wire::Open, access_mode)];
  uint8_t io_mode = buf[offsetof(wire::Open, io_mode)];
  if (access >= kAccessModeCount) return detail::Fail(field, "access_mode", EINVAL);
  if (io_mode >= kIoModeCount) return detail::Fail(field, "io_mode", EINVAL);
  const char* name = reinterpret_cast<const char*>(buf + offsetof(wire::Open, dev_name));
  if (int err = detail::CheckDevName(name, field)) return err;
  if (!detail::AllZero(buf + offsetof(wire::Open, reserved), sizeof(wire::Open::reserved)))
    return detail::Fail(field, "reserved", EPROTO);
  out->access_mode = AccessMode(access);
  out->io_mode = IoMode(io_mode);
  size_t name_len = std::strlen(name);  // bounded: CheckDevName found the NUL
  std::memcpy(out->dev_name, name, name_len);
  std::memset(out->dev_name + name_len, 0, kNameMax - name_len);  // bytes after NUL are ignored
  return 0;
}

// ---------------------------------------------------------------------------------------------
// OPEN_RSP

inline int EncodeOpenRsp(const OpenRspMsg& m, uint8_t* out, size_t out_len) {
  if (int err = detail::CheckOpenRsp(m, nullptr)) return err;
  if (int err = detail::PrepareOut(MsgType::kOpenRsp, out, out_len, nullptr)) return err;
  StoreLe32(out + offsetof(wire::OpenRsp, device_id), m.device_id);
  StoreLe64(out + offsetof(wire::OpenRsp, nsectors), m.nsectors);
  StoreLe32(out + offsetof(wire::OpenRsp, max_hw_sectors), m.max_hw_sectors);
  StoreLe32(out + offsetof(wire::OpenRsp, max_write_zeroes_sectors), m.max_write_zeroes_sectors);
  StoreLe32(out + offsetof(wire::OpenRsp, max_discard_sectors), m.max_discard_sectors);
  StoreLe32(out + offsetof(wire::OpenRsp, discard_granularity), m.discard_granularity);
  StoreLe32(out + offsetof(wire::OpenRsp, discard_alignment), m.discard_alignment);
  StoreLe16(out + offsetof(wire::OpenRsp, physical_block_size), m.physical_block_size);
  StoreLe16(out + offsetof(wire::OpenRsp, logical_block_size), m.logical_block_size);
  StoreLe16(out + offsetof(wire::OpenRsp, max_segments), m.max_segments);
  StoreLe16(out + offsetof(wire::OpenRsp, secure_discard), m.secure_discard);
  out[offsetof(wire::OpenRsp, rotational)] = m.rotational;
  out[offsetof(wire::OpenRsp, cache_policy)] = m.cache_policy;
  return 0;
}

inline int DecodeOpenRsp(const uint8_t* buf, size_t len, OpenRspMsg* out,
                         const char** field = nullptr) {
  if (int err = detail::CheckFrame(buf, len, MsgType::kOpenRsp, field)) return err;
  OpenRspMsg m;
  m.device_id = LoadLe32(buf + offsetof(wire::OpenRsp, device_id));
  m.nsectors = LoadLe64(buf + offsetof(wire::OpenRsp, nsectors));
  m.max_hw_sectors = LoadLe32(buf + offsetof(wire::OpenRsp, max_hw_sectors));
  m.max_write_zeroes_sectors = LoadLe32(buf + offsetof(wire::OpenRsp, max_write_zeroes_sectors));
  m.max_discard_sectors = LoadLe32(buf + offsetof(wire::OpenRsp, max_discard_sectors));
  m.discard_granularity = LoadLe32(buf + offsetof(wire::OpenRsp, discard_granularity));
  m.discard_alignment = LoadLe32(buf + offsetof(wire::OpenRsp, discard_alignment));
  m.physical_block_size = LoadLe16(buf + offsetof(wire::OpenRsp, physical_block_size));
  m.logical_block_size = LoadLe16(buf + offsetof(wire::OpenRsp, logical_block_size));
  m.max_segments = LoadLe16(buf + offsetof(wire::OpenRsp, max_segments));
  m.secure_discard = LoadLe16(buf + offsetof(wire::OpenRsp, secure_discard));
  m.rotational = buf[offsetof(wire::OpenRsp, rotational)];
  m.cache_policy = buf[offsetof(wire::OpenRsp, cache_policy)];
  if (int err = detail::CheckOpenRsp(m, field)) return err;
  if (!detail::AllZero(buf + offsetof(wire::OpenRsp, reserved), sizeof(wire::OpenRsp::reserved)))
    return detail::Fail(field, "reserved", EPROTO);
  *out = m;
  return 0;
}

// ---------------------------------------------------------------------------------------------
// CLOSE

inline int EncodeClose(const CloseMsg& m, uint8_t* out, size_t out_len) {
  if (int err = detail::PrepareOut(MsgType::kClose, out, out_len, nullptr)) return err;
  StoreLe32(out + offsetof(wire::Close, device_id), m.device_id);
  return 0;
}

inline int DecodeClose(const uint8_t* buf, size_t len, CloseMsg* out,
                       const char** field = nullptr) {
  if (int err = detail::CheckFrame(buf, len, MsgType::kClose, field)) return err;
  out->device_id = LoadLe32(buf + offsetof(wire::Close, device_id));
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Any message

inline int Decode(const uint8_t* buf, size_t len, Msg* out, const char** field = nullptr) {
  MsgType type;
  if (int err = PeekHdr(buf, len, &type, field)) return err;
  out->type = type;
  switch (type) {
    case MsgType::kSessInfo: return DecodeSessInfo(buf, len, false, &out->sess_info, field);
    case MsgType::kSessInfoRsp: return DecodeSessInfo(buf, len, true, &out->sess_info, field);
    case MsgType::kOpen: return DecodeOpen(buf, len, &out->open, field);
    case MsgType::kOpenRsp: return DecodeOpenRsp(buf, len, &out->open_rsp, field);
    case MsgType::kIo: return DecodeIo(buf, len, &out->io, field);
    case MsgType::kClose: return DecodeClose(buf, len, &out->close, field);
  }
  return detail::Fail(field, "hdr.type", EPROTO);
}

// Writes MsgSize(m.type) bytes.
inline int Encode(const Msg& m, uint8_t* out, size_t out_len) {
  switch (m.type) {
    case MsgType::kSessInfo: return EncodeSessInfo(m.sess_info, false, out, out_len);
    case MsgType::kSessInfoRsp: return EncodeSessInfo(m.sess_info, true, out, out_len);
    case MsgType::kOpen: return EncodeOpen(m.open, out, out_len);
    case MsgType::kOpenRsp: return EncodeOpenRsp(m.open_rsp, out, out_len);
    case MsgType::kIo: return EncodeIo(m.io, out, out_len);
    case MsgType::kClose: return EncodeClose(m.close, out, out_len);
  }
  return -EPROTO;
}

}  // namespace ibnbd::proto
