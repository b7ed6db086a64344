// NativeClientSession (the transport client for JS admin requests and tests) and the IO thread
// pool's knobs: configureIoThreads(n), setPollUs(us), ioThreadStats(). Blocking calls (connect,
// close) run on libuv's pool; request() posts the submission to an IO thread and resolves from a
// thread-safe function. Link events go to the onLinkEvent callback.
#include "transport/binding.h"
#include "transport/wire.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "common/event_loop.h"
#include "common/module.h"

namespace ibnbd::transport {
namespace {

Napi::FunctionReference* client_ctor = nullptr;

const char* LinkEventName(LinkEvent e) {
  switch (e) {
    case LinkEvent::kConnected: return "connected";
    case LinkEvent::kDisconnected: return "disconnected";
    case LinkEvent::kReconnected: return "reconnected";
  }
  return "?";
}

// Runs fn() (returning 0 or -errno) on the libuv pool and settles a promise with it.
class BlockingWork : public Napi::AsyncWorker {
 public:
  BlockingWork(Napi::Env env, std::function<int()> fn, std::string what)
      : Napi::AsyncWorker(env), fn_(std::move(fn)), what_(std::move(what)),
        deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  // the wire's reason (LastCreateError) is per thread: taken here, on the worker thread
  void Execute() override {
    SetLastCreateError("");
    rc_ = fn_();
    if (rc_ != 0) why_ = LastCreateError();
  }
  void OnOK() override {
    if (rc_ == 0)
      deferred_.Resolve(Env().Undefined());
    else
      deferred_.Reject(ErrnoError(Env(), rc_, why_.empty() ? what_ : what_ + ": " + why_).Value());
  }

 private:
  std::function<int()> fn_;
  std::string what_;
  std::string why_;
  Napi::Promise::Deferred deferred_;
  int rc_ = 0;
};

// Keeps the completion function referenced (the process alive) while requests are in flight.
struct InflightRef {
  Napi::ThreadSafeFunction tsfn;
  uint64_t count = 0;  // JS thread only
};

struct JsRequest {
  ClientIo io;
  std::vector<uint8_t> usr;
  std::vector<uint8_t> data;
  Napi::ObjectReference buffer;  // zero copy: the caller's Buffer is the data, kept alive
  iovec iov{};
  Napi::Promise::Deferred deferred;
  std::shared_ptr<ClientSession> session;  // alive until completion
  Napi::ThreadSafeFunction tsfn;
  std::shared_ptr<InflightRef> ref;
  int err = 0;
  explicit JsRequest(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

class NativeClientSession : public Napi::ObjectWrap<NativeClientSession> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(
        env, "NativeClientSession",
        {InstanceMethod("connect", &NativeClientSession::Connect),
         InstanceMethod("request", &NativeClientSession::Request),
         InstanceMethod("paths", &NativeClientSession::Paths),
         InstanceMethod("close", &NativeClientSession::Close),
         InstanceMethod("registerMemory", &NativeClientSession::RegisterMemory),
         InstanceMethod("unregisterMemory", &NativeClientSession::UnregisterMemory),
         InstanceAccessor("bounceCount", &NativeClientSession::BounceCount, nullptr),
         InstanceAccessor("queueDepth", &NativeClientSession::QueueDepth, nullptr),
         InstanceAccessor("maxIoSize", &NativeClientSession::MaxIoSize, nullptr),
         InstanceAccessor("uuid", &NativeClientSession::Uuid, nullptr),
         InstanceAccessor("connected", &NativeClientSession::Connected, nullptr)});
    client_ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("NativeClientSession", f);
  }

