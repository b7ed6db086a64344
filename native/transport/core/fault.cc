#include "transport/core/fault.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

namespace ibnbd::transport {

namespace {

// the test learns that the window is open from the file, not from a guess of how long the peer
// takes to get here (a guess that failed under CI load)
void Mark() {
  if (const char* mark = getenv("IBNBD_FAULT_MARK_FILE")) {
    int fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
  }
}

}  // namespace

void FaultDelay(const char* name) {
  const char* d = getenv(name);
  if (!d) return;
  long ms = strtol(d, nullptr, 10);
  if (ms <= 0 || ms > 10000) return;
  Mark();
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

bool FaultStallWrite(uint64_t offset, unsigned* ms) {
  static const char* spec = getenv("IBNBD_FAULT_STALL_WRITE");
  static std::atomic<bool> fired{false};
  if (spec == nullptr || fired.load(std::memory_order_relaxed)) return false;
  char* end = nullptr;
  unsigned long long at = strtoull(spec, &end, 10);
  if (end == nullptr || *end != ':' || at != offset) return false;
  long d = strtol(end + 1, nullptr, 10);
  if (d <= 0 || d > 60000 || fired.exchange(true)) return false;
  *ms = static_cast<unsigned>(d);
  Mark();
  return true;
}

bool FaultReplayAuth(uint8_t* msg, size_t len) {
  const char* file = getenv("IBNBD_FAULT_REPLAY_AUTH");
  if (!file || !*file) return false;
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {  // recorded before: send the recording instead
    ssize_t n = read(fd, msg, len);
    close(fd);
    return n == static_cast<ssize_t>(len);
  }
  fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = write(fd, msg, len) == static_cast<ssize_t>(len);
  close(fd);
  return ok;
}

}  // namespace ibnbd::transport
