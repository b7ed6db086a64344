// logBurst(n, level): n lines through the product's native log facility (common/log.h) from a
// thread of its own, as an IO thread would log, while the JS thread waits for it. The sink cannot
// drain meanwhile, so a burst past the ring's size shows the drops and their count
// (tests/native/native-log.test.ts). Each line carries session, device and path fields.
#include <cerrno>
#include <cstdint>
#include <thread>

#include "common/errors.h"
#include "common/log.h"
#include "testing/testing.h"

namespace ibnbd::testing {
namespace {

Napi::Value LogBurst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) ThrowErrno(env, EINVAL, "logBurst(n, level)");
  const int64_t n = info[0].As<Napi::Number>().Int64Value();
  const auto level = static_cast<LogLevel>(info[1].As<Napi::Number>().Int32Value());
  std::thread t([n, level] {
    for (int64_t i = 0; i < n; i++)
      LogMsg(level, {.component = "test", .session = "s1", .device = "ibnbd7", .path = "ip:127.0.0.1:1"},
             "burst line %lld of %lld, with \"quotes\"", static_cast<long long>(i), static_cast<long long>(n));
  });
  t.join();
  return env.Undefined();
}

}  // namespace

void InitLogBurst(Napi::Env env, Napi::Object exports) {
  exports.Set("logBurst", Napi::Function::New(env, LogBurst, "logBurst"));
}

}  // namespace ibnbd::testing
