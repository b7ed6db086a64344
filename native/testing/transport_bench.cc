// benchReads(session, {deviceId, queueDepth, seconds, blockSize, span}): IBNBD READs kept at a
// fixed queue depth from IO thread 0 straight through ClientSession::Submit — the native data
// path without JS per request, for a rough figure of what the transport + server IO path do.
// Measurement tool only (tests/bench); resolves {ios, errors, seconds, p50Us, p99Us}.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "common/errors.h"
#include "common/event_loop.h"
#include "proto/ibnbd_proto.h"
#include "testing/testing.h"
#include "transport/binding.h"
#include "transport/tcp/net.h"

namespace ibnbd::transport {
namespace {

struct Bench {
  std::shared_ptr<ClientSession> s;
  uint32_t device_id, qd, bs;
  uint64_t span_blocks;
  uint64_t end_ns;
  uint64_t ios = 0, errors = 0, seq = 0;
  unsigned outstanding = 0;
  std::vector<uint32_t> lat_us;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
};

struct Slot {
  ClientIo io;
  Bench* b;
  uint8_t usr[proto::kIoSize];
  iovec iov;
  void* buf;
  uint64_t t0;
};

void Issue(Slot* sl) {
  Bench* b = sl->b;
  proto::IoMsg m{};
  m.device_id = b->device_id;
  m.sector = (b->seq++ % b->span_blocks) * (b->bs / 512);
  m.op = proto::IoOp::kRead;
  m.bi_size = b->bs;
  proto::EncodeIo(m, sl->usr, sizeof(sl->usr));
  sl->t0 = tcp::NowNs();
  b->s->Submit(&sl->io);
}

void Done(ClientIo* io, int err) {
  auto* sl = static_cast<Slot*>(io->ctx);
  Bench* b = sl->b;
  uint64_t now = tcp::NowNs();
  if (err) b->errors++;
  else b->ios++;
  if (b->lat_us.size() < 2000000) b->lat_us.push_back(static_cast<uint32_t>((now - sl->t0) / 1000));
  if (now < b->end_ns && b->errors < 1000) return Issue(sl);
  if (--b->outstanding == 0) {
    std::lock_guard<std::mutex> lk(b->mu);
    b->done = true;
    b->cv.notify_all();
  }
}

class BenchWork : public Napi::AsyncWorker {
 public:
  BenchWork(Napi::Env env, std::shared_ptr<ClientSession> s, uint32_t dev, uint32_t qd, uint32_t secs_ms,
            uint32_t bs, uint64_t span)
      : Napi::AsyncWorker(env), d_(Napi::Promise::Deferred::New(env)) {
    b_.s = std::move(s);
    b_.device_id = dev;
    b_.qd = qd;
    b_.bs = bs;
    b_.span_blocks = std::max<uint64_t>(1, span / bs);
    ms_ = secs_ms;
  }
  Napi::Promise Promise() { return d_.Promise(); }
  void Execute() override {
    std::vector<Slot> slots(b_.qd);
    uint64_t t0 = tcp::NowNs();
    b_.end_ns = t0 + static_cast<uint64_t>(ms_) * 1000000ull;
    b_.outstanding = b_.qd;
    IoThreads::Get().loop(0).Post([this, &slots] {
      for (auto& sl : slots) {
        sl.b = &b_;
        sl.buf = aligned_alloc(4096, b_.bs);
        sl.iov = {sl.buf, b_.bs};
        sl.io.dir = Dir::kRead;
        sl.io.usr = sl.usr;
        sl.io.usr_len = proto::kIoSize;
        sl.io.iov = &sl.iov;
        sl.io.iov_cnt = 1;
        sl.io.data_len = b_.bs;
        sl.io.done = Done;
        sl.io.ctx = &sl;
      }
      for (auto& sl : slots) Issue(&sl);
    });
    std::unique_lock<std::mutex> lk(b_.mu);
    b_.cv.wait(lk, [&] { return b_.done; });
    secs_ = static_cast<double>(tcp::NowNs() - t0) / 1e9;
    for (auto& sl : slots) free(sl.buf);
  }
  void OnOK() override {
    Napi::Env env = Env();
    std::sort(b_.lat_us.begin(), b_.lat_us.end());
    auto pct = [&](double p) {
      return b_.lat_us.empty() ? 0 : b_.lat_us[static_cast<size_t>(p * (b_.lat_us.size() - 1))];
    };
    Napi::Object o = Napi::Object::New(env);
    o.Set("ios", static_cast<double>(b_.ios));
    o.Set("errors", static_cast<double>(b_.errors));
    o.Set("seconds", secs_);
    o.Set("p50Us", pct(0.5));
    o.Set("p99Us", pct(0.99));
    d_.Resolve(o);
  }

 private:
  Bench b_;
  uint32_t ms_ = 0;
  double secs_ = 0;
  Napi::Promise::Deferred d_;
};

Napi::Value BenchReads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = UnwrapClientSession(info[0]);
  if (info.Length() < 2 || !info[1].IsObject()) ThrowErrno(env, EINVAL, "benchReads(session, options)");
  Napi::Object o = info[1].As<Napi::Object>();
  uint32_t dev = U32Field(o, "deviceId", 0, 0, 0xffffffffu);
  uint32_t qd = U32Field(o, "queueDepth", 1, 1, 4096);
  uint32_t ms = U32Field(o, "ms", 2000, 1, 600000);
  uint32_t bs = U32Field(o, "blockSize", 4096, 512, s->max_io_size());
  if (bs % 512) ThrowErrno(env, EINVAL, "blockSize must be a multiple of 512");
  double span = o.Get("spanBytes").IsNumber() ? o.Get("spanBytes").As<Napi::Number>().DoubleValue() : 1 << 20;
  auto* w = new BenchWork(env, s, dev, qd, ms, bs, static_cast<uint64_t>(span));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

void InitBench(Napi::Env env, Napi::Object exports) {
  exports.Set("benchReads", Napi::Function::New(env, BenchReads, "benchReads"));
}

}  // namespace
}  // namespace ibnbd::transport

void ibnbd::testing::InitTransportBench(Napi::Env env, Napi::Object exports) { ibnbd::transport::InitBench(env, exports); }
