#include "transport/rdma/bounce_slots.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>

namespace ibnbd::rdma {

int BounceSlots::Reserve(ibv_pd* pd, uint32_t slots, size_t slot_len, int access) {
  Reset();
  size_t len = std::max<size_t>((size_t(slots) * slot_len + 4095) & ~size_t(4095), 4096);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return -errno;
  data_ = static_cast<uint8_t*>(p);
  len_ = len;
  slot_len_ = slot_len;
  pd_ = pd;
  access_ = access;
  groups_ = (slots + kSlotsPerGroup - 1) / kSlotsPerGroup;
  mrs_ = std::make_unique<std::atomic<ibv_mr*>[]>(groups_);
  for (uint32_t g = 0; g < groups_; g++) mrs_[g].store(nullptr, std::memory_order_relaxed);
  return 0;
}

ibv_mr* BounceSlots::mr(uint32_t i) {
  uint32_t g = i / kSlotsPerGroup;
  if (g >= groups_) return nullptr;
  if (ibv_mr* m = mrs_[g].load(std::memory_order_acquire)) return m;
  std::lock_guard lock(register_mu_);
  ibv_mr* m = mrs_[g].load(std::memory_order_relaxed);
  if (!m) {
    size_t off = size_t(g) * kSlotsPerGroup * slot_len_;
    m = ibv_reg_mr(pd_, data_ + off, std::min(kSlotsPerGroup * slot_len_, len_ - off), access_);
    if (m) mrs_[g].store(m, std::memory_order_release);
  }
  return m;
}

void BounceSlots::Reset() {
  for (uint32_t g = 0; g < groups_; g++) {
    if (ibv_mr* m = mrs_[g].exchange(nullptr)) ibv_dereg_mr(m);
  }
  if (data_) munmap(data_, len_);
  data_ = nullptr;
  len_ = slot_len_ = 0;
  groups_ = 0;
  mrs_.reset();
}

}  // namespace ibnbd::rdma
