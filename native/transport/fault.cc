#include "transport/fault.h"

#include <chrono>
#include <cstdlib>
#include <thread>

namespace ibnbd::transport {

void FaultDelay(const char* name) {
  const char* d = getenv(name);
  if (!d) return;
  long ms = strtol(d, nullptr, 10);
  if (ms > 0 && ms <= 10000) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

}  // namespace ibnbd::transport
