// JS view of the C++ IBNBD codec (ibnbd_proto.h), so tests hold it to the same golden vectors
// as src/proto/ibnbd.ts. Not on any data path: messages cross as plain objects shaped like the
// TS Message union (tests/support/proto-native.ts).
//   proto.decode(buf)            → message object, or { error: 'EPROTO', field: 'hdr.type' }
//   proto.encode(msg, version?)  → Buffer; throws an Error with .code = errno name
//   proto.decodeAs(buf, type)    → decode() through the typed decoder (DecodeIo, ...) of `type`
//   proto.peek(buf)              → type name, or { error, field } (header-only check)
//   proto.frameSize(buf, ver)    → bytes of the message whose header starts buf, or { error, field }
//   proto.sizes                  → the C++ size constants
#include <napi.h>

#include <cstring>
#include <string>

#include "common/errors.h"
#include "proto/ibnbd_proto.h"
#include "testing/testing.h"

namespace ibnbd::proto {
namespace {

const char* const kAccessModeNames[] = {"ro", "rw", "migration"};
const char* const kIoModeNames[] = {"fileio", "blockio"};

Napi::Object ErrorResult(Napi::Env env, int err, const char* field) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("error", ErrnoName(err));
  o.Set("field", field != nullptr ? field : "?");
  return o;
}

Napi::Value U64(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

Napi::Object MsgToJs(Napi::Env env, const Msg& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", MsgTypeName(m.type));
  switch (m.type) {
    case MsgType::kSessInfo:
    case MsgType::kSessInfoRsp:
      o.Set("ver", m.sess_info.ver);
      break;
    case MsgType::kOpen:
      o.Set("accessMode", kAccessModeNames[uint8_t(m.open.access_mode)]);
      o.Set("ioMode", kIoModeNames[uint8_t(m.open.io_mode)]);
      o.Set("devName", Napi::String::New(env, m.open.dev_name));
      break;
    case MsgType::kOpenRsp: {
      const OpenRspMsg& r = m.open_rsp;
      o.Set("deviceId", r.device_id);
      o.Set("nsectors", U64(env, r.nsectors));
      o.Set("maxHwSectors", r.max_hw_sectors);
      o.Set("maxWriteZeroesSectors", r.max_write_zeroes_sectors);
      o.Set("maxDiscardSectors", r.max_discard_sectors);
      o.Set("discardGranularity", r.discard_granularity);
      o.Set("discardAlignment", r.discard_alignment);
      o.Set("physicalBlockSize", r.physical_block_size);
      o.Set("logicalBlockSize", r.logical_block_size);
      o.Set("maxSegments", r.max_segments);
      o.Set("secureDiscard", r.secure_discard);
      o.Set("rotational", r.rotational != 0);
      Napi::Object cp = Napi::Object::New(env);
      cp.Set("writeback", (r.cache_policy & kCacheWriteback) != 0);
      cp.Set("fua", (r.cache_policy & kCacheFua) != 0);
      o.Set("cachePolicy", cp);
      break;
    }
    case MsgType::kIo:
      o.Set("deviceId", m.io.device_id);
      o.Set("sector", U64(env, m.io.sector));
      o.Set("op", IoOpName(m.io.op));
      o.Set("sync", (m.io.flags & kFlagSync) != 0);
      o.Set("fua", (m.io.flags & kFlagFua) != 0);
      o.Set("biSize", m.io.bi_size);
      o.Set("prio", m.io.prio);
      break;
    case MsgType::kClose:
      o.Set("deviceId", m.close.device_id);
      break;
  }
  return o;
}

// ---- JS object → Msg (the checks a JS caller's mistakes need; the codec does the rest) -------

[[noreturn]] void Invalid(Napi::Env env, const std::string& field, const char* what) {
  ThrowErrno(env, EINVAL, field + ": " + what);
}

uint64_t Uint(Napi::Env env, Napi::Object o, const char* key, uint64_t max, const char* field) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) Invalid(env, field, "not a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= double(max)) || d != double(uint64_t(d))) Invalid(env, field, "out of range");
  return uint64_t(d);
}

uint64_t BigU64(Napi::Env env, Napi::Object o, const char* key, const char* field) {
  Napi::Value v = o.Get(key);
  if (!v.IsBigInt()) Invalid(env, field, "not a bigint");
  bool lossless = false;
  uint64_t r = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) Invalid(env, field, "not a u64");
  return r;
}

bool Bool(Napi::Env env, Napi::Object o, const char* key, const char* field) {
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) Invalid(env, field, "not a boolean");
  return v.As<Napi::Boolean>().Value();
}

template <size_t N>
int Index(Napi::Env env, Napi::Object o, const char* key, const char* const (&names)[N]) {
  Napi::Value v = o.Get(key);
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    for (size_t i = 0; i < N; i++)
      if (s == names[i]) return int(i);
  }
  return -1;
}

