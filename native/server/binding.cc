// NativeServer: the export server's transport + IO path, driven from JS. IO messages are
// executed natively (io_path.cc); everything else (SESS_INFO, OPEN, CLOSE, unknown types) and
// session up/down come to JS as events on onEvent, and JS answers requests with respond().
// JS fills each session's device table (attachDevice/detachDevice).
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/io_metrics_js.h"
#include "common/log.h"
#include "common/module.h"
#include "proto/ibnbd_proto.h"
#include "server/device.h"
#include "server/io_path.h"
#include "transport/core/allow.h"
#include "transport/core/auth.h"
#include "transport/binding.h"
#include "transport/transport.h"

namespace ibnbd::server {
namespace {

using transport::ServerIo;
using transport::ServerSession;

struct Event {
  std::string type;
  std::string session_id;
  std::string sessname, uuid;
  std::vector<transport::PathInfo> paths;
  uint64_t request_id = 0;
  std::string dir;
  std::vector<uint8_t> usr;
  uint32_t data_len = 0;
};

// The JS event function as seen from IO threads. stop() releases the thread-safe function once
// the transport has stopped; whatever still reports after that (a device drained late, a
// session that went down after a timed-out stop) is dropped here instead of calling a
// finalized function, which aborts the process inside libuv.
class EventSink {
 public:
  explicit EventSink(Napi::ThreadSafeFunction tsfn) : tsfn_(tsfn) {}
  template <typename T, typename Callback>
  bool Call(T* data, Callback cb) {
    std::lock_guard<std::mutex> lk(mu_);
    return !closed_ && tsfn_.NonBlockingCall(data, cb) == napi_ok;
  }
  // On the JS thread, right before the release: no call gets through afterwards.
  void Close() {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
  }

 private:
  std::mutex mu_;
  bool closed_ = false;
  Napi::ThreadSafeFunction tsfn_;
};

class Handler : public transport::ServerHandler {
 public:
  explicit Handler(std::shared_ptr<EventSink> sink) : sink_(std::move(sink)) {}

  void OnSessionUp(ServerSession* s) override {
    auto st = std::make_shared<SessionDevices>();
    st->session_id = s->id();
    {
      std::lock_guard<std::mutex> lk(mu_);
      sessions_[s->id()] = {s, st, MonotonicNs()};
    }
    s->upper = st.get();
    auto* ev = new Event{"session-up", std::to_string(s->id()), s->sessname(), s->uuid(), s->Paths()};
    Emit(ev);
  }

  void OnSessionDown(ServerSession* s) override {
    std::shared_ptr<SessionDevices> st;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = sessions_.find(s->id());
      if (it != sessions_.end()) {
        st = it->second.devices;
        sessions_.erase(it);
      }
    }
    if (st) {  // detach natively: descriptors close when each device's in-flight IO drains
      std::map<uint32_t, std::shared_ptr<Device>> devs;
      {
        std::lock_guard<std::mutex> lk(st->mu);
        devs.swap(st->devices);
      }
      for (auto& [id, d] : devs) d->Detach([] {});
    }
    auto* ev = new Event();
    ev->type = "session-down";
    ev->session_id = std::to_string(s->id());
    Emit(ev);
  }

  void OnRequest(ServerIo* io) override {
    proto::MsgType type;
    if (proto::PeekHdr(io->usr, io->usr_len, &type) == 0 && type == proto::MsgType::kIo)
      return ExecuteIo(io, static_cast<SessionDevices*>(io->session->upper));
    uint64_t id;
    {
      std::lock_guard<std::mutex> lk(mu_);
      id = next_request_++;
      pending_[id] = io;
    }
    auto* ev = new Event();
    ev->type = "request";
    ev->session_id = std::to_string(io->session->id());
    ev->request_id = id;
    ev->dir = io->dir == transport::Dir::kRead ? "read" : "write";
    ev->usr.assign(io->usr, io->usr + io->usr_len);
    ev->data_len = io->data_len;
    Emit(ev);
  }

