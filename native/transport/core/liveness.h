// How both wires, on both sides, tell a live path from a dead one, written once:
//   * Heartbeat: RTRS's rule. Each heartbeat interval a path counts one miss; anything received
//     on the path clears the count; a heartbeat goes out only when none is outstanding; more than
//     heartbeat_missed_max misses in a row and the path is dead.
//   * ProgressClock, the per-request timeout (io_timeout, client side): a path that has requests
//     outstanding and completes none of them for io_timeout is dead as well. A silent cut
//     (packets dropped, nothing refused) is found by this within io_timeout instead of after
//     heartbeat_missed_max heartbeats, and so is a peer that answers heartbeats but no IO.
// Both are asked on the path's heartbeat tick (Heartbeat::OnTick), so the io_timeout bound is
// io_timeout plus one heartbeat interval. The wires supply only the tick, the frame or
// immediate that carries a heartbeat, and what "the path is dead" does. Relaxed atomics: a tick
// that reads a slightly stale value only decides one tick later.
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

class Heartbeat {
 public:
  enum class Verdict {
    kWait,          // a heartbeat is outstanding: nothing to send this tick
    kSend,          // send one heartbeat now
    kDeadMissed,    // more than missed_max ticks without receiving anything
    kDeadStalled,   // requests outstanding, none completed for io_timeout (ProgressClock)
  };

  // On the path's heartbeat tick. progress/inflight/io_timeout_ms: the client's per-request
  // timeout (a server passes nullptr).
  Verdict OnTick(uint64_t now_ns, uint32_t missed_max, const ProgressClock* progress = nullptr,
                 uint64_t inflight = 0, uint32_t io_timeout_ms = 0) {
    if (progress && progress->Stalled(now_ns, inflight, io_timeout_ms)) return Verdict::kDeadStalled;
    const uint32_t missed = missed_.load(std::memory_order_relaxed);
    if (missed > missed_max) return Verdict::kDeadMissed;
    missed_.fetch_add(1, std::memory_order_relaxed);
    if (missed != 0) return Verdict::kWait;
    sent_ns_.store(now_ns, std::memory_order_relaxed);
    return Verdict::kSend;
  }
  // Anything at all arrived on the path (a response, a heartbeat, its ack).
  void OnReceive() { missed_.store(0, std::memory_order_relaxed); }
  // The ack of our heartbeat: the round trip since the last kSend.
  void OnAck(uint64_t now_ns) {
    const uint64_t sent = sent_ns_.load(std::memory_order_relaxed);
    if (sent && now_ns >= sent) rtt_ns_.store(now_ns - sent, std::memory_order_relaxed);
  }
  // A new connection of the path.
  void Reset() { missed_.store(0, std::memory_order_relaxed); }
  uint64_t rtt_ns() const { return rtt_ns_.load(std::memory_order_relaxed); }

  static const char* Why(Verdict v) {
    return v == Verdict::kDeadStalled ? "io_timeout: no request completed on the path in time"
                                      : "heartbeat timeout";
  }

 private:
  std::atomic<uint32_t> missed_{0};
  std::atomic<uint64_t> sent_ns_{0};
  std::atomic<uint64_t> rtt_ns_{0};
};

}  // namespace ibnbd::transport::core