const char* const kTypeNames[] = {"SESS_INFO", "SESS_INFO_RSP", "OPEN", "OPEN_RSP", "IO", "CLOSE"};
const char* const kOpNames[] = {"READ", "WRITE", "FLUSH", "DISCARD", "SECURE_ERASE", "WRITE_ZEROES"};

Msg MsgFromJs(Napi::Env env, Napi::Object o) {
  Msg m{};
  int type = Index(env, o, "type", kTypeNames);
  if (type < 0) ThrowErrno(env, EPROTO, "hdr.type: unknown message type");
  m.type = MsgType(type);
  switch (m.type) {
    case MsgType::kSessInfo:
    case MsgType::kSessInfoRsp:
      m.sess_info.ver = uint8_t(Uint(env, o, "ver", 0xff, "ver"));
      break;
    case MsgType::kOpen: {
      int access = Index(env, o, "accessMode", kAccessModeNames);
      int io_mode = Index(env, o, "ioMode", kIoModeNames);
      if (access < 0) Invalid(env, "access_mode", "unknown access mode");
      if (io_mode < 0) Invalid(env, "io_mode", "unknown io mode");
      m.open.access_mode = AccessMode(access);
      m.open.io_mode = IoMode(io_mode);
      Napi::Value name = o.Get("devName");
      if (!name.IsString()) Invalid(env, "dev_name", "not a string");
      std::string s = name.As<Napi::String>().Utf8Value();
      if (int err = SetDevName(&m.open, s.data(), s.size())) ThrowErrno(env, err, "dev_name: cannot be sent");
      break;
    }
    case MsgType::kOpenRsp: {
      OpenRspMsg& r = m.open_rsp;
      r.device_id = uint32_t(Uint(env, o, "deviceId", 0xffffffff, "device_id"));
      r.nsectors = BigU64(env, o, "nsectors", "nsectors");
      r.max_hw_sectors = uint32_t(Uint(env, o, "maxHwSectors", 0xffffffff, "max_hw_sectors"));
      r.max_write_zeroes_sectors =
          uint32_t(Uint(env, o, "maxWriteZeroesSectors", 0xffffffff, "max_write_zeroes_sectors"));
      r.max_discard_sectors = uint32_t(Uint(env, o, "maxDiscardSectors", 0xffffffff, "max_discard_sectors"));
      r.discard_granularity = uint32_t(Uint(env, o, "discardGranularity", 0xffffffff, "discard_granularity"));
      r.discard_alignment = uint32_t(Uint(env, o, "discardAlignment", 0xffffffff, "discard_alignment"));
      r.physical_block_size = uint16_t(Uint(env, o, "physicalBlockSize", 0xffff, "physical_block_size"));
      r.logical_block_size = uint16_t(Uint(env, o, "logicalBlockSize", 0xffff, "logical_block_size"));
      r.max_segments = uint16_t(Uint(env, o, "maxSegments", 0xffff, "max_segments"));
      r.secure_discard = uint16_t(Uint(env, o, "secureDiscard", 0xffff, "secure_discard"));
      r.rotational = Bool(env, o, "rotational", "rotational") ? 1 : 0;
      Napi::Value cp = o.Get("cachePolicy");
      if (!cp.IsObject()) Invalid(env, "cache_policy", "not an object");
      r.cache_policy = uint8_t((Bool(env, cp.As<Napi::Object>(), "fua", "cache_policy") ? kCacheFua : 0) |
                               (Bool(env, cp.As<Napi::Object>(), "writeback", "cache_policy") ? kCacheWriteback : 0));
      break;
    }
    case MsgType::kIo: {
      m.io.device_id = uint32_t(Uint(env, o, "deviceId", 0xffffffff, "device_id"));
      m.io.sector = BigU64(env, o, "sector", "sector");
      int op = Index(env, o, "op", kOpNames);
      if (op < 0) ThrowErrno(env, EOPNOTSUPP, "rw.op: unknown IO op");
      m.io.op = IoOp(op);
      m.io.flags = (Bool(env, o, "sync", "rw.flags") ? kFlagSync : 0) | (Bool(env, o, "fua", "rw.flags") ? kFlagFua : 0);
      m.io.bi_size = uint32_t(Uint(env, o, "biSize", 0xffffffff, "bi_size"));
      m.io.prio = uint16_t(Uint(env, o, "prio", 0xffff, "prio"));
      break;
    }
    case MsgType::kClose:
      m.close.device_id = uint32_t(Uint(env, o, "deviceId", 0xffffffff, "device_id"));
      break;
  }
  return m;
}

// ---- exports --------------------------------------------------------------------------------

Napi::Value JsDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) Invalid(env, "buf", "expected a Buffer");
  auto buf = info[0].As<Napi::Uint8Array>();
  Msg m;
  const char* field = nullptr;
  if (int err = Decode(buf.Data(), buf.ByteLength(), &m, &field)) return ErrorResult(env, err, field);
  return MsgToJs(env, m);
}

