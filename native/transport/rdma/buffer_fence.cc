#include "transport/rdma/buffer_fence.h"

namespace ibnbd::rdma {

bool BufferFence::Wait(uint32_t buf_id, std::function<void()> resume) {
  std::lock_guard lock(mu_);
  auto h = handed_.find(buf_id);
  if (h != handed_.end()) {  // the holder completed between our add and this lock
    if (--h->second == 0) handed_.erase(h);
    return true;
  }
  waiting_[buf_id].push_back(std::move(resume));
  return false;
}

void BufferFence::Release(uint32_t buf_id) {
  if (held_[buf_id].fetch_sub(1, std::memory_order_acq_rel) == 1) return;
  std::function<void()> next;
  {
    std::lock_guard lock(mu_);
    auto w = waiting_.find(buf_id);
    if (w == waiting_.end()) {
      handed_[buf_id]++;  // counted in Enter(), not queued yet
      return;
    }
    next = std::move(w->second.front());
    w->second.pop_front();
    if (w->second.empty()) waiting_.erase(w);
  }
  next();
}

}  // namespace ibnbd::rdma
