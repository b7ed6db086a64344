#include "transport/options.h"

#include <cerrno>

#include "common/errors.h"

namespace ibnbd::transport {

Endpoint EndpointFromJs(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsObject()) ThrowErrno(env, EINVAL, std::string(what) + " must be {kind, addr, port}");
  Napi::Object o = v.As<Napi::Object>();
  Endpoint ep;
  ep.kind = StringField(o, "kind", "ip");
  ep.addr = StringField(o, "addr", "");
  ep.port = static_cast<uint16_t>(U32Field(o, "port", kDefaultPort, 0, 65535));
  if (ep.kind != "ip" && ep.kind != "gid") ThrowErrno(env, EINVAL, std::string(what) + ".kind");
  if (ep.addr.empty()) ThrowErrno(env, EINVAL, std::string(what) + ".addr");
  return ep;
}

uint32_t U32Field(Napi::Object o, const char* key, uint32_t dflt, uint32_t min, uint32_t max) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  if (!v.IsNumber()) ThrowErrno(o.Env(), EINVAL, std::string(key) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || d != static_cast<double>(static_cast<uint64_t>(d)))
    ThrowErrno(o.Env(), EINVAL,
               std::string(key) + " must be an integer in " + std::to_string(min) + ".." +
                   std::to_string(max));
  return static_cast<uint32_t>(d);
}

std::string StringField(Napi::Object o, const char* key, const std::string& dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  if (!v.IsString()) ThrowErrno(o.Env(), EINVAL, std::string(key) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

const char* PathStateName(PathState s) {
  switch (s) {
    case PathState::kConnecting: return "connecting";
    case PathState::kConnected: return "connected";
    case PathState::kReconnecting: return "reconnecting";
    case PathState::kClosed: return "closed";
  }
  return "closed";
}

Napi::Object PathInfoToJs(Napi::Env env, const PathInfo& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("src", p.src);
  o.Set("dst", p.dst);
  o.Set("state", PathStateName(p.state));
  o.Set("inflight", static_cast<double>(p.inflight));
  o.Set("reconnects", p.reconnects);
  o.Set("hbRttNs", static_cast<double>(p.hb_rtt_ns));
  o.Set("requests", static_cast<double>(p.requests));
  o.Set("failovers", static_cast<double>(p.failovers));
  return o;
}

}  // namespace ibnbd::transport
