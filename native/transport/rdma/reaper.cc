#include "transport/rdma/reaper.h"

#include <chrono>

namespace ibnbd::rdma {

Reaper& Reaper::Get() {
  // never destroyed: its thread may be blocked in the kernel when the process exits
  static Reaper* r = new Reaper();
  return *r;
}

Reaper::Reaper() { std::thread([this] { Run(); }).detach(); }

void Reaper::Post(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_all();
}

bool Reaper::Drain(int timeout_ms) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return jobs_.empty() && !busy_; });
}

void Reaper::Run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return !jobs_.empty(); });
    std::function<void()> job = std::move(jobs_.front());
    jobs_.pop_front();
    busy_ = true;
    lock.unlock();
    job();
    job = nullptr;  // what it captured goes here too, not under the lock
    lock.lock();
    busy_ = false;
    cv_.notify_all();
  }
}

}  // namespace ibnbd::rdma
