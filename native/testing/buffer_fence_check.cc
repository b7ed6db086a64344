// bufferFenceCheck(threads, buffers, iterations): drives a BufferFence from several threads at
// once, as the server's IO threads do when requests of one buffer id arrive on two paths, and
// reports what a test must see: every request ran once, never two of one buffer id at a time.
// The server's use of the fence can only be provoked by a failover under load in the guest;
// this makes its hand-over races happen on every run (tests/native/buffer-fence.test.ts).
#include <napi.h>

#include <atomic>
#include <deque>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "testing/testing.h"
#include "transport/rdma/buffer_fence.h"

namespace ibnbd::rdma {
namespace {

struct Run {
  explicit Run(uint32_t buffers) : fence(buffers), inside(new std::atomic<bool>[buffers]) {
    for (uint32_t i = 0; i < buffers; i++) inside[i] = false;
  }
  BufferFence fence;
  std::unique_ptr<std::atomic<bool>[]> inside;
  std::atomic<uint64_t> ran{0}, overlaps{0}, waited{0};

  void Execute(uint32_t b) {
    if (inside[b].exchange(true)) overlaps++;
    std::this_thread::yield();  // widens the window another holder of b would have to show up in
    inside[b] = false;
    ran++;
    fence.Release(b);
  }
};

Napi::Value BufferFenceCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t threads = info[0].As<Napi::Number>().Uint32Value();
  uint32_t buffers = info[1].As<Napi::Number>().Uint32Value();
  uint32_t iterations = info[2].As<Napi::Number>().Uint32Value();
  if (threads == 0 || threads > 64 || buffers == 0 || buffers > 65536 || iterations == 0) {
    Napi::RangeError::New(env, "bufferFenceCheck(threads 1..64, buffers 1..65536, iterations > 0)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Run run(buffers);
  std::vector<std::thread> ts;
  for (uint32_t t = 0; t < threads; t++) {
    ts.emplace_back([&run, t, buffers, iterations] {
      // a waiter handed over by this thread's Release() runs after it, from this loop, as the
      // server posts it to its connection's loop (never nested: the queue can grow long)
      static thread_local std::deque<uint32_t> handed;
      auto drain = [&] {
        while (!handed.empty()) {
          uint32_t b = handed.front();
          handed.pop_front();
          run.Execute(b);
        }
      };
      std::minstd_rand rng(t + 1);
      for (uint32_t i = 0; i < iterations; i++) {
        uint32_t b = rng() % buffers;
        if (run.fence.Enter(b) || run.fence.Wait(b, [b] { handed.push_back(b); })) {
          run.Execute(b);
        } else {
          run.waited++;
        }
        drain();
      }
      drain();
    });
  }
  for (auto& t : ts) t.join();
  // every waiter is handed to the thread whose Release() came before it, which runs it before
  // it ends: once all threads are done, nothing is left waiting
  Napi::Object o = Napi::Object::New(env);
  o.Set("ran", Napi::Number::New(env, double(run.ran)));
  o.Set("overlaps", Napi::Number::New(env, double(run.overlaps)));
  o.Set("waited", Napi::Number::New(env, double(run.waited)));
  return o;
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("bufferFenceCheck", Napi::Function::New(env, BufferFenceCheck, "bufferFenceCheck"));
}

}  // namespace
}  // namespace ibnbd::rdma

void ibnbd::testing::InitBufferFenceCheck(Napi::Env env, Napi::Object exports) { ibnbd::rdma::Init(env, exports); }
