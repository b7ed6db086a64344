// tcpFrames: the C++ frame codec exposed to JS so tests/native/tcp-frames.test.ts can hold it to the
// same golden vectors as tests/support/tcp-frames.ts (test-only; the data path never uses it).
#include <cerrno>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "testing/testing.h"
#include "transport/core/auth.h"
#include "transport/tcp/frames.h"

namespace ibnbd::transport::tcp {
namespace {

uint32_t U32(Napi::Object o, const char* k) { return o.Get(k).As<Napi::Number>().Uint32Value(); }

Napi::Object Err(Napi::Env env, int rc) {
  Napi::Object r = Napi::Object::New(env);
  r.Set("ok", false);
  r.Set("errno", ErrnoName(rc));
  return r;
}

Napi::Object Ok(Napi::Env env, Napi::Object v) {
  Napi::Object r = Napi::Object::New(env);
  r.Set("ok", true);
  r.Set("value", v);
  return r;
}

Napi::Buffer<uint8_t> BufArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsBuffer()) ThrowErrno(info.Env(), EINVAL, "Buffer expected");
  return info[0].As<Napi::Buffer<uint8_t>>();
}

Napi::Value EncodeReq(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  HandshakeReq r;
  r.version = static_cast<uint16_t>(U32(o, "version"));
  r.conn_index = static_cast<uint16_t>(U32(o, "connIndex"));
  r.conn_count = static_cast<uint16_t>(U32(o, "connCount"));
  r.queue_depth = U32(o, "queueDepth");
  r.max_io_size = U32(o, "maxIoSize");
  r.incarnation = U32(o, "incarnation");
  memcpy(r.session_uuid, o.Get("sessionUuid").As<Napi::Buffer<uint8_t>>().Data(), 16);
  memcpy(r.path_uuid, o.Get("pathUuid").As<Napi::Buffer<uint8_t>>().Data(), 16);
  r.sessname = o.Get("sessname").As<Napi::String>().Utf8Value();
  if (r.sessname.size() > kMaxSessnameLen) ThrowErrno(info.Env(), EINVAL, "sessname too long");
  r.flags = o.Has("flags") ? U32(o, "flags") : 0;
  if (r.flags & kHandshakeFlagAuth) {
    Napi::Value n = o.Get("clientNonce");
    if (!n.IsBuffer() || n.As<Napi::Buffer<uint8_t>>().Length() != kAuthNonceLen)
      ThrowErrno(info.Env(), EINVAL, "the auth flag needs a 32-byte clientNonce");
    memcpy(r.client_nonce, n.As<Napi::Buffer<uint8_t>>().Data(), kAuthNonceLen);
  }
  uint8_t buf[kHandshakeReqSize + kMaxSessnameLen + kAuthNonceLen];
  size_t n = EncodeHandshakeReq(r, buf);
  return Napi::Buffer<uint8_t>::Copy(info.Env(), buf, n);
}

Napi::Value DecodeReq(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto b = BufArg(info);
  if (b.Length() < kHandshakeReqSize) return Err(env, -EINVAL);
  HandshakeReq r;
  uint16_t name_len = 0;
  int rc = DecodeHandshakeReqFixed(b.Data(), &r, &name_len);
  if (rc) return Err(env, rc);
  if (b.Length() != kHandshakeReqSize + HandshakeReqTailLen(r, name_len)) return Err(env, -EINVAL);
  rc = DecodeHandshakeReqTail(b.Data() + kHandshakeReqSize, name_len, &r);
  if (rc) return Err(env, rc);
  Napi::Object v = Napi::Object::New(env);
  v.Set("version", r.version);
  v.Set("connIndex", r.conn_index);
  v.Set("connCount", r.conn_count);
  v.Set("queueDepth", r.queue_depth);
  v.Set("maxIoSize", r.max_io_size);
  v.Set("incarnation", r.incarnation);
  v.Set("sessionUuid", Napi::Buffer<uint8_t>::Copy(env, r.session_uuid, 16));
  v.Set("pathUuid", Napi::Buffer<uint8_t>::Copy(env, r.path_uuid, 16));
  v.Set("flags", r.flags);
  v.Set("sessname", r.sessname);
  if (r.flags & kHandshakeFlagAuth) v.Set("clientNonce", Napi::Buffer<uint8_t>::Copy(env, r.client_nonce, kAuthNonceLen));
  return Ok(env, v);
}

