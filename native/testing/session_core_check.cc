// The shared session core's timing rules, driven without a network (tests/native/session-core):
//   reconnectorRun(opts)   a core::Reconnector with a scripted dial: when each dial happened,
//                          which paths were given up, and whether Stop() ended it at once;
//   heartbeatTicks(script) a core::Heartbeat fed a script of ticks, receives and a stalled
//                          request, returning each tick's verdict.
// The wires only call these; what they decide is checked here on every run, where the guests'
// soft-RoCE runs could show a wrong back-off only as a slow test.
#include <napi.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "testing/testing.h"
#include "transport/core/liveness.h"
#include "transport/core/reconnector.h"

namespace ibnbd::testing {
namespace {

using transport::core::Heartbeat;
using transport::core::MonotonicNs;
using transport::core::ProgressClock;
using transport::core::Reconnector;

uint32_t U32(const Napi::Object& o, const char* k, uint32_t def) {
  return o.Has(k) ? o.Get(k).As<Napi::Number>().Uint32Value() : def;
}
int32_t I32(const Napi::Object& o, const char* k, int32_t def) {
  return o.Has(k) ? o.Get(k).As<Napi::Number>().Int32Value() : def;
}

// opts: { delayMs, maxAttempts, failures (dials that fail before one succeeds), otherUp,
//         lossDuringDial (a second loss reported while the first successful dial runs),
//         runMs (how long to watch), dialMs (how long each dial takes) }
// One path (index 0) is lost at t=0.
Napi::Value ReconnectorRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    Napi::TypeError::New(env, "reconnectorRun(opts)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  const uint32_t delay_ms = U32(o, "delayMs", 400);
  const int32_t max_attempts = I32(o, "maxAttempts", -1);
  const uint32_t failures = U32(o, "failures", 0);
  const bool other_up = o.Has("otherUp") && o.Get("otherUp").ToBoolean();
  const bool loss_during_dial = o.Has("lossDuringDial") && o.Get("lossDuringDial").ToBoolean();
  const uint32_t run_ms = U32(o, "runMs", 1500);
  const uint32_t dial_ms = U32(o, "dialMs", 0);
  if (run_ms > 10000 || dial_ms > 1000) {
    Napi::RangeError::New(env, "runMs <= 10000, dialMs <= 1000").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  std::mutex mu;
  std::vector<double> dials;  // ms since the loss
  std::vector<uint32_t> gave_up;
  std::atomic<uint32_t> n{0};
  std::atomic<bool> lost_again{false};
  const uint64_t t0 = MonotonicNs();
  auto since = [t0] { return double(MonotonicNs() - t0) / 1e6; };

  Reconnector r;
  Reconnector::Hooks h;
  h.any_path_up = [other_up] { return other_up; };
  h.gave_up = [&](size_t i) {
    std::lock_guard<std::mutex> lk(mu);
    gave_up.push_back(uint32_t(i));
  };
  h.dial = [&](size_t) {
    {
      std::lock_guard<std::mutex> lk(mu);
      dials.push_back(since());
    }
    if (dial_ms) std::this_thread::sleep_for(std::chrono::milliseconds(dial_ms));
    const uint32_t k = n.fetch_add(1);
    if (k < failures) return -ECONNREFUSED;
    if (loss_during_dial && !lost_again.exchange(true)) r.Lost(0);  // died again while coming up
    return 0;
  };
  r.Start(1, delay_ms, max_attempts, std::move(h));
  r.Lost(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(run_ms));
  const uint64_t s0 = MonotonicNs();
  r.Stop();
  const double stop_ms = double(MonotonicNs() - s0) / 1e6;
  const size_t dials_at_stop = dials.size();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));

  std::lock_guard<std::mutex> lk(mu);
  Napi::Object out = Napi::Object::New(env);
  Napi::Array d = Napi::Array::New(env, dials.size());
  for (size_t i = 0; i < dials.size(); i++) d.Set(uint32_t(i), dials[i]);
  out.Set("dials", d);
  Napi::Array g = Napi::Array::New(env, gave_up.size());
  for (size_t i = 0; i < gave_up.size(); i++) g.Set(uint32_t(i), gave_up[i]);
  out.Set("gaveUp", g);
  out.Set("stopMs", stop_ms);
  out.Set("dialsAfterStop", double(dials.size() - dials_at_stop));
  return out;
}

// script: a string, one letter per step: 't' a heartbeat tick, 'r' something received,
// 'a' the heartbeat's ack, 's' a request submitted on an idle path, 'c' a request completed,
// 'w' wait 60 ms. Ticks pass missedMax and ioTimeoutMs; inflight counts s minus c.
// Returns each tick's verdict: "wait", "send", "missed", "stalled".
Napi::Value HeartbeatTicks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "heartbeatTicks(script, missedMax, ioTimeoutMs)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string script = info[0].As<Napi::String>();
  const uint32_t missed_max = info[1].As<Napi::Number>().Uint32Value();
  const uint32_t io_timeout_ms = info[2].As<Napi::Number>().Uint32Value();
  Heartbeat hb;
  ProgressClock progress;
  progress.Reset(MonotonicNs());
  uint64_t inflight = 0;
  std::vector<std::string> verdicts;
  bool rtt_seen = false;
  for (char c : script) {
    const uint64_t now = MonotonicNs();
    switch (c) {
      case 't': {
        const Heartbeat::Verdict v = hb.OnTick(now, missed_max, &progress, inflight, io_timeout_ms);
        verdicts.push_back(v == Heartbeat::Verdict::kSend         ? "send"
                           : v == Heartbeat::Verdict::kWait       ? "wait"
                           : v == Heartbeat::Verdict::kDeadMissed ? "missed"
                                                                  : "stalled");
        break;
      }
      case 'r': hb.OnReceive(); break;
      case 'a': hb.OnReceive(); hb.OnAck(now); rtt_seen = hb.rtt_ns() > 0; break;
      case 's': progress.OnSubmit(now, inflight++); break;
      case 'c': if (inflight) inflight--; progress.OnComplete(now); break;
      case 'w': std::this_thread::sleep_for(std::chrono::milliseconds(60)); break;
      default:
        Napi::RangeError::New(env, std::string("unknown step ") + c).ThrowAsJavaScriptException();
        return env.Undefined();
    }
  }
  Napi::Object out = Napi::Object::New(env);
  Napi::Array a = Napi::Array::New(env, verdicts.size());
  for (size_t i = 0; i < verdicts.size(); i++) a.Set(uint32_t(i), verdicts[i]);
  out.Set("verdicts", a);
  out.Set("rttSeen", rtt_seen);
  return out;
}

}  // namespace

void InitSessionCoreCheck(Napi::Env env, Napi::Object exports) {
  exports.Set("reconnectorRun", Napi::Function::New(env, ReconnectorRun, "reconnectorRun"));
  exports.Set("heartbeatTicks", Napi::Function::New(env, HeartbeatTicks, "heartbeatTicks"));
}

}  // namespace ibnbd::testing