  NativeClientSession(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeClientSession>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) ThrowErrno(env, EINVAL, "options object expected");
    Napi::Object o = info[0].As<Napi::Object>();
    std::string transport = StringField(o, "transport", "tcp");
    ClientSession::Options opt;
    opt.sessname = StringField(o, "sessname", "");
    Napi::Value paths = o.Get("paths");
    if (!paths.IsArray()) ThrowErrno(env, EINVAL, "paths must be an array");
    Napi::Array arr = paths.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value pv = arr.Get(i);
      if (!pv.IsObject()) ThrowErrno(env, EINVAL, "paths[i] must be {src?, dst}");
      Napi::Object po = pv.As<Napi::Object>();
      PathSpec ps;
      ps.dst = EndpointFromJs(env, po.Get("dst"), "paths[i].dst");
      Napi::Value src = po.Get("src");
      if (!src.IsUndefined() && !src.IsNull()) ps.src = EndpointFromJs(env, src, "paths[i].src");
      opt.paths.push_back(ps);
    }
    opt.queue_depth = U32Field(o, "queueDepth", kDefaultQueueDepth, 1, 65535);
    opt.max_io_size = U32Field(o, "maxIoSize", kDefaultMaxIoSize, 4096, 16 << 20);
    opt.mp_policy = StringField(o, "mpPolicy", "min-inflight");
    opt.heartbeat_interval_ms = U32Field(o, "heartbeatMs", kHeartbeatIntervalMs, 1, 3600000);
    opt.heartbeat_missed_max = U32Field(o, "heartbeatMissedMax", kHeartbeatMissedMax, 0, 1000);
    opt.reconnect_delay_ms = U32Field(o, "reconnectDelayMs", 2000, 0, 86400000);
    opt.io_timeout_ms = U32Field(o, "ioTimeoutMs", 30000, 0, 86400000);
    Napi::Value mra = o.Get("maxReconnectAttempts");
    if (mra.IsNumber()) opt.max_reconnect_attempts = mra.As<Napi::Number>().Int32Value();
    Napi::Value key = o.Get("authKey");  // validated in JS (src/auth/keys-file.ts)
    if (key.IsBuffer()) {
      auto b = key.As<Napi::Buffer<uint8_t>>();
      opt.auth_secret.assign(reinterpret_cast<const char*>(b.Data()), b.Length());
    }

