// The RDMA client's bounce buffers: one slot of max_io_size bytes per permit (buf_id), for data
// that lies outside every registered region (admin messages from JS, unregistered buffers).
// The address space for every slot is reserved at connect, but a slot is registered — which
// pins, and so makes resident, each of its pages — only with its group, on first use. Registered
// at once, a session at queue depth 512 held ~62 MiB per path from its connect on, although
// registered guest memory goes zero copy and bounced requests reuse the lowest permits (the
// permit stack is LIFO): 256 idle devices cost 2 MiB each (tests/daemons/client-daemon.test.ts,
// scale).
#pragma once
#include <infiniband/verbs.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

namespace ibnbd::rdma {

class BounceSlots {
 public:
  BounceSlots() = default;
  ~BounceSlots() { Reset(); }
  BounceSlots(const BounceSlots&) = delete;
  BounceSlots& operator=(const BounceSlots&) = delete;

  // Reserves slots × slot_len bytes (not yet resident or registered); frees what it held. 0 or -errno.
  int Reserve(ibv_pd* pd, uint32_t slots, size_t slot_len, int access);
  void Reset();  // deregisters and unmaps; no request may use a slot meanwhile

  uint8_t* slot(uint32_t i) const { return data_ + size_t(i) * slot_len_; }
  // The registration covering slot i, made on its group's first use (any IO thread); null when
  // registering failed.
  ibv_mr* mr(uint32_t i);

 private:
  static constexpr uint32_t kSlotsPerGroup = 8;  // ~1 MiB at the RTRS max IO size
  ibv_pd* pd_ = nullptr;
  int access_ = 0;
  uint8_t* data_ = nullptr;
  size_t len_ = 0, slot_len_ = 0;
  uint32_t groups_ = 0;
  std::unique_ptr<std::atomic<ibv_mr*>[]> mrs_;  // by group
  std::mutex register_mu_;
};

}  // namespace ibnbd::rdma
