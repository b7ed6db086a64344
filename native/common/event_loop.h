// The threads of the data path. An EventLoop is one epoll thread; the process has one pool of
// them (IoThreads), shared by transport connections, vhost-user virtqueues and io_uring rings, so
// that a request is popped, sent, completed and pushed on the same thread with no hand-off.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace ibnbd {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t epoll_events)>;

  explicit EventLoop(std::string name);
  ~EventLoop();  // Stop()s and joins
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  void Start();
  void Stop();  // from another thread; runs posted work first, then joins

  // fd registration: on the loop thread, or before Start(). Returns 0 or -errno.
  // Remove() is safe from inside any handler: events already fetched for that fd are dropped.
  int Add(int fd, uint32_t epoll_events, Handler handler);
  int Modify(int fd, uint32_t epoll_events);
  int Remove(int fd);

  // Run fn on the loop thread (FIFO). Post() from any thread; RunSync() waits, inline when
  // already on the loop thread.
  void Post(std::function<void()> fn);
  void RunSync(const std::function<void()>& fn);

  bool InLoop() const;
  const std::string& name() const;
  unsigned index() const;  // position in IoThreads, or ~0u for a loop outside the pool

  static EventLoop* Current();  // the loop running on this thread, or nullptr

 private:
  friend class IoThreads;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The process-wide pool of IO threads ("--io-threads N"). Loop i is named "ibnbd-io<i>".
class IoThreads {
 public:
  static void Configure(unsigned count);  // before the first Get(); default 1
  static bool Started();                  // Get() already ran: Configure() has no effect now
  static IoThreads& Get();                // starts the loops on first use
  unsigned size() const;
  EventLoop& loop(unsigned i);            // i modulo size()

 private:
  IoThreads();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ibnbd
