#include "server/device.h"

#include <unistd.h>

namespace ibnbd::server {

Device::~Device() {
  if (write_fd >= 0 && write_fd != read_fd) close(write_fd);
  if (read_fd >= 0) close(read_fd);
}

bool Device::TryStart() {
  std::lock_guard<std::mutex> lk(mu);
  if (detached) return false;
  inflight.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void Device::IoDone() {
  if (inflight.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  std::function<void()> fn;
  {
    std::lock_guard<std::mutex> lk(mu);
    if (!detached || !on_drained) return;
    if (inflight.load() != 0) return;
    fn = std::move(on_drained);
    on_drained = nullptr;
  }
  fn();
}

void Device::Detach(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lk(mu);
    detached = true;
    if (inflight.load() != 0) {
      on_drained = std::move(fn);
      return;
    }
  }
  fn();
}

}  // namespace ibnbd::server
