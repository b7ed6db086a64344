// Entry point of ibnbd.node: every component registers itself (common/module.h).
#include <napi.h>

#include "common/module.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ibnbd::InitModules(env, exports);
  return exports;
}

NODE_API_MODULE(ibnbd, Init)
