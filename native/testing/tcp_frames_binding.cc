// tcpFrames: the C++ frame codec exposed to JS so tests/native/tcp-frames.test.ts can hold it to the
// same golden vectors as tests/support/tcp-frames.ts (test-only; the data path never uses it).
#include <cerrno>
#include <cstring>

#include "common/errors.h"
#include "testing/testing.h"
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
  uint8_t buf[kHandshakeReqSize + kMaxSessnameLen];
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
  if (b.Length() != kHandshakeReqSize + name_len) return Err(env, -EINVAL);
  r.sessname.assign(reinterpret_cast<const char*>(b.Data() + kHandshakeReqSize), name_len);
  rc = ValidateSessname(r.sessname);
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
  v.Set("sessname", r.sessname);
  return Ok(env, v);
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
  exports.Set("tcpFrames", o);
}

}  // namespace
}  // namespace ibnbd::transport::tcp

void ibnbd::testing::InitTcpFrames(Napi::Env env, Napi::Object exports) { ibnbd::transport::tcp::Init(env, exports); }