  void Emit(Event* ev) {
    bool sent = sink_->Call(ev, [](Napi::Env env, Napi::Function cb, Event* e) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("type", e->type);
      o.Set("sessionId", e->session_id);
      if (e->type == "session-up") {
        o.Set("sessname", e->sessname);
        o.Set("uuid", e->uuid);
        Napi::Array a = Napi::Array::New(env);
        uint32_t i = 0;
        for (auto& p : e->paths) a.Set(i++, transport::PathInfoToJs(env, p));
        o.Set("paths", a);
      } else if (e->type == "request") {
        o.Set("requestId", static_cast<double>(e->request_id));
        o.Set("dir", e->dir);
        o.Set("usr", Napi::Buffer<uint8_t>::Copy(env, e->usr.data(), e->usr.size()));
        o.Set("dataLen", e->data_len);
      }
      delete e;
      try {
        cb.Call({o});
      } catch (const Napi::Error& err) {
        LogMsg(LogLevel::kError, {"server"}, "NativeServer onEvent threw: %s", err.Message().c_str());
      }
    });
    if (!sent) delete ev;
  }

  ServerIo* TakePending(uint64_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return nullptr;
    ServerIo* io = it->second;
    pending_.erase(it);
    return io;
  }

  struct Sess {
    ServerSession* s;
    std::shared_ptr<SessionDevices> devices;
    uint64_t up_since_ns;  // MonotonicNs at OnSessionUp: the metrics' time in state
  };
  std::mutex mu_;
  std::map<uint64_t, Sess> sessions_;
  std::map<uint64_t, ServerIo*> pending_;
  uint64_t next_request_ = 1;
  std::shared_ptr<EventSink> sink_;
};

// The bounds of transport.h's Limits from a JS object (checked in src/server/options.ts); the
// fields it does not give keep the values in `v`.
transport::Server::Options::LimitValues LimitsFromJs(Napi::Object o, transport::Server::Options::LimitValues v) {
  v.max_sessions = transport::U32Field(o, "maxSessions", v.max_sessions, 1, 1u << 20);
  v.max_conns_per_session = transport::U32Field(o, "maxConnsPerSession", v.max_conns_per_session, 2, 1u << 20);
  v.max_pending = transport::U32Field(o, "maxPendingHandshakes", v.max_pending, 1, 1u << 20);
  v.handshake_timeout_ms = transport::U32Field(o, "handshakeTimeoutMs", v.handshake_timeout_ms, 100, 600000);
  if (o.Get("maxBufferBytes").IsNumber())
    v.max_buffer_bytes = static_cast<uint64_t>(o.Get("maxBufferBytes").As<Napi::Number>().Int64Value());
  return v;
}

