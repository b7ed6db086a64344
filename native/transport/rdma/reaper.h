// Tears connection resources down on a thread of its own.
//
// rdma_destroy_id can block for as long as the kernel's IB CM holds the id: on the 6.1 guest
// kernel, after a path's address or link went away, `cm_destroy_id_wait_timeout` repeats every
// 10 s and the call does not return. Done on the server's cm thread, that stalled the listener
// for every client; done on a client's reconnect thread, every later attempt of the session.
// So the threads that must stay responsive hand dead paths' QPs, ids and memory to the reaper.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace ibnbd::rdma {

class Reaper {
 public:
  static Reaper& Get();  // one per process, its thread started on first use

  // Runs job on the reaper thread, after the jobs posted before it.
  void Post(std::function<void()> job);
  // Destroys *p on the reaper thread.
  template <class T>
  void Delete(std::unique_ptr<T> p) {
    if (!p) return;
    auto held = std::make_shared<std::unique_ptr<T>>(std::move(p));
    Post([held] { held->reset(); });
  }
  // Waits up to timeout_ms until every job posted so far has run; false if one still runs
  // (stuck in the kernel), and the caller goes on without it.
  bool Drain(int timeout_ms);

 private:
  Reaper();
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool busy_ = false;
};

}  // namespace ibnbd::rdma
