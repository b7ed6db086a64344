#include "transport/core/fault.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>

namespace ibnbd::transport {

void FaultDelay(const char* name) {
  const char* d = getenv(name);
  if (!d) return;
  long ms = strtol(d, nullptr, 10);
  if (ms <= 0 || ms > 10000) return;
  // the test learns that the window is open from the file, not from a guess of how long the
  // peer takes to get here (a guess that failed under CI load)
  if (const char* mark = getenv("IBNBD_FAULT_MARK_FILE")) {
    int fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

}  // namespace ibnbd::transport
