// The native log facility (log.h): a bounded ring of fixed-size lines, drained on the JS thread
// by a thread-safe function that calls the daemon's sink. Exports:
//   setLogSink(fn | null): fn({level, component, msg, session?, device?, path?, dropped?}) gets
//     every line from now on; null goes back to stderr. Either way the previous sink first gets,
//     synchronously, what the ring still holds: a daemon unregisters in its 'exit' handler, so
//     the lines of its last moments come out as JSON too.
//   setLogLevel(n): lines below n (pino's numbers: 10 trace … 50 error) are not even formatted.
#include "common/log.h"

#include <napi.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "common/errors.h"
#include "common/module.h"

namespace ibnbd {
namespace {

// Sized for the worst bursts seen (a flood of refused handshakes is already rate-limited by the
// transport); a longer stall of the JS thread drops lines rather than holding an IO thread.
constexpr size_t kRingSize = 256;

struct Entry {
  int level;
  uint64_t dropped;  // lines dropped just before this one (ring full)
  char component[24];
  char session[72];
  char device[112];
  char path[112];
  char msg[512];
};

void Field(char* dst, size_t size, const char* src) {
  if (!src) {
    dst[0] = '\0';
    return;
  }
  snprintf(dst, size, "%s", src);
}

void CallJs(Napi::Env env, Napi::Function fn, std::nullptr_t*, void*);
using Tsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, void, CallJs>;

std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};

// Everything below is under g_mu, held only to copy one line in or the ring out.
std::mutex g_mu;
Entry g_ring[kRingSize];
size_t g_head = 0, g_count = 0;
uint64_t g_dropped = 0;
bool g_has_sink = false;
bool g_wake_pending = false;  // one TSFN call in flight at most: a burst costs one wake-up
Tsfn g_tsfn;

// JS thread only: the sink, for the synchronous drain. A pointer, never destroyed at static
// destruction (the environment is gone by then); dropped by the cleanup hook.
Napi::FunctionReference* g_sink = nullptr;

const char* LevelName(int level) {
  if (level >= 50) return "error";
  if (level >= 40) return "warn";
  if (level >= 30) return "info";
  if (level >= 20) return "debug";
  return "trace";
}

// The plain-text form: no sink registered, or lines left in the ring when the process ends.
void WriteStderr(const Entry& e) {
  char about[320] = "";
  size_t n = 0;
  for (auto [key, val] : {std::pair{"session", e.session}, {"device", e.device}, {"path", e.path}}) {
    if (val[0] && n < sizeof(about)) n += snprintf(about + n, sizeof(about) - n, " %s=%s", key, val);
  }
  fprintf(stderr, "ibnbd %s %s%s: %s\n", LevelName(e.level), e.component, about, e.msg);
}

void FlushToStderrLocked() {
  for (; g_count > 0; g_count--, g_head = (g_head + 1) % kRingSize) WriteStderr(g_ring[g_head]);
}

Napi::Object ToJs(Napi::Env env, const Entry& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("level", e.level);
  o.Set("component", e.component);
  o.Set("msg", e.msg);
  if (e.session[0]) o.Set("session", e.session);
  if (e.device[0]) o.Set("device", e.device);
  if (e.path[0]) o.Set("path", e.path);
  if (e.dropped) o.Set("dropped", static_cast<double>(e.dropped));
  return o;
}

// On the JS thread: take what the ring holds, then hand each line to the sink.
void Drain(Napi::Env env, Napi::Function fn) {
  static std::vector<Entry> batch;  // JS thread only
  batch.clear();
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_wake_pending = false;
    for (; g_count > 0; g_count--, g_head = (g_head + 1) % kRingSize) batch.push_back(g_ring[g_head]);
  }
  if (env == nullptr) {  // the function is being torn down: keep the lines anyway
    for (const Entry& e : batch) WriteStderr(e);
    return;
  }
  for (const Entry& e : batch) {
    try {
      fn.Call({ToJs(env, e)});
    } catch (const Napi::Error& err) {
      // the sink threw, or JS cannot run any more (the environment is being torn down, with no
      // message): the line is written as text rather than lost
      if (!err.Message().empty()) fprintf(stderr, "ibnbd: the log sink threw: %s\n", err.Message().c_str());
      WriteStderr(e);
    }
  }
}

