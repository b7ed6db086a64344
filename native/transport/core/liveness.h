// A path's progress clock, for the per-request timeout (io_timeout) both wires apply the same
// way: a path that has requests outstanding and completes none of them for io_timeout is
// declared dead, failed over and reconnected. A silent cut (packets dropped, nothing refused) is
// found by this within io_timeout instead of after heartbeat_missed_max heartbeats, and so is a
// peer that answers heartbeats but no IO. Checked on the path's heartbeat tick, so the bound is
// io_timeout plus one heartbeat interval. Relaxed atomics: a tick that reads a slightly stale
// value only decides one tick later.
#pragma once
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace ibnbd::transport::core {

inline uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

class ProgressClock {
 public:
  // A request goes out on the path; inflight_before is the path's count before this one.
  void OnSubmit(uint64_t now_ns, uint64_t inflight_before) {
    if (inflight_before == 0) busy_since_ns_.store(now_ns, std::memory_order_relaxed);
  }
  // A response came back on the path (any result).
  void OnComplete(uint64_t now_ns) { last_done_ns_.store(now_ns, std::memory_order_relaxed); }
  // A new connection of the path: the old times mean nothing any more.
  void Reset(uint64_t now_ns) {
    busy_since_ns_.store(now_ns, std::memory_order_relaxed);
    last_done_ns_.store(now_ns, std::memory_order_relaxed);
  }
  // true: requests are outstanding and none completed for timeout_ms (0: no timeout).
  bool Stalled(uint64_t now_ns, uint64_t inflight, uint32_t timeout_ms) const {
    if (inflight == 0 || timeout_ms == 0) return false;
    const uint64_t since = std::max(busy_since_ns_.load(std::memory_order_relaxed),
                                    last_done_ns_.load(std::memory_order_relaxed));
    return now_ns > since && now_ns - since > uint64_t(timeout_ms) * 1000000ull;
  }

 private:
  std::atomic<uint64_t> busy_since_ns_{0};
  std::atomic<uint64_t> last_done_ns_{0};
};

}  // namespace ibnbd::transport::core
