// NativeVhostBlk: the JS handle of one vhost-user-blk back-end (vhost_blk_device.h). Options
// are validated precisely by src/backend/vhost.ts; this layer re-checks what would be unsafe
// in C++ and throws EINVAL with the option's name.
//   new NativeVhostBlk(options, onEvent)   onEvent({ type, detail }) on the JS thread
//   start()                                 throws EEXIST / EADDRINUSE / ENAMETOOLONG / ...
//   frontendConnected                       getter
//   disconnectFrontend() → Promise<boolean> in-flight requests answered with IOERR
//   stats(withIo?) → { queues: [...], connections, protocolErrors, dirtyLog, dirtyPages, ... totals, io? (per operation) }
//   close() → Promise<boolean>              true when every transport request drained
//   setServerDeviceId(id | null, wait?)     the id of a re-OPEN; null: not open, IO waits (wait)
//                                           or fails IOERR (vhost_blk_device.h)
//   options.holdOnLoss (default true)       requests lost with their path wait for the session
//   setSizeBytes(n)                         the size a re-OPEN reported, or a resize set
//   notifyConfigChange()                    tell the front-end (back-end channel): true if told
//   writtenEnd()                            end of the highest byte written (a shrink's floor)
#include <napi.h>

#include <memory>
#include <string>

#include "common/errors.h"
#include "common/io_metrics_js.h"
#include "common/module.h"
#include "transport/binding.h"
#include "vhost/vhost_blk_device.h"

