// The reconnect loop both wires share (reconnector.h).
#include "transport/core/reconnector.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>

#include "transport/core/liveness.h"
#include "transport/core/policy.h"

namespace ibnbd::transport::core {

void Reconnector::Start(size_t npaths, uint32_t delay_ms, int32_t max_attempts, Hooks hooks) {
  std::lock_guard<std::mutex> lk(mu_);
  if (thread_.joinable() || stop_) return;
  if (slots_.size() < npaths) slots_.resize(npaths);
  delay_ms_ = delay_ms;
  max_attempts_ = max_attempts;
  hooks_ = std::move(hooks);
  thread_ = std::thread([this] { Run(); });
}

uint64_t Reconnector::BackoffNs(uint32_t attempt) const {
  const bool other_up = hooks_.any_path_up && hooks_.any_path_up();
  return ReconnectBackoffMs(attempt, delay_ms_, other_up) * 1000000ull;
}

void Reconnector::Lost(size_t path) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) return;
    if (slots_.size() <= path) slots_.resize(path + 1);
    Slot& s = slots_[path];
    s.wanted = true;
    s.attempts = 0;
    s.loss_seq++;
    s.next_ns = MonotonicNs() + BackoffNs(0);
  }
  cv_.notify_all();
}

void Reconnector::Stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void Reconnector::Run() {
  pthread_setname_np(pthread_self(), "ibnbd-reconn");
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    uint64_t now = MonotonicNs();
    uint64_t wake = now + 1000000000ull;
    for (size_t i = 0; i < slots_.size() && !stop_; i++) {
      Slot& s = slots_[i];
      if (!s.wanted) continue;
      if (s.next_ns > now) {
        wake = std::min(wake, s.next_ns);
        continue;
      }
      if (max_attempts_ >= 0 && s.attempts >= uint32_t(max_attempts_)) {
        s.wanted = false;
        lk.unlock();
        hooks_.gave_up(i);
        lk.lock();
        continue;
      }
      const uint64_t seq = s.loss_seq;
      lk.unlock();
      const int rc = hooks_.dial(i);
      lk.lock();
      Slot& after = slots_[i];  // slots_ may have grown meanwhile
      if (after.loss_seq == seq) {  // no new loss while dialling
        if (rc == 0) {
          after.wanted = false;
          after.attempts = 0;
        } else {
          after.attempts++;
          after.next_ns = MonotonicNs() + BackoffNs(after.attempts);
        }
      }
      // the next attempt of this path (rescheduled above or by a loss during the dial) counts
      // for this wait as well
      if (after.wanted) wake = std::min(wake, after.next_ns);
      now = MonotonicNs();
    }
    if (stop_) break;
    cv_.wait_for(lk, std::chrono::nanoseconds(wake > now ? wake - now : 0));
  }
}

}  // namespace ibnbd::transport::core