    if (info.Length() > 1 && info[1].IsFunction()) {
      link_tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(),
                                                 "ibnbd-link-event", 0, 1);
      link_tsfn_.Unref(env);
      has_link_ = true;
      auto tsfn = link_tsfn_;
      opt.on_link_event = [tsfn](LinkEvent ev) mutable {
        tsfn.NonBlockingCall([ev](Napi::Env env, Napi::Function cb) {
          cb.Call({Napi::String::New(env, LinkEventName(ev))});
        });
      };
    }
    // request completions: one thread-safe function per session, referenced only while a
    // request is in flight so an idle session never keeps the process alive
    req_tsfn_ = Napi::ThreadSafeFunction::New(
        env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "ibnbd-request", 0, 1);
    req_tsfn_.Unref(env);
    int err = 0;
    session_ = ClientSession::Create(transport, std::move(opt), &err);
    if (!session_) {
      const std::string why = LastCreateError();
      ThrowErrno(env, err, "cannot create a " + transport + " client session" + (why.empty() ? "" : ": " + why));
    }
  }

  ~NativeClientSession() override {
    if (session_) {
      auto s = session_;
      // never block the JS thread in a finalizer on network teardown: close on a helper thread
      std::thread([s] { s->Close(); }).detach();
    }
    // thread-safe functions are released by close(); at environment teardown Node closes
    // them itself and a release from a finalizer would touch a closed one
  }

  std::shared_ptr<ClientSession> session() const { return session_; }

 private:
  std::shared_ptr<ClientSession> Live(Napi::Env env) {
    if (!session_ || closed_) ThrowErrno(env, ENOTCONN, "session closed");
    return session_;
  }

  Napi::Value Connect(const Napi::CallbackInfo& info) {
    auto s = Live(info.Env());
    int timeout = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 30000;
    auto* w = new BlockingWork(info.Env(), [s, timeout] { return s->Connect(timeout); }, "connect");
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value Request(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto s = Live(env);
    if (info.Length() < 1 || !info[0].IsObject()) ThrowErrno(env, EINVAL, "request object expected");
    Napi::Object o = info[0].As<Napi::Object>();
    std::string dir = StringField(o, "dir", "");
    if (dir != "read" && dir != "write") ThrowErrno(env, EINVAL, "dir must be 'read' or 'write'");
    Napi::Value usr = o.Get("usr");
    if (!usr.IsBuffer()) ThrowErrno(env, EINVAL, "usr must be a Buffer");
    auto ub = usr.As<Napi::Buffer<uint8_t>>();
    if (ub.Length() > kMaxUsrLen) ThrowErrno(env, EINVAL, "usr longer than kMaxUsrLen");
    auto* r = new JsRequest(env);
    r->usr.assign(ub.Data(), ub.Data() + ub.Length());
    Napi::Value zc = o.Get("buffer");
    if (!zc.IsUndefined() && !zc.IsNull()) {
      // zero copy: the Buffer itself is the write source / read destination (registered
      // memory on RDMA goes to the wire without the bounce pool)
      if (!zc.IsBuffer()) {
        delete r;
        ThrowErrno(env, EINVAL, "buffer must be a Buffer");
      }
      auto zb = zc.As<Napi::Buffer<uint8_t>>();
      r->buffer = Napi::Persistent(zc.As<Napi::Object>());
      r->iov.iov_base = zb.Data();
      r->iov.iov_len = zb.Length();
    } else if (dir == "write") {
      Napi::Value d = o.Get("data");
      if (!d.IsUndefined() && !d.IsNull()) {
        if (!d.IsBuffer()) {
          delete r;
          ThrowErrno(env, EINVAL, "data must be a Buffer");
        }
        auto db = d.As<Napi::Buffer<uint8_t>>();
        r->data.assign(db.Data(), db.Data() + db.Length());
      }
    } else {
      uint32_t len = U32Field(o, "readLen", 0, 0, 16 << 20);
      r->data.resize(len);
    }
    r->io.dir = dir == "read" ? Dir::kRead : Dir::kWrite;
    r->io.usr = r->usr.data();
    r->io.usr_len = static_cast<uint16_t>(r->usr.size());
    if (r->buffer.IsEmpty()) {
      r->iov.iov_base = r->data.data();
      r->iov.iov_len = r->data.size();
    }
    r->io.iov = &r->iov;
    r->io.iov_cnt = r->iov.iov_len == 0 ? 0 : 1;
    r->io.data_len = static_cast<uint32_t>(r->iov.iov_len);
    r->io.ctx = r;
    r->session = s;
    r->tsfn = req_tsfn_;
    r->io.done = [](ClientIo* io, int err) {
      auto* req = static_cast<JsRequest*>(io->ctx);
      req->err = err;
      req->tsfn.NonBlockingCall([req](Napi::Env env, Napi::Function) { Settle(env, req); });
    };
    r->ref = ref_;
    if (ref_->count++ == 0) req_tsfn_.Ref(env);
    Napi::Promise p = r->deferred.Promise();
    static std::atomic<unsigned> spread{0};
    IoThreads& pool = IoThreads::Get();
    pool.loop(spread.fetch_add(1) % pool.size()).Post([r] { r->session->Submit(&r->io); });
    return p;
  }

  static void Settle(Napi::Env env, JsRequest* r) {
    Napi::Object res = Napi::Object::New(env);
    res.Set("errno", r->err);
    if (r->io.dir == Dir::kRead && r->err == 0) {
      if (!r->buffer.IsEmpty())
        res.Set("data", r->buffer.Value());
      else
        res.Set("data", Napi::Buffer<uint8_t>::Copy(env, r->data.data(), r->data.size()));
    }
    r->deferred.Resolve(res);
    if (--r->ref->count == 0) r->tsfn.Unref(env);
    delete r;
  }

  Napi::Value Paths(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array a = Napi::Array::New(env);
    if (!session_) return a;
    uint32_t i = 0;
    for (auto& p : session_->Paths()) a.Set(i++, PathInfoToJs(env, p));
    return a;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    auto s = session_;
    if (closed_) {
      auto d = Napi::Promise::Deferred::New(info.Env());
      d.Resolve(info.Env().Undefined());
      return d.Promise();
    }
    closed_ = true;
    auto link = link_tsfn_;
    auto req = req_tsfn_;
    bool has_link = has_link_;
    auto* w = new BlockingWork(info.Env(), [s, link, req, has_link]() mutable {
      if (s) s->Close();  // every completion has been queued to req by now
      if (has_link) link.Release();
      req.Release();
      return 0;
    }, "close");
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  // registerMemory(buffer) → handle: requests whose `buffer` lies inside it travel zero-copy on
  // RDMA; TCP accepts and ignores it. The Buffer stays referenced until unregisterMemory.
  Napi::Value RegisterMemory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto s = Live(env);
    if (info.Length() < 1 || !info[0].IsBuffer()) ThrowErrno(env, EINVAL, "a Buffer is required");
    auto b = info[0].As<Napi::Buffer<uint8_t>>();
    if (b.Length() == 0) ThrowErrno(env, EINVAL, "empty Buffer");
    uint64_t handle = 0;
    int rc = s->RegisterMemory(b.Data(), b.Length(), &handle);
    if (rc) ThrowErrno(env, -rc, "cannot register memory");
    uint64_t key = ++next_region_;
    regions_[key] = {handle, Napi::Persistent(info[0].As<Napi::Object>())};
    return Napi::Number::New(env, static_cast<double>(key));
  }

  Napi::Value UnregisterMemory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) ThrowErrno(env, EINVAL, "a handle is required");
    uint64_t key = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    auto it = regions_.find(key);
    if (it == regions_.end()) ThrowErrno(env, ENOENT, "no such registered memory");
    if (session_) session_->UnregisterMemory(it->second.handle);
    regions_.erase(it);
    return env.Undefined();
  }

  Napi::Value BounceCount(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), session_ ? static_cast<double>(session_->bounce_count()) : 0);
  }

  Napi::Value QueueDepth(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), session_ ? session_->queue_depth() : 0);
  }
  Napi::Value MaxIoSize(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), session_ ? session_->max_io_size() : 0);
  }
  Napi::Value Uuid(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), session_ ? session_->uuid() : "");
  }
  Napi::Value Connected(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), session_ && session_->connected());
  }

  struct RegisteredRegion {
    uint64_t handle;
    Napi::ObjectReference buffer;
  };
  std::map<uint64_t, RegisteredRegion> regions_;
  uint64_t next_region_ = 0;
  std::shared_ptr<ClientSession> session_;
  Napi::ThreadSafeFunction link_tsfn_;
  Napi::ThreadSafeFunction req_tsfn_;
  bool has_link_ = false;
  bool closed_ = false;
  std::shared_ptr<InflightRef> ref_ = std::make_shared<InflightRef>();
};

