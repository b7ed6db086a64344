// The reconnect loop of a client session, written once for both wires: one thread per session
// ("ibnbd-reconn") that dials each lost path again on the back-off of policy.h, gives a path up
// after max_attempts failed attempts in a row (-1: never; 0: a lost path is never dialled), and
// stops with the session. The wire supplies the dial (blocking: connect, handshake, the path's
// connections on their loops) and what giving up means for its path state.
//
// Threads: Lost() from anywhere (an IO loop that saw the path die, the connecting
// thread); the hooks run on the reconnect thread only, never under mu_. A loss reported while
// that path's dial is running is kept (loss_seq): a dial that succeeds only clears the losses it
// saw, so a path that died again while it came up is dialled again.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ibnbd::transport::core {

class Reconnector {
 public:
  struct Hooks {
    std::function<int(size_t path)> dial;        // 0: the path is up again
    std::function<bool()> any_path_up;           // another path carries the session's IO
    std::function<void(size_t path)> gave_up;    // max_attempts reached: the path is closed
  };

  Reconnector() = default;
  Reconnector(const Reconnector&) = delete;
  Reconnector& operator=(const Reconnector&) = delete;
  ~Reconnector() { Stop(); }

  // Starts the thread; a Lost() before Start is remembered.
  void Start(size_t npaths, uint32_t delay_ms, int32_t max_attempts, Hooks hooks);
  // The path is lost (or its first connect failed while another path came up): its first
  // attempt goes after ReconnectBackoffMs(0) (policy.h), counted from now.
  void Lost(size_t path);
  // Ends the thread (waits for a dial in progress). Idempotent.
  void Stop();
  bool running() const { return thread_.joinable(); }

 private:
  struct Slot {
    bool wanted = false;
    uint32_t attempts = 0;    // failed attempts since the loss
    uint64_t next_ns = 0;
    uint64_t loss_seq = 0;
  };
  uint64_t BackoffNs(uint32_t attempt) const;
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> slots_;
  uint32_t delay_ms_ = 2000;
  int32_t max_attempts_ = -1;
  Hooks hooks_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ibnbd::transport::core
