#include "transport/tcp/frames.h"

#include <cerrno>
#include <cstring>

namespace ibnbd::transport::tcp {
namespace {

void Put16(uint8_t* p, uint16_t v) {
  p[0] = v & 0xff;
  p[1] = v >> 8;
}
void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (v >> (8 * i)) & 0xff;
}
void Put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (v >> (8 * i)) & 0xff;
}
uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t Get64(const uint8_t* p) {
  return static_cast<uint64_t>(Get32(p)) | (static_cast<uint64_t>(Get32(p + 4)) << 32);
}
bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return false;
  return true;
}

}  // namespace

size_t EncodeHandshakeReq(const HandshakeReq& req, uint8_t* out) {
  memset(out, 0, kHandshakeReqSize);
  Put32(out + 0, kMagic);
  Put16(out + 4, req.version);
  Put16(out + 6, req.conn_index);
  Put16(out + 8, req.conn_count);
  Put16(out + 10, static_cast<uint16_t>(req.sessname.size()));
  Put32(out + 12, req.queue_depth);
  Put32(out + 16, req.max_io_size);
  Put32(out + 20, req.incarnation);
  memcpy(out + 24, req.session_uuid, 16);
  memcpy(out + 40, req.path_uuid, 16);
  Put32(out + 56, req.flags);
  memcpy(out + kHandshakeReqSize, req.sessname.data(), req.sessname.size());
  if (req.flags & kHandshakeFlagAuth)
    memcpy(out + kHandshakeReqSize + req.sessname.size(), req.client_nonce, kAuthNonceLen);
  return HandshakeReqLen(req);
}

int DecodeHandshakeReqFixed(const uint8_t* in, HandshakeReq* req, uint16_t* sessname_len) {
  if (Get32(in) != kMagic) return -EPROTO;
  req->version = Get16(in + 4);
  if (req->version != kVersion) return -EPROTONOSUPPORT;
  req->conn_index = Get16(in + 6);
  req->conn_count = Get16(in + 8);
  *sessname_len = Get16(in + 10);
  req->queue_depth = Get32(in + 12);
  req->max_io_size = Get32(in + 16);
  req->incarnation = Get32(in + 20);
  memcpy(req->session_uuid, in + 24, 16);
  memcpy(req->path_uuid, in + 40, 16);
  req->flags = Get32(in + 56);
  if ((req->flags & ~kHandshakeFlagAuth) != 0 || !AllZero(in + 60, 4)) return -EPROTO;
  if (*sessname_len == 0 || *sessname_len > kMaxSessnameLen) return -EINVAL;
  if (req->conn_count < 2 || req->conn_count > kMaxConnsPerPath) return -EINVAL;
  if (req->conn_index >= req->conn_count) return -EINVAL;
  if (req->queue_depth == 0 || req->queue_depth > kMaxQueueDepth) return -EINVAL;
  if (req->max_io_size < kMinMaxIoSize || req->max_io_size > kMaxMaxIoSize) return -EINVAL;
  if (AllZero(req->session_uuid, 16) || AllZero(req->path_uuid, 16)) return -EINVAL;
  return 0;
}

int DecodeHandshakeReqTail(const uint8_t* tail, uint16_t sessname_len, HandshakeReq* req) {
  req->sessname.assign(reinterpret_cast<const char*>(tail), sessname_len);
  if (int rc = ValidateSessname(req->sessname)) return rc;
  if (req->flags & kHandshakeFlagAuth) memcpy(req->client_nonce, tail + sessname_len, kAuthNonceLen);
  return 0;
}

namespace {
void PutAuthHeader(uint8_t* out, size_t size, uint16_t kind) {
  memset(out, 0, size);
  Put32(out + 0, kMagic);
  Put16(out + 4, kVersion);
  Put16(out + 6, kind);
}
int CheckAuthHeader(const uint8_t* in, uint16_t kind) {
  if (Get32(in) != kMagic) return -EPROTO;
  if (Get16(in + 4) != kVersion) return -EPROTONOSUPPORT;
  if (Get16(in + 6) != kind || !AllZero(in + 8, 8)) return -EPROTO;
  return 0;
}
}  // namespace

