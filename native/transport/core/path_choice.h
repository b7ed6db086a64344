// Which connected path a request goes on (RTRS's mp_policy), written once for both wires: the
// wire says which of its paths can take the request now and what each one's load is.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace ibnbd::transport::core {

enum class MpPolicy { kMinInflight, kRoundRobin, kMinLatency };

// RTRS's policy names (docs/protocol.md, "Multipath"); false for any other, which both wires
// refuse with -EINVAL when the session is created.
inline bool ParseMpPolicy(const std::string& s, MpPolicy* out) {
  if (s == "min-inflight") return *out = MpPolicy::kMinInflight, true;
  if (s == "round-robin") return *out = MpPolicy::kRoundRobin, true;
  if (s == "min-latency") return *out = MpPolicy::kMinLatency, true;
  return false;
}

struct PathLoad {
  bool usable = false;      // connected, and able to send from the calling thread
  uint64_t inflight = 0;    // min-inflight
  uint64_t rtt_ns = 0;      // min-latency: the last heartbeat round trip
};

// The index of the chosen path among n, or -1 when none is usable. load(i) describes path i;
// rr is the session's round-robin cursor. Ties go to the lower index.
template <class LoadFn>
long ChoosePath(MpPolicy policy, size_t n, std::atomic<uint32_t>& rr, LoadFn load) {
  if (policy == MpPolicy::kRoundRobin) {
    uint32_t start = rr.fetch_add(1, std::memory_order_relaxed);
    for (size_t k = 0; k < n; k++) {
      size_t i = (start + k) % n;
      if (load(i).usable) return long(i);
    }
    return -1;
  }
  long best = -1;
  uint64_t best_v = 0;
  for (size_t i = 0; i < n; i++) {
    PathLoad l = load(i);
    if (!l.usable) continue;
    uint64_t v = policy == MpPolicy::kMinLatency ? l.rtt_ns : l.inflight;
    if (best < 0 || v < best_v) best = long(i), best_v = v;
  }
  return best;
}

}  // namespace ibnbd::transport::core