// The typed decoders are what the data path calls (the server: DecodeIo on each request).
int DecodeAs(MsgType type, const uint8_t* buf, size_t len, Msg* m, const char** field) {
  m->type = type;
  switch (type) {
    case MsgType::kSessInfo: return DecodeSessInfo(buf, len, false, &m->sess_info, field);
    case MsgType::kSessInfoRsp: return DecodeSessInfo(buf, len, true, &m->sess_info, field);
    case MsgType::kOpen: return DecodeOpen(buf, len, &m->open, field);
    case MsgType::kOpenRsp: return DecodeOpenRsp(buf, len, &m->open_rsp, field);
    case MsgType::kIo: return DecodeIo(buf, len, &m->io, field);
    case MsgType::kClose: return DecodeClose(buf, len, &m->close, field);
  }
  return -EPROTO;
}

Napi::Value JsDecodeAs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsString())
    Invalid(env, "args", "expected (Buffer, type name)");
  auto buf = info[0].As<Napi::Uint8Array>();
  Napi::Object wrap = Napi::Object::New(env);
  wrap.Set("type", info[1]);
  int type = Index(env, wrap, "type", kTypeNames);
  if (type < 0) Invalid(env, "type", "unknown message type name");
  Msg m;
  const char* field = nullptr;
  if (int err = DecodeAs(MsgType(type), buf.Data(), buf.ByteLength(), &m, &field)) return ErrorResult(env, err, field);
  return MsgToJs(env, m);
}

Napi::Value JsPeek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) Invalid(env, "buf", "expected a Buffer");
  auto buf = info[0].As<Napi::Uint8Array>();
  MsgType type;
  const char* field = nullptr;
  if (int err = PeekHdr(buf.Data(), buf.ByteLength(), &type, &field)) return ErrorResult(env, err, field);
  return Napi::String::New(env, MsgTypeName(type));
}

Napi::Value JsEncode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) Invalid(env, "msg", "expected an object");
  uint8_t ver = kProtoVerMajor;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsNumber()) Invalid(env, "version", "not a number");
    ver = uint8_t(info[1].As<Napi::Number>().Uint32Value());
  }
  Msg m = MsgFromJs(env, info[0].As<Napi::Object>());
  uint8_t out[kMaxMsgSize];
  if (int err = Encode(m, out, sizeof(out))) ThrowErrno(env, err, std::string(MsgTypeName(m.type)) + ": cannot be encoded");
  size_t size = MsgSize(m.type);
  if (m.type == MsgType::kIo) {
    // a v1 peer gets the first 24 bytes; refusing a prio it would never see keeps both codecs alike
    if (ver < 2 && m.io.prio != 0) ThrowErrno(env, EINVAL, "prio: protocol version 1 has no prio");
    size = IoWireSize(ver);
  }
  return Napi::Buffer<uint8_t>::Copy(env, out, size);
}

Napi::Value JsFrameSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber())
    Invalid(env, "args", "expected (Buffer, version)");
  auto buf = info[0].As<Napi::Uint8Array>();
  size_t size = 0;
  const char* field = nullptr;
  uint8_t ver = uint8_t(info[1].As<Napi::Number>().Uint32Value());
  if (int err = FrameSize(buf.Data(), buf.ByteLength(), ver, &size, &field)) return ErrorResult(env, err, field);
  return Napi::Number::New(env, double(size));
}

void Init(Napi::Env env, Napi::Object exports) {
  Napi::Object proto = Napi::Object::New(env);
  proto.Set("decode", Napi::Function::New(env, JsDecode, "decode"));
  proto.Set("encode", Napi::Function::New(env, JsEncode, "encode"));
  proto.Set("decodeAs", Napi::Function::New(env, JsDecodeAs, "decodeAs"));
  proto.Set("frameSize", Napi::Function::New(env, JsFrameSize, "frameSize"));
  proto.Set("peek", Napi::Function::New(env, JsPeek, "peek"));
  Napi::Object sizes = Napi::Object::New(env);
  sizes.Set("hdr", kHdrSize);
  sizes.Set("sessInfo", kSessInfoSize);
  sizes.Set("open", kOpenSize);
  sizes.Set("openRsp", kOpenRspSize);
  sizes.Set("close", kCloseSize);
  sizes.Set("io", kIoSize);
  sizes.Set("ioV1", kIoV1Size);
  sizes.Set("nameMax", kNameMax);
  sizes.Set("protoVerMajor", kProtoVerMajor);
  proto.Set("sizes", sizes);
  exports.Set("proto", proto);
}

}  // namespace
}  // namespace ibnbd::proto

void ibnbd::testing::InitProtoCodec(Napi::Env env, Napi::Object exports) { ibnbd::proto::Init(env, exports); }