// A Buffer field of exactly n bytes.
const uint8_t* Bytes(const Napi::Object& o, const char* k, size_t n) {
  Napi::Value v = o.Get(k);
  if (!v.IsBuffer() || v.As<Napi::Buffer<uint8_t>>().Length() != n)
    ThrowErrno(o.Env(), EINVAL, std::string(k) + ": a Buffer of " + std::to_string(n) + " bytes");
  return v.As<Napi::Buffer<uint8_t>>().Data();
}

Napi::Value EncodeChallenge(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  AuthChallenge c;
  memcpy(c.server_nonce, Bytes(o, "serverNonce", kAuthNonceLen), kAuthNonceLen);
  memcpy(c.server_proof, Bytes(o, "serverProof", kAuthProofLen), kAuthProofLen);
  uint8_t buf[kAuthChallengeSize];
  EncodeAuthChallenge(c, buf);
  return Napi::Buffer<uint8_t>::Copy(info.Env(), buf, sizeof(buf));
}

Napi::Value DecodeChallenge(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto b = BufArg(info);
  if (b.Length() != kAuthChallengeSize) return Err(env, -EINVAL);
  AuthChallenge c;
  if (int rc = DecodeAuthChallenge(b.Data(), &c)) return Err(env, rc);
  Napi::Object v = Napi::Object::New(env);
  v.Set("serverNonce", Napi::Buffer<uint8_t>::Copy(env, c.server_nonce, kAuthNonceLen));
  v.Set("serverProof", Napi::Buffer<uint8_t>::Copy(env, c.server_proof, kAuthProofLen));
  return Ok(env, v);
}

Napi::Value EncodeProof(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  AuthProof p;
  memcpy(p.client_proof, Bytes(o, "clientProof", kAuthProofLen), kAuthProofLen);
  uint8_t buf[kAuthProofSize];
  EncodeAuthProof(p, buf);
  return Napi::Buffer<uint8_t>::Copy(info.Env(), buf, sizeof(buf));
}

Napi::Value DecodeProof(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto b = BufArg(info);
  if (b.Length() != kAuthProofSize) return Err(env, -EINVAL);
  AuthProof p;
  if (int rc = DecodeAuthProof(b.Data(), &p)) return Err(env, rc);
  Napi::Object v = Napi::Object::New(env);
  v.Set("clientProof", Napi::Buffer<uint8_t>::Copy(env, p.client_proof, kAuthProofLen));
  return Ok(env, v);
}

// computeProof(secret, role, clientNonce, serverNonce, transcript): core::ComputeProof, for the
// vectors' authProofCompute
Napi::Value ComputeProofJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsBuffer() || !info[1].IsString() || !info[2].IsBuffer() || !info[3].IsBuffer() ||
      !info[4].IsBuffer())
    ThrowErrno(env, EINVAL, "computeProof(secret, role, clientNonce, serverNonce, transcript)");
  auto secret = info[0].As<Napi::Buffer<uint8_t>>();
  std::string role = info[1].As<Napi::String>();
  auto cn = info[2].As<Napi::Buffer<uint8_t>>(), sn = info[3].As<Napi::Buffer<uint8_t>>();
  auto tr = info[4].As<Napi::Buffer<uint8_t>>();
  if (cn.Length() != kAuthNonceLen || sn.Length() != kAuthNonceLen || (role != "server" && role != "client"))
    ThrowErrno(env, EINVAL, "computeProof: 32-byte nonces, role server or client");
  uint8_t out[kAuthProofLen];
  if (!core::ComputeProof(std::string(reinterpret_cast<const char*>(secret.Data()), secret.Length()),
                          role == "server" ? core::AuthRole::kServer : core::AuthRole::kClient, cn.Data(), sn.Data(),
                          tr.Data(), tr.Length(), out))
    ThrowErrno(env, EINVAL, "computeProof failed");
  return Napi::Buffer<uint8_t>::Copy(env, out, sizeof(out));
}

