// Each native folder registers its JS-facing classes and functions here, so adding a component
// never edits a shared file: IBNBD_MODULE(name, init) in any .cc runs init(env, exports) at load.
#pragma once
#include <napi.h>

namespace ibnbd {

using ModuleInit = void (*)(Napi::Env env, Napi::Object exports);

struct ModuleRegistration {
  ModuleRegistration(const char* name, ModuleInit init);
};

// Runs every registered init in name order (deterministic, independent of link order).
void InitModules(Napi::Env env, Napi::Object exports);

}  // namespace ibnbd

#define IBNBD_MODULE(name, init) \
  static ::ibnbd::ModuleRegistration ibnbd_module_registration_##name(#name, init)
