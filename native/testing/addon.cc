// Entry point of ibnbd_test.node, the test and benchmark bindings (testing.h).
#include <napi.h>

#include "testing/testing.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ibnbd::testing::InitBufferFenceCheck(env, exports);
  ibnbd::testing::InitProtoCodec(env, exports);
  ibnbd::testing::InitTcpFrames(env, exports);
  ibnbd::testing::InitTransportBench(env, exports);
  ibnbd::testing::InitSessionCoreCheck(env, exports);
  ibnbd::testing::InitRtrsAuth(env, exports);
  ibnbd::testing::InitLogBurst(env, exports);
  return exports;
}

NODE_API_MODULE(ibnbd_test, Init)
