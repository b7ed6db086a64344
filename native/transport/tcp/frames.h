// The TCP transport's wire format (docs/tcp-transport.md; the TS twin is
// tests/support/tcp-frames.ts, both checked against tests/support/vectors/tcp-frames.json).
// All integers little-endian. Encoders write into caller buffers; decoders validate what can be
// validated without session state and return 0 or -EPROTO/-EINVAL.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ibnbd::transport::tcp {

constexpr uint32_t kMagic = 0x54434249;  // "IBCT" on the wire
constexpr uint16_t kVersion = 1;
constexpr size_t kHandshakeReqSize = 64;  // followed by sessname_len bytes of sessname
constexpr size_t kHandshakeRspSize = 32;
constexpr size_t kFrameHeaderSize = 24;
constexpr size_t kMaxSessnameLen = 256;
constexpr uint16_t kMaxConnsPerPath = 1025;  // service + up to 1024 IO threads
constexpr uint32_t kMaxQueueDepth = 65535;
constexpr uint32_t kMinMaxIoSize = 4096;
constexpr uint32_t kMaxMaxIoSize = 16 * 1024 * 1024;
// Authentication (docs/tcp-transport.md, "Authentication"; docs/security.md): a request with
// kHandshakeFlagAuth carries the client's nonce after the name; the server answers with an
// AUTH_CHALLENGE (its nonce and proof) instead of the response, and the client's AUTH_PROOF
// comes before the response.
constexpr uint32_t kHandshakeFlagAuth = 1;
constexpr size_t kAuthNonceLen = 32;
constexpr size_t kAuthProofLen = 32;
constexpr size_t kAuthChallengeSize = 80;
constexpr size_t kAuthProofSize = 48;
constexpr uint16_t kAuthKindChallenge = 1;  // at offset 6, where a handshake response has 0
constexpr uint16_t kAuthKindProof = 2;

enum class FrameKind : uint8_t {
  kReadReq = 1,   // client → server: usr follows; data_len = bytes wanted back
  kWriteReq = 2,  // client → server: usr, then data_len bytes of data follow
  kResponse = 3,  // server → client: err; data_len bytes follow (READ success only)
  kHeartbeat = 4,     // either way, on the service connection; cookie = sender's clock
  kHeartbeatAck = 5,  // answer, cookie echoed
  // client → server on a service connection: retire the path whose uuid is the 16-byte usr and
  // whose incarnation is id (or older), and answer once none of its requests is still running
  kFence = 6,
  kFenceAck = 7,  // server → client: the fence of `cookie` holds
};

struct HandshakeReq {
  uint16_t version = kVersion;
  uint16_t conn_index = 0;  // 0 = service connection, 1..conn_count-1 = IO connections
  uint16_t conn_count = 0;
  uint32_t queue_depth = 0;
  uint32_t max_io_size = 0;
  uint8_t session_uuid[16] = {};
  uint8_t path_uuid[16] = {};  // the client's path, the same across its reconnects
  // the path's connect attempt, counting up: a higher one retires the path's older connections
  uint32_t incarnation = 0;
  uint32_t flags = 0;  // kHandshakeFlagAuth
  std::string sessname;
  uint8_t client_nonce[kAuthNonceLen] = {};  // on the wire after the name, with the auth flag
};

struct AuthChallenge {
  uint8_t server_nonce[kAuthNonceLen] = {};
  uint8_t server_proof[kAuthProofLen] = {};
};

struct AuthProof {
  uint8_t client_proof[kAuthProofLen] = {};
};

struct HandshakeRsp {
  uint16_t version = kVersion;
  int32_t err = 0;  // 0 or -errno: the reason the server refused the connection
  uint32_t queue_depth = 0;
  uint32_t max_io_size = 0;
};

struct FrameHeader {
  FrameKind kind = FrameKind::kResponse;
  uint16_t usr_len = 0;
  uint32_t id = 0;
  uint32_t data_len = 0;
  int32_t err = 0;
  uint64_t cookie = 0;
};

// Writes HandshakeReqLen(req) bytes: the fixed part, the name, the nonce when flags has auth.
size_t EncodeHandshakeReq(const HandshakeReq& req, uint8_t* out);
inline size_t HandshakeReqLen(const HandshakeReq& req) {
  return kHandshakeReqSize + req.sessname.size() + ((req.flags & kHandshakeFlagAuth) ? kAuthNonceLen : 0);
}
// Decodes the fixed part; *tail_len tells how many bytes follow (the name, then the nonce when
// flags has auth). Checks magic, version, known flags, reserved bytes zero, 1 ≤ sessname_len ≤
// 256, conn_index < conn_count ≤ max, queue depth 1..65535, max IO size in range.
int DecodeHandshakeReqFixed(const uint8_t* in, HandshakeReq* req, uint16_t* sessname_len);
// The bytes after the fixed part: the name (validated) and the nonce.
int DecodeHandshakeReqTail(const uint8_t* tail, uint16_t sessname_len, HandshakeReq* req);
inline size_t HandshakeReqTailLen(const HandshakeReq& req, uint16_t sessname_len) {
  return sessname_len + ((req.flags & kHandshakeFlagAuth) ? kAuthNonceLen : 0);
}

// kAuthChallengeSize / kAuthProofSize bytes. The decoders check magic, version, kind, reserved.
void EncodeAuthChallenge(const AuthChallenge& c, uint8_t* out);
int DecodeAuthChallenge(const uint8_t* in, AuthChallenge* c);
void EncodeAuthProof(const AuthProof& p, uint8_t* out);
int DecodeAuthProof(const uint8_t* in, AuthProof* p);
// The first 8 bytes of what a server sends first: an AUTH_CHALLENGE (kAuthKindChallenge) or a
// handshake response (0); -EPROTO for anything else.
int PeekServerKind(const uint8_t* in, uint16_t* kind);
// The name: no NUL, '/', control characters, and not "." or "..".
int ValidateSessname(const std::string& name);

void EncodeHandshakeRsp(const HandshakeRsp& rsp, uint8_t* out);
int DecodeHandshakeRsp(const uint8_t* in, HandshakeRsp* rsp);

void EncodeFrameHeader(const FrameHeader& h, uint8_t* out);
// Checks the kind and the reserved byte; limits that need session state are the caller's.
int DecodeFrameHeader(const uint8_t* in, FrameHeader* h);

}  // namespace ibnbd::transport::tcp