Napi::Value ConfigureIoThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) ThrowErrno(env, EINVAL, "thread count expected");
  double n = info[0].As<Napi::Number>().DoubleValue();
  if (!(n >= 1 && n <= 1024) || n != static_cast<double>(static_cast<int>(n)))
    ThrowErrno(env, EINVAL, "io threads must be an integer in 1..1024");
  if (IoThreads::Started()) {
    if (IoThreads::Get().size() == static_cast<unsigned>(n)) return env.Undefined();
    ThrowErrno(env, EBUSY, "IO threads already running with " +
                               std::to_string(IoThreads::Get().size()) + " threads");
  }
  IoThreads::Configure(static_cast<unsigned>(n));
  return env.Undefined();
}

Napi::Value IoThreadCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), IoThreads::Get().size());
}

// Adaptive polling of the IO threads (event_loop.cc); the range is checked in TS as well.
Napi::Value SetPollUs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) ThrowErrno(env, EINVAL, "microseconds expected");
  double us = info[0].As<Napi::Number>().DoubleValue();
  if (!(us >= 0 && us <= 1000) || us != static_cast<double>(static_cast<unsigned>(us)))
    ThrowErrno(env, EINVAL, "poll window must be an integer in 0..1000 microseconds");
  IoThreads::SetPollUs(static_cast<unsigned>(us));
  return env.Undefined();
}

// Never starts the pool: before the first session or server the counts are 0.
Napi::Value IoThreadStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  IoThreads::PollCounts c = IoThreads::PollStats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("pollUs", Napi::Number::New(env, IoThreads::PollUs()));
  o.Set("polls", Napi::Number::New(env, static_cast<double>(c.polls)));
  o.Set("pollHits", Napi::Number::New(env, static_cast<double>(c.poll_hits)));
  return o;
}

void Init(Napi::Env env, Napi::Object exports) {
  NativeClientSession::Init(env, exports);
  exports.Set("configureIoThreads", Napi::Function::New(env, ConfigureIoThreads, "configureIoThreads"));
  exports.Set("ioThreadCount", Napi::Function::New(env, IoThreadCount, "ioThreadCount"));
  exports.Set("setPollUs", Napi::Function::New(env, SetPollUs, "setPollUs"));
  exports.Set("ioThreadStats", Napi::Function::New(env, IoThreadStats, "ioThreadStats"));
}

}  // namespace

std::shared_ptr<ClientSession> UnwrapClientSession(Napi::Value value) {
  Napi::Env env = value.Env();
  if (client_ctor == nullptr || !value.IsObject() ||
      !value.As<Napi::Object>().InstanceOf(client_ctor->Value()))
    throw Napi::TypeError::New(env, "a NativeClientSession is required");
  auto* w = NativeClientSession::Unwrap(value.As<Napi::Object>());
  auto s = w->session();
  if (!s) ThrowErrno(env, ENOTCONN, "session closed");
  return s;
}

// ---------------------------------------------------------------------------------------------
// Transport options from JS objects (binding.h)
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

IBNBD_MODULE(transport, ibnbd::transport::Init);
