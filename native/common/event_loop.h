// The threads of the data path. An EventLoop is one epoll thread; the process has one pool of
// them (IoThreads), shared by transport connections, vhost-user virtqueues and io_uring rings, so
// that a request is popped, sent, completed and pushed on the same thread with no hand-off.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace ibnbd {

// Work a loop runs once after the handlers of one epoll_wait batch (and the posted work)
// have run: lets a connection send everything one batch queued with one system call, and a
// virtqueue notify the driver once per batch instead of once per request.
class BatchEndTask {
 public:
  virtual void RunBatchEnd() = 0;

 protected:
  ~BatchEndTask() = default;

 private:
  friend class EventLoop;
  bool batch_end_queued_ = false;
};

// A completion source a loop can poll without a system call (an RDMA CQ: ibv_poll_cq reads
// memory the device writes) whose fd notification must be re-enabled before the loop sleeps
// (ibv_req_notify_cq). While a loop polls (--poll-us) it calls PollOnce() instead of waiting for
// the fd, so the source stays unarmed and raises no events; before every blocking wait it calls
// ArmForSleep(). Both run the source's handlers for what they find.
class PollSource {
 public:
  // Takes whatever completed; true when there was something.
  virtual bool PollOnce() = 0;
  // Re-enables the fd's notification if it is off, then takes what completed before that;
  // true when there was something (the loop then does not sleep).
  virtual bool ArmForSleep() = 0;

 protected:
  ~PollSource() = default;
};

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

  // Loop thread only. Queues t to run at the end of the current batch (once, however often it is
  // queued); from outside the loop thread it runs t at once. Cancel before destroying a queued t.
  void AtBatchEnd(BatchEndTask* t);
  // Loop thread only (or before Start()). A source removed from inside a handler is not called
  // again.
  void AddPollSource(PollSource* s);
  void RemovePollSource(PollSource* s);
  void CancelBatchEnd(BatchEndTask* t);

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

  // Adaptive polling ("--poll-us N"): after a batch that did work, a loop keeps asking epoll
  // without sleeping (yielding the core between empty polls) for up to N microseconds before it
  // blocks again; 0 (the default) never polls. Any thread, at any time: every loop reads it
  // before each wait.
  static void SetPollUs(unsigned us);
  static unsigned PollUs();
  struct PollCounts {
    uint64_t polls = 0;      // non-blocking waits made
    uint64_t poll_hits = 0;  // those that found work
  };
  static PollCounts PollStats();  // summed over the loops; zeros before Get()

 private:
  IoThreads();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ibnbd
