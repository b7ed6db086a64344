// The session's permits (request ids 0..queue_depth-1, RTRS's buffer ids), shared by all its
// paths, written once for both wires: a request takes one before it goes out and keeps it
// across a failover; when none is free it waits in FIFO order and is handed the next one given
// back. A waiter is whatever the wire needs to start the request later on its own thread (TCP:
// the request; RDMA: the request and its loop).
#pragma once
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

namespace ibnbd::transport::core {

template <class Waiter>
class PermitPool {
 public:
  // Ids 0..n-1 free, once: the first path to connect sizes the pool; false when it was sized.
  bool InitOnce(uint32_t n) {
    std::lock_guard<std::mutex> lk(mu_);
    if (sized_) return false;
    sized_ = true;
    free_.clear();
    for (uint32_t i = n; i > 0; i--) free_.push_back(i - 1);
    return true;
  }

  // true: *id is the caller's. false: w waits, behind the waiters before it, and Put() hands it
  // an id.
  bool GetOrWait(const Waiter& w, uint32_t* id) {
    std::lock_guard<std::mutex> lk(mu_);
    if (waiters_.empty() && !free_.empty()) {
      *id = free_.back();
      free_.pop_back();
      return true;
    }
    waiters_.push_back(w);
    return false;
  }

  // Gives id back: the waiter that owns it now, or nothing (id is free).
  std::optional<Waiter> Put(uint32_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!waiters_.empty()) {
      Waiter w = waiters_.front();
      waiters_.pop_front();
      return w;
    }
    free_.push_back(id);
    return std::nullopt;
  }

  // Every waiter, for a session that closes.
  std::deque<Waiter> TakeWaiters() {
    std::lock_guard<std::mutex> lk(mu_);
    std::deque<Waiter> w;
    w.swap(waiters_);
    return w;
  }

 private:
  std::mutex mu_;
  bool sized_ = false;
  std::vector<uint32_t> free_;
  std::deque<Waiter> waiters_;
};

}  // namespace ibnbd::transport::core