void EncodeAuthChallenge(const AuthChallenge& c, uint8_t* out) {
  PutAuthHeader(out, kAuthChallengeSize, kAuthKindChallenge);
  memcpy(out + 16, c.server_nonce, kAuthNonceLen);
  memcpy(out + 48, c.server_proof, kAuthProofLen);
}

int DecodeAuthChallenge(const uint8_t* in, AuthChallenge* c) {
  if (int rc = CheckAuthHeader(in, kAuthKindChallenge)) return rc;
  memcpy(c->server_nonce, in + 16, kAuthNonceLen);
  memcpy(c->server_proof, in + 48, kAuthProofLen);
  return 0;
}

void EncodeAuthProof(const AuthProof& p, uint8_t* out) {
  PutAuthHeader(out, kAuthProofSize, kAuthKindProof);
  memcpy(out + 16, p.client_proof, kAuthProofLen);
}

int DecodeAuthProof(const uint8_t* in, AuthProof* p) {
  if (int rc = CheckAuthHeader(in, kAuthKindProof)) return rc;
  memcpy(p->client_proof, in + 16, kAuthProofLen);
  return 0;
}

int PeekServerKind(const uint8_t* in, uint16_t* kind) {
  if (Get32(in) != kMagic) return -EPROTO;
  if (Get16(in + 4) != kVersion) return -EPROTONOSUPPORT;
  *kind = Get16(in + 6);
  return *kind == 0 || *kind == kAuthKindChallenge ? 0 : -EPROTO;
}

int ValidateSessname(const std::string& name) {
  if (name.empty() || name.size() > kMaxSessnameLen) return -EINVAL;
  if (name == "." || name == "..") return -EINVAL;
  for (unsigned char c : name)
    if (c < 0x20 || c == 0x7f || c == '/') return -EINVAL;
  return 0;
}

void EncodeHandshakeRsp(const HandshakeRsp& rsp, uint8_t* out) {
  memset(out, 0, kHandshakeRspSize);
  Put32(out + 0, kMagic);
  Put16(out + 4, rsp.version);
  Put32(out + 8, static_cast<uint32_t>(rsp.err));
  Put32(out + 12, rsp.queue_depth);
  Put32(out + 16, rsp.max_io_size);
}

int DecodeHandshakeRsp(const uint8_t* in, HandshakeRsp* rsp) {
  if (Get32(in) != kMagic) return -EPROTO;
  rsp->version = Get16(in + 4);
  if (rsp->version != kVersion) return -EPROTONOSUPPORT;
  if (!AllZero(in + 6, 2) || !AllZero(in + 20, 12)) return -EPROTO;
  rsp->err = static_cast<int32_t>(Get32(in + 8));
  rsp->queue_depth = Get32(in + 12);
  rsp->max_io_size = Get32(in + 16);
  if (rsp->err > 0 || rsp->err < -4095) return -EPROTO;
  return 0;
}

void EncodeFrameHeader(const FrameHeader& h, uint8_t* out) {
  out[0] = static_cast<uint8_t>(h.kind);
  out[1] = 0;
  Put16(out + 2, h.usr_len);
  Put32(out + 4, h.id);
  Put32(out + 8, h.data_len);
  Put32(out + 12, static_cast<uint32_t>(h.err));
  Put64(out + 16, h.cookie);
}

int DecodeFrameHeader(const uint8_t* in, FrameHeader* h) {
  uint8_t kind = in[0];
  if (kind < 1 || kind > 7 || in[1] != 0) return -EPROTO;
  h->kind = static_cast<FrameKind>(kind);
  h->usr_len = Get16(in + 2);
  h->id = Get32(in + 4);
  h->data_len = Get32(in + 8);
  h->err = static_cast<int32_t>(Get32(in + 12));
  h->cookie = Get64(in + 16);
  if (h->err > 0 || h->err < -4095) return -EPROTO;
  return 0;
}

}  // namespace ibnbd::transport::tcp