Napi::Value EncodeRsp(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  HandshakeRsp r;
  r.version = static_cast<uint16_t>(U32(o, "version"));
  r.err = o.Get("errno").As<Napi::Number>().Int32Value();
  r.queue_depth = U32(o, "queueDepth");
  r.max_io_size = U32(o, "maxIoSize");
  uint8_t buf[kHandshakeRspSize];
  EncodeHandshakeRsp(r, buf);
  return Napi::Buffer<uint8_t>::Copy(info.Env(), buf, sizeof(buf));
}

Napi::Value DecodeRsp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto b = BufArg(info);
  if (b.Length() != kHandshakeRspSize) return Err(env, -EINVAL);
  HandshakeRsp r;
  int rc = DecodeHandshakeRsp(b.Data(), &r);
  if (rc) return Err(env, rc);
  Napi::Object v = Napi::Object::New(env);
  v.Set("version", r.version);
  v.Set("errno", r.err);
  v.Set("queueDepth", r.queue_depth);
  v.Set("maxIoSize", r.max_io_size);
  return Ok(env, v);
}

const char* KindName(FrameKind k) {
  switch (k) {
    case FrameKind::kReadReq: return "READ_REQ";
    case FrameKind::kWriteReq: return "WRITE_REQ";
    case FrameKind::kResponse: return "RESPONSE";
    case FrameKind::kHeartbeat: return "HEARTBEAT";
    case FrameKind::kHeartbeatAck: return "HEARTBEAT_ACK";
    case FrameKind::kFence: return "FENCE";
    case FrameKind::kFenceAck: return "FENCE_ACK";
  }
  return "?";
}

Napi::Value EncodeHdr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  std::string kind = o.Get("kind").As<Napi::String>().Utf8Value();
  FrameHeader h;
  bool found = false;
  for (int k = 1; k <= 7; k++)
    if (kind == KindName(static_cast<FrameKind>(k))) h.kind = static_cast<FrameKind>(k), found = true;
  if (!found) ThrowErrno(env, EINVAL, "unknown kind");
  h.usr_len = static_cast<uint16_t>(U32(o, "usrLen"));
  h.id = U32(o, "id");
  h.data_len = U32(o, "dataLen");
  h.err = o.Get("errno").As<Napi::Number>().Int32Value();
  bool lossless = false;
  h.cookie = o.Get("cookie").As<Napi::BigInt>().Uint64Value(&lossless);
  uint8_t buf[kFrameHeaderSize];
  EncodeFrameHeader(h, buf);
  return Napi::Buffer<uint8_t>::Copy(env, buf, sizeof(buf));
}

Napi::Value DecodeHdr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto b = BufArg(info);
  if (b.Length() != kFrameHeaderSize) return Err(env, -EINVAL);
  FrameHeader h;
  int rc = DecodeFrameHeader(b.Data(), &h);
  if (rc) return Err(env, rc);
  Napi::Object v = Napi::Object::New(env);
  v.Set("kind", KindName(h.kind));
  v.Set("usrLen", h.usr_len);
  v.Set("id", h.id);
  v.Set("dataLen", h.data_len);
  v.Set("errno", h.err);
  v.Set("cookie", Napi::BigInt::New(env, h.cookie));
  return Ok(env, v);
}

void Init(Napi::Env env, Napi::Object exports) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("encodeHandshakeReq", Napi::Function::New(env, EncodeReq));
  o.Set("decodeHandshakeReq", Napi::Function::New(env, DecodeReq));
  o.Set("encodeHandshakeRsp", Napi::Function::New(env, EncodeRsp));
  o.Set("decodeHandshakeRsp", Napi::Function::New(env, DecodeRsp));
  o.Set("encodeFrameHeader", Napi::Function::New(env, EncodeHdr));
  o.Set("decodeFrameHeader", Napi::Function::New(env, DecodeHdr));
  o.Set("encodeAuthChallenge", Napi::Function::New(env, EncodeChallenge));
  o.Set("decodeAuthChallenge", Napi::Function::New(env, DecodeChallenge));
  o.Set("encodeAuthProof", Napi::Function::New(env, EncodeProof));
  o.Set("decodeAuthProof", Napi::Function::New(env, DecodeProof));
  o.Set("computeProof", Napi::Function::New(env, ComputeProofJs));
  exports.Set("tcpFrames", o);
}

}  // namespace
}  // namespace ibnbd::transport::tcp

void ibnbd::testing::InitTcpFrames(Napi::Env env, Napi::Object exports) { ibnbd::transport::tcp::Init(env, exports); }
