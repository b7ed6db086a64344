#include "common/module.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace ibnbd {
namespace {

std::vector<std::pair<std::string, ModuleInit>>& Registry() {
  static std::vector<std::pair<std::string, ModuleInit>> modules;
  return modules;
}

}  // namespace

ModuleRegistration::ModuleRegistration(const char* name, ModuleInit init) {
  Registry().emplace_back(name, init);
}

void InitModules(Napi::Env env, Napi::Object exports) {
  auto modules = Registry();
  std::sort(modules.begin(), modules.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [name, init] : modules) init(env, exports);
}

}  // namespace ibnbd