void CallJs(Napi::Env env, Napi::Function fn, std::nullptr_t*, void*) {
  bool current = true;
  try {
    // a wake-up for a sink replaced since: what the ring holds now is the new sink's
    current = env == nullptr || (g_sink != nullptr && fn.StrictEquals(g_sink->Value()));
  } catch (const Napi::Error&) {
    env = Napi::Env(nullptr);  // JS cannot run any more: Drain writes the lines as text
  }
  if (current) Drain(env, fn);
}

// At environment teardown (process exit): lines still in the ring go to stderr, later ones too;
// the TSFN itself is Node's to finalize, so it is never touched again.
void OnEnvCleanup(void*) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    FlushToStderrLocked();
    g_has_sink = false;
  }
  delete g_sink;
  g_sink = nullptr;
}

void Deliver(const Entry& e) {
  std::unique_lock<std::mutex> lock(g_mu);
  if (!g_has_sink) {
    lock.unlock();
    WriteStderr(e);
    return;
  }
  if (g_count == kRingSize) {
    g_dropped++;
  } else {
    Entry& slot = g_ring[(g_head + g_count) % kRingSize];
    slot = e;
    slot.dropped = g_dropped;
    g_dropped = 0;
    g_count++;
  }
  if (!g_wake_pending && g_tsfn.NonBlockingCall() == napi_ok) g_wake_pending = true;
}

Napi::Value SetLogSink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !(info[0].IsFunction() || info[0].IsNull())) ThrowErrno(env, EINVAL, "setLogSink(fn | null)");
  static bool hook_added = false;
  if (!hook_added) {
    napi_add_env_cleanup_hook(env, OnEnvCleanup, nullptr);
    hook_added = true;
  }
  Tsfn old;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_has_sink) old = g_tsfn;
    g_has_sink = false;  // lines logged from here on go to stderr until the new sink is in
  }
  if (static_cast<napi_threadsafe_function>(old) != nullptr) {
    Drain(env, g_sink->Value());  // the previous sink's lines are not lost
    delete g_sink;
    g_sink = nullptr;
    old.Release();
  }
  if (info[0].IsNull()) return env.Undefined();
  Napi::Function fn = info[0].As<Napi::Function>();
  Tsfn tsfn = Tsfn::New(env, fn, "ibnbd-log", 0, 1);
  // the sink must not keep a daemon alive that has nothing else to do
  tsfn.Unref(env);
  g_sink = new Napi::FunctionReference(Napi::Persistent(fn));
  std::lock_guard<std::mutex> lock(g_mu);
  g_tsfn = tsfn;
  g_has_sink = true;
  return env.Undefined();
}

Napi::Value SetLogLevel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) ThrowErrno(env, EINVAL, "setLogLevel(level)");
  g_min_level.store(info[0].As<Napi::Number>().Int32Value(), std::memory_order_relaxed);
  return env.Undefined();
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("setLogSink", Napi::Function::New(env, SetLogSink, "setLogSink"));
  exports.Set("setLogLevel", Napi::Function::New(env, SetLogLevel, "setLogLevel"));
}

}  // namespace

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_min_level.load(std::memory_order_relaxed); }

void LogMsg(LogLevel level, const LogFields& fields, const char* fmt, ...) {
  if (!LogEnabled(level)) return;
  Entry e;
  e.level = static_cast<int>(level);
  e.dropped = 0;
  Field(e.component, sizeof(e.component), fields.component);
  Field(e.session, sizeof(e.session), fields.session);
  Field(e.device, sizeof(e.device), fields.device);
  Field(e.path, sizeof(e.path), fields.path);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
  va_end(ap);
  // a cut line says so rather than pass for whole
  if (n >= static_cast<int>(sizeof(e.msg))) memcpy(e.msg + sizeof(e.msg) - 4, "...", 4);
  Deliver(e);
}

}  // namespace ibnbd

IBNBD_MODULE(common_log, ibnbd::Init);
