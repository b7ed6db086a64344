// Per-operation IO counters for the Prometheus endpoint (docs/operations.md, "Metrics"), shared by
// the client's vhost devices (one set per virtqueue) and the server's devices (one set per device
// of a session). The IO threads write them as they complete requests; JavaScript reads a snapshot
// only when /metrics is scraped, so no request ever enters JS for its metrics.
//
// Why relaxed atomics and fixed arrays: the hot path must take no lock and allocate nothing. A
// completion costs a clock read and four uncontended relaxed increments on memory its thread
// already owns in practice (a virtqueue is served by one IO thread; a server device by the
// threads of its session's connections). A scrape may see counters from slightly different
// instants, which Prometheus tolerates; each counter on its own only ever grows.
#pragma once
#include <time.h>

#include <atomic>
#include <cstdint>

namespace ibnbd {

// The operations counted apart; kOther is what has no IO of its own (GET_ID, SECURE_ERASE,
// unsupported types) so that the totals still add up to every request answered.
enum class MetricOp : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes, kOther };
constexpr unsigned kMetricOps = 6;
constexpr const char* kMetricOpNames[kMetricOps] = {"read",    "write",        "flush",
                                                    "discard", "write_zeroes", "other"};

// Why a request failed, in the few kinds an operator acts on differently: the device or the
// server said no (io), the request was malformed or out of range (invalid), the operation is not
// supported there (unsupported), the network lost it or the session was closed (transport).
enum class ErrorKind : uint8_t { kIo, kInvalid, kUnsupported, kTransport };
constexpr unsigned kErrorKinds = 4;
constexpr const char* kErrorKindNames[kErrorKinds] = {"io", "invalid", "unsupported", "transport"};

// Latency buckets: upper bounds 8 µs · 2^i for i < kLatencyBounds (8 µs … about 4.2 s), and one
// overflow bucket. Powers of two make the bucket a count-leading-zeros, no search.
constexpr unsigned kLatencyBounds = 20;
constexpr uint64_t kLatencyFirstBoundUs = 8;

inline uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

inline unsigned LatencyBucket(uint64_t ns) {
  // rounded up: a bucket holds what is at most its bound (Prometheus' le), to the nanosecond
  const uint64_t us = (ns + 999) / 1000;
  if (us <= kLatencyFirstBoundUs) return 0;
  // ceil(log2(us)) - log2(8): the smallest i with us <= 8 << i
  const unsigned i = unsigned(64 - __builtin_clzll(us - 1)) - 3;
  return i < kLatencyBounds ? i : kLatencyBounds;
}

// A plain copy, summed over queues or read once per scrape.
struct IoOpSnapshot {
  uint64_t requests = 0;  // answered, any result
  uint64_t bytes = 0;     // data (read/write) or range (discard/write_zeroes) of the successful ones
  uint64_t errors[kErrorKinds] = {};
  uint64_t latency_ns_sum = 0;
  uint64_t buckets[kLatencyBounds + 1] = {};  // not cumulative; the last one is the overflow
};

struct IoSnapshot {
  IoOpSnapshot ops[kMetricOps];
};

class IoMetrics {
 public:
  // On the thread completing the request. kind is ignored when ok.
  void Record(MetricOp op, bool ok, ErrorKind kind, uint64_t bytes, uint64_t start_ns) {
    Op& o = ops_[unsigned(op)];
    const uint64_t ns = MonotonicNs() - start_ns;
    o.requests.fetch_add(1, std::memory_order_relaxed);
    if (ok)
      o.bytes.fetch_add(bytes, std::memory_order_relaxed);
    else
      o.errors[unsigned(kind)].fetch_add(1, std::memory_order_relaxed);
    o.latency_ns_sum.fetch_add(ns, std::memory_order_relaxed);
    o.buckets[LatencyBucket(ns)].fetch_add(1, std::memory_order_relaxed);
  }

  // Any thread, at scrape time (or for `ibnbd show`): adds this set to *out.
  void AddTo(IoSnapshot* out) const {
    for (unsigned i = 0; i < kMetricOps; i++) {
      const Op& o = ops_[i];
      IoOpSnapshot& s = out->ops[i];
      s.requests += o.requests.load(std::memory_order_relaxed);
      s.bytes += o.bytes.load(std::memory_order_relaxed);
      for (unsigned k = 0; k < kErrorKinds; k++) s.errors[k] += o.errors[k].load(std::memory_order_relaxed);
      s.latency_ns_sum += o.latency_ns_sum.load(std::memory_order_relaxed);
      for (unsigned b = 0; b <= kLatencyBounds; b++) s.buckets[b] += o.buckets[b].load(std::memory_order_relaxed);
    }
  }

 private:
  struct Op {
    std::atomic<uint64_t> requests{0}, bytes{0}, latency_ns_sum{0};
    std::atomic<uint64_t> errors[kErrorKinds] = {};
    std::atomic<uint64_t> buckets[kLatencyBounds + 1] = {};
  };
  Op ops_[kMetricOps];
};

}  // namespace ibnbd