namespace ibnbd::vhost {
namespace {

constexpr int kCloseDrainTimeoutMs = 5000;

struct Event {
  std::string type, detail;
};

uint32_t U32(Napi::Env env, Napi::Object o, const char* key, uint32_t def, uint32_t min, uint32_t max) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return def;
  if (!v.IsNumber()) ThrowErrno(env, EINVAL, std::string(key) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || d != double(uint64_t(d)))
    ThrowErrno(env, EINVAL, std::string(key) + " out of range");
  return uint32_t(d);
}

bool Bool(Napi::Env env, Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return false;
  if (!v.IsBoolean()) ThrowErrno(env, EINVAL, std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

bool IsPow2Block(uint32_t v) { return v >= 512 && v <= 65536 && (v & (v - 1)) == 0; }

// Runs a blocking device call on the libuv pool and settles a promise with its boolean.
class DeviceWorker : public Napi::AsyncWorker {
 public:
  DeviceWorker(Napi::Env env, std::function<bool()> fn)
      : Napi::AsyncWorker(env), fn_(std::move(fn)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { result_ = fn_(); }
  void OnOK() override { deferred_.Resolve(Napi::Boolean::New(Env(), result_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::function<bool()> fn_;
  Napi::Promise::Deferred deferred_;
  bool result_ = false;
};

class NativeVhostBlk : public Napi::ObjectWrap<NativeVhostBlk> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(
        env, "NativeVhostBlk",
        {InstanceMethod<&NativeVhostBlk::Start>("start"),
         InstanceAccessor<&NativeVhostBlk::FrontendConnected>("frontendConnected"),
         InstanceMethod<&NativeVhostBlk::DisconnectFrontend>("disconnectFrontend"),
         InstanceMethod<&NativeVhostBlk::Stats>("stats"),
         InstanceMethod<&NativeVhostBlk::SetServerDeviceId>("setServerDeviceId"),
         InstanceMethod<&NativeVhostBlk::SetSizeBytes>("setSizeBytes"),
         InstanceMethod<&NativeVhostBlk::NotifyConfigChange>("notifyConfigChange"),
         InstanceMethod<&NativeVhostBlk::WrittenEnd>("writtenEnd"),
         InstanceMethod<&NativeVhostBlk::Close>("close")});
    exports.Set("NativeVhostBlk", f);
  }

  explicit NativeVhostBlk(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeVhostBlk>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) ThrowErrno(env, EINVAL, "options must be an object");
    if (!info[1].IsFunction()) ThrowErrno(env, EINVAL, "onEvent must be a function");
    Napi::Object o = info[0].As<Napi::Object>();

    Napi::Value sp = o.Get("socketPath");
    if (!sp.IsString()) ThrowErrno(env, EINVAL, "socketPath must be a string");
    std::string socket_path = sp.As<Napi::String>().Utf8Value();

    std::shared_ptr<transport::ClientSession> session = transport::UnwrapClientSession(o.Get("session"));

    BlkLimits l;
    l.device_id = U32(env, o, "deviceId", 0, 0, UINT32_MAX);
    Napi::Value serial = o.Get("serial");
    if (!serial.IsUndefined()) {
      if (!serial.IsString()) ThrowErrno(env, EINVAL, "serial must be a string");
      l.serial = serial.As<Napi::String>().Utf8Value();
      if (l.serial.size() > kBlkIdBytes) ThrowErrno(env, EINVAL, "serial longer than 20 bytes");
    }
    Napi::Value size = o.Get("sizeBytes");
    bool lossless = true;
    if (size.IsBigInt()) {
      l.size_bytes = size.As<Napi::BigInt>().Uint64Value(&lossless);
    } else if (size.IsNumber()) {
      double d = size.As<Napi::Number>().DoubleValue();
      lossless = d >= 0 && d <= 9007199254740991.0 && d == double(uint64_t(d));
      l.size_bytes = lossless ? uint64_t(d) : 0;
    } else {
      lossless = false;
    }
    if (!lossless || l.size_bytes == 0 || l.size_bytes % kSectorSize)
      ThrowErrno(env, EINVAL, "sizeBytes must be a positive multiple of 512");
    l.logical_block_size = U32(env, o, "logicalBlockSize", 512, 512, 65536);
    l.physical_block_size = U32(env, o, "physicalBlockSize", l.logical_block_size, 512, 65536);
    if (!IsPow2Block(l.logical_block_size) || !IsPow2Block(l.physical_block_size) ||
        l.physical_block_size < l.logical_block_size)
      ThrowErrno(env, EINVAL, "block sizes must be powers of 2, physical ≥ logical");
    l.read_only = Bool(env, o, "readOnly");
    l.queues = uint16_t(U32(env, o, "queues", 1, 1, kMaxQueues));
    Napi::Value discard = o.Get("discard");
    if (discard.IsObject()) {
      Napi::Object d = discard.As<Napi::Object>();
      l.discard_max_sectors = U32(env, d, "maxSectors", 0, 0, UINT32_MAX);
      l.discard_granularity = U32(env, d, "granularity", 0, 0, UINT32_MAX);
    } else if (!discard.IsUndefined() && !discard.IsNull()) {
      ThrowErrno(env, EINVAL, "discard must be an object");
    }
    Napi::Value wz = o.Get("writeZeroes");
    if (wz.IsObject()) {
      l.write_zeroes_max_sectors = U32(env, wz.As<Napi::Object>(), "maxSectors", 0, 0, UINT32_MAX);
    } else if (!wz.IsUndefined() && !wz.IsNull()) {
      ThrowErrno(env, EINVAL, "writeZeroes must be an object");
    }
    l.secure_erase = Bool(env, o, "secureErase");
    l.writeback = Bool(env, o, "writeback");
    l.fua = Bool(env, o, "fua");
    l.max_io_size = session->max_io_size();
    if (l.max_io_size < 4096 || l.max_io_size % kSectorSize)
      ThrowErrno(env, EINVAL, "the session's max IO size is not a multiple of 512 ≥ 4096");

    events_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "ibnbd-vhost-events", 0, 1);
    events_.Unref(env);
    auto tsfn = events_;
    device_ = std::make_shared<VhostBlkDevice>(
        std::move(l), std::move(socket_path), std::move(session),
        [tsfn](const std::string& type, const std::string& detail) mutable {
          auto* ev = new Event{type, detail};
          napi_status st = tsfn.NonBlockingCall(ev, [](Napi::Env env, Napi::Function cb, Event* e) {
            Napi::Object o = Napi::Object::New(env);
            o.Set("type", e->type);
            o.Set("detail", e->detail);
            delete e;
            cb.Call({o});
          });
          if (st != napi_ok) delete ev;
        });
    Napi::Value hold = o.Get("holdOnLoss");
    if (!hold.IsUndefined() && !hold.IsBoolean()) ThrowErrno(env, EINVAL, "holdOnLoss must be a boolean");
    device_->SetHoldOnLoss(!hold.IsBoolean() || hold.As<Napi::Boolean>().Value());
    Napi::Value name = o.Get("name");
    if (!name.IsUndefined() && !name.IsString()) ThrowErrno(env, EINVAL, "name must be a string");
    if (name.IsString()) device_->SetLogName(name.As<Napi::String>().Utf8Value());
  }

  ~NativeVhostBlk() override {
    // Collected without close(): stop listening so the loop holds no handler of ours; requests
    // still at the transport keep the device alive until they complete.
    if (device_) device_->Close(0);
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (!device_) ThrowErrno(info.Env(), EBADF, "closed");
    if (started_) ThrowErrno(info.Env(), EALREADY, "already started");
    if (int err = device_->Start()) {
      ThrowErrno(info.Env(), -err,
                 err == -EADDRINUSE ? "cannot listen on the vhost-user socket: another process listens on that path"
                 : err == -EEXIST   ? "cannot listen on the vhost-user socket: that path exists and is not a socket"
                                    : "cannot listen on the vhost-user socket");
    }
    started_ = true;
    return info.Env().Undefined();
  }

  Napi::Value FrontendConnected(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), device_ && device_->frontend_connected());
  }

  Napi::Value DisconnectFrontend(const Napi::CallbackInfo& info) {
    if (!device_) ThrowErrno(info.Env(), EBADF, "closed");
    auto dev = device_;
    auto* w = new DeviceWorker(info.Env(), [dev] { return dev->DisconnectFrontend(); });
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value SetServerDeviceId(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!device_) ThrowErrno(env, EBADF, "closed");
    if (info[0].IsNull()) {
      if (!info[1].IsUndefined() && !info[1].IsBoolean()) ThrowErrno(env, EINVAL, "wait must be a boolean");
      device_->SetServerDeviceId(std::nullopt, info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value());
      return env.Undefined();
    }
    if (!info[0].IsNumber()) ThrowErrno(env, EINVAL, "deviceId must be a number or null");
    double d = info[0].As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= UINT32_MAX) || d != double(uint64_t(d))) ThrowErrno(env, EINVAL, "deviceId out of range");
    device_->SetServerDeviceId(uint32_t(d));
    return env.Undefined();
  }

  Napi::Value SetSizeBytes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!device_) ThrowErrno(env, EBADF, "closed");
    double d = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
    if (!(d > 0 && d <= 9007199254740991.0) || d != double(uint64_t(d)) || uint64_t(d) % kSectorSize ||
        uint64_t(d) % device_->limits().logical_block_size)
      ThrowErrno(env, EINVAL, "sizeBytes must be a positive multiple of the logical block size");
    device_->SetSizeBytes(uint64_t(d));
    return env.Undefined();
  }

  // true when the front-end was told (it has a back-end channel); blocking for one hop to H
  Napi::Value NotifyConfigChange(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!device_) ThrowErrno(env, EBADF, "closed");
    return Napi::Boolean::New(env, device_->NotifyConfigChange());
  }

  Napi::Value WrittenEnd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!device_) ThrowErrno(env, EBADF, "closed");
    return Napi::Number::New(env, double(device_->written_end()));
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    // A device being closed still answers with its counters: `list`, `show` and the metrics
    // may ask while an unmap waits for its in-flight requests (Stats only reads atomics).
    const std::shared_ptr<VhostBlkDevice>& dev = device_ ? device_ : closed_;
    if (!dev) ThrowErrno(env, EBADF, "closed");
    DeviceStats s = dev->Stats();
    Napi::Array queues = Napi::Array::New(env, s.queues.size());
    QueueStats total;
    // one queue's counters and the device's totals have the same shape in JS
    auto counters = [&env](const QueueStats& q) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("requests", double(q.requests));
      o.Set("readBytes", double(q.read_bytes));
      o.Set("writeBytes", double(q.write_bytes));
      o.Set("errors", double(q.errors));
      o.Set("splits", double(q.splits));
      o.Set("inflight", double(q.inflight));
      o.Set("waiting", double(q.waiting));
      return o;
    };
    for (size_t i = 0; i < s.queues.size(); i++) {
      const QueueStats& q = s.queues[i];
      queues[i] = counters(q);
      total.requests += q.requests, total.read_bytes += q.read_bytes,
          total.write_bytes += q.write_bytes, total.errors += q.errors, total.splits += q.splits,
          total.inflight += q.inflight, total.waiting += q.waiting;
    }
    Napi::Object o = counters(total);
    o.Set("connections", double(s.connections));
    o.Set("protocolErrors", double(s.protocol_errors));
    o.Set("dirtyLog", s.dirty_log);
    o.Set("dirtyPages", double(s.dirty_pages));
    o.Set("queues", queues);
    // stats(true): the per-operation metrics too, for a /metrics scrape (src/metrics/)
    if (info.Length() > 0 && info[0].IsBoolean() && info[0].As<Napi::Boolean>()) o.Set("io", IoSnapshotToJs(env, s.io));
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    auto dev = std::move(device_);
    closed_ = dev;
    if (!dev) {
      auto d = Napi::Promise::Deferred::New(info.Env());
      d.Resolve(Napi::Boolean::New(info.Env(), true));
      return d.Promise();
    }
    // close(true): hand the front-end over to the next daemon (SIGTERM) instead of failing its IO
    const bool hand_over = info.Length() > 0 && info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value();
    auto tsfn = events_;
    auto* w = new DeviceWorker(info.Env(), [dev, tsfn, hand_over]() mutable {
      bool drained = dev->Close(kCloseDrainTimeoutMs, hand_over);
      tsfn.Release();
      return drained;
    });
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  std::shared_ptr<VhostBlkDevice> device_;
  std::shared_ptr<VhostBlkDevice> closed_;  // after close(): for Stats only
  Napi::ThreadSafeFunction events_;
  bool started_ = false;
};

void InitVhost(Napi::Env env, Napi::Object exports) { NativeVhostBlk::Init(env, exports); }

}  // namespace

IBNBD_MODULE(vhost, InitVhost);

}  // namespace ibnbd::vhost