class NativeServer : public Napi::ObjectWrap<NativeServer> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    exports.Set("NativeServer",
                DefineClass(env, "NativeServer",
                            {InstanceMethod("start", &NativeServer::Start),
                             InstanceMethod("respond", &NativeServer::Respond),
                             InstanceMethod("attachDevice", &NativeServer::Attach),
                             InstanceMethod("detachDevice", &NativeServer::Detach),
                             InstanceMethod("closeSession", &NativeServer::CloseSession),
                             InstanceMethod("stats", &NativeServer::Stats),
                             InstanceMethod("setAuthKeys", &NativeServer::SetAuthKeys),
                             InstanceMethod("setLimits", &NativeServer::SetLimits),
                             InstanceMethod("resizeDevice", &NativeServer::Resize),
                             InstanceMethod("stop", &NativeServer::Stop)}));
  }

  NativeServer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeServer>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
      ThrowErrno(env, EINVAL, "new NativeServer(options, onEvent)");
    Napi::Object o = info[0].As<Napi::Object>();
    std::string transport = transport::StringField(o, "transport", "tcp");
    transport::Server::Options opt;
    Napi::Value lv = o.Get("listen");
    if (lv.IsArray()) {
      Napi::Array a = lv.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++)
        opt.listen.push_back(transport::EndpointFromJs(env, a.Get(i), "listen[i]"));
    }
    opt.queue_depth = transport::U32Field(o, "queueDepth", transport::kDefaultQueueDepth, 1, 65535);
    opt.max_io_size = transport::U32Field(o, "maxIoSize", transport::kDefaultMaxIoSize, 4096, 16 << 20);
    opt.heartbeat_interval_ms =
        transport::U32Field(o, "heartbeatMs", transport::kHeartbeatIntervalMs, 1, 3600000);
    opt.heartbeat_missed_max =
        transport::U32Field(o, "heartbeatMissedMax", transport::kHeartbeatMissedMax, 0, 1000);
    opt.auth = auth_;
    // the bounds against floods (transport.h, Limits), checked in JS (src/server/options.ts)
    limits_->Set(LimitsFromJs(o, limits_->Get()));
    opt.limits = limits_;
    Napi::Value al = o.Get("allow");  // CIDR strings, checked in JS (src/server/options.ts)
    if (al.IsArray()) {
      auto allow = std::make_shared<transport::core::AllowList>();
      Napi::Array a = al.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) {
        std::string cidr = a.Get(i).ToString();
        if (!allow->Add(cidr)) ThrowErrno(env, EINVAL, "allow: '" + cidr + "' is not ADDR or ADDR/PREFIX");
      }
      opt.allow = std::move(allow);
    }
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "ibnbd-server", 0, 1);
    tsfn_.Unref(env);
    sink_ = std::make_shared<EventSink>(tsfn_);
    handler_ = std::make_unique<Handler>(sink_);
    int err = 0;
    server_ = transport::Server::Create(transport, std::move(opt), handler_.get(), &err);
    if (!server_) {
      sink_->Close();
      tsfn_.Release();
      released_ = true;
      const std::string why = transport::LastCreateError();
      ThrowErrno(env, err, "cannot create a " + transport + " server" + (why.empty() ? "" : ": " + why));
    }
  }

  // No tsfn_.Release() here: at environment teardown Node closes thread-safe functions itself
  // and a release from a finalizer would touch a closed one. stop() releases it.
  ~NativeServer() override {
    if (server_) server_->Stop();
  }

 private:
  void CheckRunning(Napi::Env env) {
    if (!started_ || stopped_) ThrowErrno(env, ESHUTDOWN, "server not running");
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (started_ || stopped_) ThrowErrno(env, EALREADY, "server already started");
    int rc = PrepareIoRings();
    if (rc) ThrowErrno(env, rc, "cannot create the IO threads' io_uring rings");
    rc = server_->Start();
    if (rc) ThrowErrno(env, rc, "cannot listen");
    started_ = true;
    tsfn_.Ref(env);  // a listening server keeps the process alive, like net.Server
    Napi::Array a = Napi::Array::New(env);
    uint32_t i = 0;
    for (auto& ep : server_->Bound()) {
      Napi::Object e = Napi::Object::New(env);
      e.Set("kind", ep.kind);
      e.Set("addr", ep.addr);
      e.Set("port", ep.port);
      a.Set(i++, e);
    }
    return a;
  }

  Napi::Value Respond(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
      ThrowErrno(env, EINVAL, "respond(requestId, errno, data?)");
    uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue());
    int err = info[1].As<Napi::Number>().Int32Value();
    if (err > 0) err = -err;  // accept either sign
    if (err < -4095) ThrowErrno(env, EINVAL, "errno out of range");
    if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull() && !info[2].IsBuffer())
      ThrowErrno(env, EINVAL, "data must be a Buffer");
    ServerIo* io = handler_->TakePending(id);
    if (!io) ThrowErrno(env, ENOENT, "no pending request " + std::to_string(id));
    if (io->dir == transport::Dir::kRead && io->data_len > 0) {
      memset(io->data, 0, io->data_len);
      if (info.Length() > 2 && info[2].IsBuffer()) {
        auto b = info[2].As<Napi::Buffer<uint8_t>>();
        memcpy(io->data, b.Data(), std::min<size_t>(b.Length(), io->data_len));
      }
    }
    transport::Respond(io, err);
    return env.Undefined();
  }

  std::shared_ptr<SessionDevices> SessionOf(Napi::Env env, Napi::Value v) {
    if (!v.IsString() && !v.IsNumber()) ThrowErrno(env, EINVAL, "sessionId expected");
    uint64_t sid = v.IsString() ? strtoull(v.As<Napi::String>().Utf8Value().c_str(), nullptr, 10)
                                : static_cast<uint64_t>(v.As<Napi::Number>().DoubleValue());
    std::lock_guard<std::mutex> lk(handler_->mu_);
    auto it = handler_->sessions_.find(sid);
    if (it == handler_->sessions_.end()) ThrowErrno(env, ENOENT, "no such session");
    return it->second.devices;
  }

  static int DupFd(Napi::Env env, Napi::Object o, const char* key) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) return -2;
    if (!v.IsNumber()) ThrowErrno(env, EINVAL, std::string(key) + " must be a descriptor");
    int fd = v.As<Napi::Number>().Int32Value();
    if (fd < 0) return -1;
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (d < 0) ThrowErrno(env, errno, std::string("cannot dup ") + key);
    return d;
  }

  static bool BoolField(Napi::Object o, const char* key, bool dflt) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) return dflt;
    if (!v.IsBoolean()) ThrowErrno(o.Env(), EINVAL, std::string(key) + " must be a boolean");
    return v.As<Napi::Boolean>().Value();
  }

  // attachDevice(sessionId, deviceId, spec): spec is either {fd, fdDirect?, direct, ...} or
  // {readFd, writeFd, readDirect, writeDirect, ...} (fileio: cached reads, direct writes).
  Napi::Value Attach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckRunning(env);
    if (info.Length() < 3 || !info[1].IsNumber() || !info[2].IsObject())
      ThrowErrno(env, EINVAL, "attachDevice(sessionId, deviceId, spec)");
    auto st = SessionOf(env, info[0]);
    double idd = info[1].As<Napi::Number>().DoubleValue();
    if (!(idd >= 0 && idd <= 4294967295.0) || idd != static_cast<double>(static_cast<uint32_t>(idd)))
      ThrowErrno(env, EINVAL, "deviceId must be a u32");
    uint32_t id = static_cast<uint32_t>(idd);
    Napi::Object o = info[2].As<Napi::Object>();
    auto dev = std::make_shared<Device>();
    dev->id = id;
    dev->read_only = BoolField(o, "readOnly", true);
    dev->block_device = BoolField(o, "blockDevice", false);
    Napi::Value sz = o.Get("sizeBytes");
    if (!sz.IsNumber() || sz.As<Napi::Number>().DoubleValue() < 0)
      ThrowErrno(env, EINVAL, "sizeBytes must be a number");
    dev->size_bytes = static_cast<uint64_t>(sz.As<Napi::Number>().DoubleValue());
    dev->logical_block_size = transport::U32Field(o, "logicalBlockSize", 512, 512, 65536);
    if (dev->logical_block_size & (dev->logical_block_size - 1))
      ThrowErrno(env, EINVAL, "logicalBlockSize must be a power of two");
    if (!o.Get("readFd").IsUndefined()) {
      dev->read_fd = DupFd(env, o, "readFd");
      int w = DupFd(env, o, "writeFd");
      dev->write_fd = w >= 0 ? w : -1;
      dev->read_direct = BoolField(o, "readDirect", false);
      dev->write_direct = BoolField(o, "writeDirect", false);
    } else {
      bool direct = BoolField(o, "direct", false);
      int fd = DupFd(env, o, "fd");
      int fdd = DupFd(env, o, "fdDirect");
      if (fd < 0) ThrowErrno(env, EINVAL, "fd required");
      if (direct && fdd >= 0) {
        close(fd);
        fd = fdd;
      } else if (fdd >= 0) {
        close(fdd);
      }
      dev->read_fd = fd;
      dev->write_fd = dev->read_only ? -1 : fd;
      dev->read_direct = dev->write_direct = direct;
    }
    if (dev->read_fd < 0) ThrowErrno(env, EINVAL, "a read descriptor is required");
    if (dev->read_only && dev->write_fd >= 0) {
      close(dev->write_fd);
      dev->write_fd = -1;
    }
    if (!dev->read_only && dev->write_fd < 0) ThrowErrno(env, EINVAL, "writable mapping without a write descriptor");
    dev->memory_backed = !dev->block_device && IsMemoryBacked(dev->read_fd);
    std::lock_guard<std::mutex> lk(st->mu);
    if (st->devices.count(id)) ThrowErrno(env, EEXIST, "device id already attached");
    st->devices[id] = dev;
    return env.Undefined();
  }

  // resizeDevice(sessionId, deviceId, sizeBytes): the range checks follow a re-OPEN's geometry
  Napi::Value Resize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[1].IsNumber() || !info[2].IsNumber())
      ThrowErrno(env, EINVAL, "resizeDevice(sessionId, deviceId, sizeBytes)");
    auto dev = SessionOf(env, info[0])->Find(info[1].As<Napi::Number>().Uint32Value());
    if (!dev) ThrowErrno(env, ENOENT, "device id not attached");
    dev->size_bytes.store(static_cast<uint64_t>(info[2].As<Napi::Number>().DoubleValue()));
    return env.Undefined();
  }

  Napi::Value Detach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[1].IsNumber()) ThrowErrno(env, EINVAL, "detachDevice(sessionId, deviceId)");
    auto st = SessionOf(env, info[0]);
    uint32_t id = info[1].As<Napi::Number>().Uint32Value();
    std::shared_ptr<Device> dev;
    {
      std::lock_guard<std::mutex> lk(st->mu);
      auto it = st->devices.find(id);
      if (it == st->devices.end()) ThrowErrno(env, ENOENT, "device id not attached");
      dev = it->second;
      st->devices.erase(it);
    }
    auto deferred = std::make_shared<Napi::Promise::Deferred>(Napi::Promise::Deferred::New(env));
    Napi::Promise p = deferred->Promise();
    auto sink = sink_;
    tsfn_.Ref(env);  // until the drain is reported
    auto* pending = new std::shared_ptr<Napi::Promise::Deferred>(deferred);
    dev->Detach([sink, pending]() mutable {
      bool sent = sink->Call(pending, [](Napi::Env env, Napi::Function, std::shared_ptr<Napi::Promise::Deferred>* d) {
        (*d)->Resolve(env.Undefined());
        delete d;
      });
      if (!sent) delete pending;  // stopped meanwhile: the promise is never settled
    });
    dev.reset();
    if (!started_ || stopped_) tsfn_.Unref(env);
    return p;
  }

  // setLimits({ maxSessions, ... }): new bounds for a running server (SIGHUP), from the next
  // accept or handshake on; the fields not given keep their values.
  Napi::Value SetLimits(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) ThrowErrno(env, EINVAL, "setLimits(limits)");
    limits_->Set(LimitsFromJs(info[0].As<Napi::Object>(), limits_->Get()));
    return env.Undefined();
  }

  // setAuthKeys({ name: Buffer }, openOverRdma: string[], required): the keys file, validated in
  // JS (src/auth/keys-file.ts); replaces the last set whole, for handshakes that start after it.
  Napi::Value SetAuthKeys(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsArray() || !info[2].IsBoolean())
      ThrowErrno(env, EINVAL, "setAuthKeys(keys, openOverRdma, required)");
    transport::core::AuthKeys::Map keys;
    Napi::Object o = info[0].As<Napi::Object>();
    Napi::Array names = o.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); i++) {
      std::string name = names.Get(i).As<Napi::String>();
      Napi::Value v = o.Get(name);
      if (!v.IsBuffer()) ThrowErrno(env, EINVAL, "setAuthKeys: the secret of '" + name + "' is not a Buffer");
      auto b = v.As<Napi::Buffer<uint8_t>>();
      if (b.Length() < transport::core::kAuthMinSecret || b.Length() > transport::core::kAuthMaxSecret)
        ThrowErrno(env, EINVAL, "setAuthKeys: the secret of '" + name + "' has a bad length");
      keys[name].assign(reinterpret_cast<const char*>(b.Data()), b.Length());
    }
    std::set<std::string> open;
    Napi::Array a = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) open.insert(a.Get(i).As<Napi::String>());
    auth_->Replace(std::move(keys), std::move(open), info[2].As<Napi::Boolean>());
    return env.Undefined();
  }

  Napi::Value CloseSession(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto st = SessionOf(env, info[0]);
    // under the handler's lock: OnSessionDown (which ends the session object's life) waits
    std::lock_guard<std::mutex> lk(handler_->mu_);
    auto it = handler_->sessions_.find(st->session_id);
    if (it != handler_->sessions_.end()) it->second.s->Close();
    return env.Undefined();
  }

  // stats(true) adds each device's per-operation metrics (a /metrics scrape, src/metrics/). The
  // figures are copied under the locks (a device table's is also taken by every request that
  // looks its device up) and made into JS objects after they are released: however many devices
  // a scrape reports, IO waits only for the copy, never for the N-API calls.
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const bool with_io = info.Length() > 0 && info[0].IsBoolean() && info[0].As<Napi::Boolean>();
    struct DeviceCopy {
      uint32_t id;
      int64_t inflight;
      bool read_only;
      uint64_t size_bytes;
      IoSnapshot io;
    };
    struct SessionCopy {
      uint64_t id;
      std::string sessname, uuid;
      double up_seconds;
      std::vector<transport::PathInfo> paths;
      std::vector<DeviceCopy> devices;
    };
    std::vector<SessionCopy> copies;
    size_t pending;
    {
      std::lock_guard<std::mutex> lk(handler_->mu_);
      pending = handler_->pending_.size();
      for (auto& [sid, sess] : handler_->sessions_) {
        SessionCopy c{sid, sess.s->sessname(), sess.s->uuid(), double(MonotonicNs() - sess.up_since_ns) / 1e9, sess.s->Paths(), {}};
        std::lock_guard<std::mutex> dl(sess.devices->mu);
        for (auto& [id, d] : sess.devices->devices) {
          c.devices.push_back({id, d->inflight.load(), d->read_only, d->size_bytes.load(), {}});
          if (with_io) d->io.AddTo(&c.devices.back().io);
        }
        copies.push_back(std::move(c));
      }
    }
    Napi::Object out = Napi::Object::New(env);
    Napi::Array sessions = Napi::Array::New(env, copies.size());
    for (uint32_t i = 0; i < copies.size(); i++) {
      const SessionCopy& c = copies[i];
      Napi::Object so = Napi::Object::New(env);
      so.Set("sessionId", std::to_string(c.id));
      so.Set("sessname", c.sessname);
      so.Set("uuid", c.uuid);
      so.Set("upSeconds", c.up_seconds);
      Napi::Array pa = Napi::Array::New(env, c.paths.size());
      for (uint32_t j = 0; j < c.paths.size(); j++) pa.Set(j, transport::PathInfoToJs(env, c.paths[j]));
      so.Set("paths", pa);
      Napi::Array da = Napi::Array::New(env, c.devices.size());
      for (uint32_t j = 0; j < c.devices.size(); j++) {
        const DeviceCopy& d = c.devices[j];
        Napi::Object d0 = Napi::Object::New(env);
        d0.Set("deviceId", d.id);
        d0.Set("inflight", static_cast<double>(d.inflight));
        d0.Set("readOnly", d.read_only);
        d0.Set("sizeBytes", static_cast<double>(d.size_bytes));
        if (with_io) d0.Set("io", IoSnapshotToJs(env, d.io));
        da.Set(j, d0);
      }
      so.Set("devices", da);
      sessions.Set(i, so);
    }
    out.Set("sessions", sessions);
    out.Set("pendingRequests", static_cast<double>(pending));
    return out;
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto deferred = Napi::Promise::Deferred::New(env);
    if (stopped_ || !started_) {
      stopped_ = true;
      deferred.Resolve(env.Undefined());
      return deferred.Promise();
    }
    stopped_ = true;
    class StopWork : public Napi::AsyncWorker {
     public:
      StopWork(Napi::Env env, transport::Server* s, Napi::Promise::Deferred d, NativeServer* self)
          : Napi::AsyncWorker(env), s_(s), d_(d), self_(self) {}
      void Execute() override { s_->Stop(); }
      void OnOK() override {
        self_->tsfn_.Unref(Env());
        self_->sink_->Close();
        self_->tsfn_.Release();
        self_->released_ = true;
        self_->Unref();
        d_.Resolve(Env().Undefined());
      }
      transport::Server* s_;
      Napi::Promise::Deferred d_;
      NativeServer* self_;
    };
    Ref();  // keep this object alive until the worker is done
    auto* w = new StopWork(env, server_.get(), deferred, this);
    w->Queue();
    Napi::Promise p = deferred.Promise();
    return p;
  }

  std::unique_ptr<Handler> handler_;
  std::shared_ptr<transport::core::AuthKeys> auth_ = std::make_shared<transport::core::AuthKeys>();
  std::shared_ptr<transport::Server::Options::Limits> limits_ = std::make_shared<transport::Server::Options::Limits>();
  std::unique_ptr<transport::Server> server_;
  Napi::ThreadSafeFunction tsfn_;
  std::shared_ptr<EventSink> sink_;
  bool released_ = false;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace
}  // namespace ibnbd::server

namespace ibnbd::server {
void InitServerBinding(Napi::Env env, Napi::Object exports) { NativeServer::Init(env, exports); }
}  // namespace ibnbd::server

IBNBD_MODULE(server, ibnbd::server::InitServerBinding);
