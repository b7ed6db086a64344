// RTRS wire layouts (docs/protocol.md, "RTRS transport"), byte-exact with Linux
// drivers/infiniband/ulp/rtrs/rtrs-pri.h: all fields little-endian, immediates big-endian in the
// work request. One description, used by client and server alike.
#pragma once
#include <endian.h>

#include <cstddef>
#include <cstdint>

namespace ibnbd::rdma::wire {

constexpr uint16_t kMagic = 0x1BBD;
constexpr uint16_t kVersion = (2 << 8) | 0;  // only the major byte is compared
constexpr uint32_t kMaxHdrSize = 4096;       // room for usr msg + rtrs msg at the chunk's tail
constexpr uint32_t kMinChunkSize = 8192;
constexpr uint32_t kMaxQueueDepth = 65535;
constexpr uint16_t kMaxConnsPerPath = 4096;
constexpr uint32_t kMaxPathsPerSession = 128;
constexpr uint32_t kFlagNewRkey = 2;    // conn_rsp.flags: server rotates chunk rkeys (RKEY_RSP)
constexpr uint16_t kFlagNeedInval = 1;  // msg_rdma_read.flags: client wants SEND_WITH_INV
constexpr uint8_t kFirstConn = 1;       // conn_req byte 44 bit 0

// Session authentication between our own daemons (docs/rdma-transport.md, "Authentication"): bits
// and bytes RTRS leaves reserved, which the kernel's rtrs zeroes when it sends and ignores when it
// receives, so a kernel peer never starts it and never sees it.
//   conn_req.flags kAuthConn: the client has a secret for this session and will prove it;
//   conn_rsp.flags kFlagAuth on cid 0's answer: reserved[0..31] is the server's fresh nonce;
//   the info request is followed by an AuthTail (client nonce, client proof);
//   the info response is followed by the server's proof, or is an AuthRefusal (sg_cnt 0), which
//   the server sends to a client that set kKnowsRefusal (ours always does) instead of only
//   closing the path, so that a client without a secret learns why (EACCES).
constexpr uint8_t kAuthConn = 2;               // conn_req byte 44 bit 1
constexpr uint8_t kKnowsRefusal = 4;           // conn_req byte 44 bit 2: our client, secret or not
constexpr uint32_t kFlagAuth = 1u << 31;       // conn_rsp.flags
constexpr uint8_t kInfoRspAuthFailed = 1;      // info_rsp.reserved[0] of an AuthRefusal

enum MsgType : uint16_t { kInfoReq = 0, kInfoRsp = 1, kMsgWrite = 2, kMsgRead = 3, kRkeyRsp = 4 };
enum ImmType : uint32_t { kIoReqImm = 0, kIoRspImm = 1, kIoRspWInvImm = 2, kHbMsgImm = 8, kHbAckImm = 9 };

struct __attribute__((packed)) ConnReq {
  uint8_t cma_version;  // 0; rdma_cm overwrites it for AF_IB
  uint8_t ip_version;   // 0
  uint16_t magic;
  uint16_t version;
  uint16_t cid;
  uint16_t cid_num;
  uint16_t recon_cnt;
  uint8_t sess_uuid[16];   // the path
  uint8_t paths_uuid[16];  // the session
  uint8_t flags;           // kFirstConn
  uint8_t reserved[11];
};
static_assert(sizeof(ConnReq) == 56);
static_assert(offsetof(ConnReq, sess_uuid) == 12 && offsetof(ConnReq, flags) == 44);

struct __attribute__((packed)) ConnRsp {
  uint16_t magic;
  uint16_t version;
  uint16_t errno_;  // negative errno as int16 on reject, 0 on accept
  uint16_t queue_depth;
  uint32_t max_io_size;
  uint32_t max_hdr_size;
  uint32_t flags;
  uint8_t reserved[36];
};
static_assert(sizeof(ConnRsp) == 56);

struct __attribute__((packed)) InfoReq {
  uint16_t type;
  char pathname[255];
  uint8_t reserved[15];
};
static_assert(sizeof(InfoReq) == 272);

struct __attribute__((packed)) SgDesc {
  uint64_t addr;
  uint32_t key;
  uint32_t len;
};
static_assert(sizeof(SgDesc) == 16);

struct __attribute__((packed)) InfoRspHdr {
  uint16_t type;
  uint16_t sg_cnt;
  uint8_t reserved[4];
  // SgDesc desc[sg_cnt] follows
};
static_assert(sizeof(InfoRspHdr) == 8);

// After an authenticating client's InfoReq (the proof: core/auth.h over AuthTranscript()).
struct __attribute__((packed)) AuthTail {
  uint8_t client_nonce[32];
  uint8_t proof[32];
};
static_assert(sizeof(AuthTail) == 64);
// The server's proof follows the descriptors of its InfoRsp: 32 bytes.
constexpr size_t kServerProofSize = 32;

// What both proofs cover besides the nonces: the session (paths uuid), the path (sess uuid) and
// the session name exactly as the info request carries it (255 bytes, NUL-padded).
struct __attribute__((packed)) AuthTranscript {
  uint8_t paths_uuid[16];
  uint8_t sess_uuid[16];
  char pathname[255];
};
static_assert(sizeof(AuthTranscript) == 287);

struct __attribute__((packed)) MsgWrite {
  uint16_t type;
  uint16_t usr_len;
};
static_assert(sizeof(MsgWrite) == 4);

struct __attribute__((packed)) MsgReadHdr {
  uint16_t type;
  uint16_t usr_len;
  uint16_t flags;
  uint16_t sg_cnt;
  // SgDesc desc[sg_cnt] follows
};
static_assert(sizeof(MsgReadHdr) == 8);

struct __attribute__((packed)) RkeyRsp {
  uint16_t type;
  uint16_t buf_id;
  uint32_t rkey;
};
static_assert(sizeof(RkeyRsp) == 8);

// imm = type:4 | payload:28, in host order here; the WR carries htobe32(imm).
inline uint32_t MakeImm(ImmType type, uint32_t payload) {
  return (static_cast<uint32_t>(type) & 0xF) << 28 | (payload & 0x0FFFFFFF);
}
inline uint32_t ImmTypeOf(uint32_t imm) { return imm >> 28; }
inline uint32_t ImmPayload(uint32_t imm) { return imm & 0x0FFFFFFF; }

// Response payload: |errno| in 9 bits above a 19-bit buffer id.
inline uint32_t RspPayload(int err, uint32_t buf_id) {
  uint32_t e = static_cast<uint32_t>(err < 0 ? -err : err);
  if (e > 0x1FF) e = 5;  // EIO: the field cannot carry larger errnos
  return (e & 0x1FF) << 19 | (buf_id & 0x7FFFF);
}
inline int RspErrno(uint32_t payload) { return -static_cast<int>((payload >> 19) & 0x1FF); }
inline uint32_t RspBufId(uint32_t payload) { return payload & 0x7FFFF; }

// Bits of the request immediate that hold the buffer id: ilog2(qd - 1) + 1.
inline uint32_t ChunkBits(uint32_t queue_depth) {
  return queue_depth <= 1 ? 1 : 32 - static_cast<uint32_t>(__builtin_clz(queue_depth - 1));
}
inline uint32_t MemBits(uint32_t queue_depth) { return 28 - ChunkBits(queue_depth); }

}  // namespace ibnbd::rdma::wire
