// EventLoop: one epoll thread. Handlers are looked up by a registration id carried in the epoll
// event, never by pointer, so Remove() from inside a handler simply makes later events of the
// same epoll_wait batch find nothing. Post() queues under a mutex and wakes the thread with an
// eventfd.
//
// Adaptive polling (IoThreads::SetPollUs, "--poll-us"): when a batch did work, the next request
// or completion usually follows within microseconds (the other side of a QD1 round trip, the
// next kick of a busy virtqueue). Sleeping in epoll_wait(-1) for it costs a scheduler wake-up
// each time, so for up to poll_us after the last work the loop asks epoll with timeout 0
// instead, yielding the core between empty polls; once a window passes with nothing, it blocks
// as before. Idle, a loop therefore spends at most one window (≤ 1 ms) per wake-up polling,
// never a whole core.
//
// What the wires see while a loop polls:
//  - TCP (tcp/client_io_conn.cc, tcp/server_conn.cc): a handler runs only for an fd epoll
//    reports ready, and reads until the socket is drained, skipping the read that would only
//    say EAGAIN; polling adds no system call of theirs, only the epoll_wait(0) calls themselves.
//  - RDMA (rdma/common.cc, Conn): the CQ is a PollSource. Its completion channel fd is in the
//    epoll set for the sleeping loop; while the loop polls it calls ibv_poll_cq itself (memory
//    the device writes, no system call) and leaves the CQ unarmed, so no CQ event is raised
//    (an interrupt on hardware, a kernel work item on rxe) and none is read; before the loop
//    sleeps it re-arms the CQ (ibv_req_notify_cq) and drains it once more, so a completion
//    that came in between is not left waiting for an event that will not come. Interrupt-
//    driven, this is the same one read and one re-arm per wake-up as before.
//  - A heartbeat or sweep timerfd tick is work too and opens a window: ≤ 1 ms of polling per
//    tick, a tick a second or rarer per path, a negligible share of a core.
#include "common/event_loop.h"

#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/log.h"

namespace ibnbd {

namespace {
thread_local EventLoop* current_loop = nullptr;
constexpr uint64_t kWakeId = 0;  // registration id of the eventfd
// Process-wide, read by every loop before each wait (relaxed: a new value reaching a loop one
// iteration late is harmless), so SIGHUP can change it while IO runs.
std::atomic<unsigned> poll_us{0};

uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

// Only the loop's own thread writes its counters: a plain load and store, not a locked
// read-modify-write, per poll; other threads read them whole (relaxed) for the stats.
void Bump(std::atomic<uint64_t>& c) { c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }
}  // namespace

struct EventLoop::Impl {
  std::string name;
  unsigned index = ~0u;
  int epfd = -1;
  int wakefd = -1;
  std::thread thread;
  std::atomic<bool> running{false};
  std::atomic<bool> stopping{false};
  std::thread::id loop_thread;

  std::mutex mu;
  std::deque<std::function<void()>> posted;

  // Only touched on the loop thread (or before Start()).
  struct Entry {
    int fd;
    Handler handler;
  };
  uint64_t next_id = 1;
  std::unordered_map<uint64_t, Entry> by_id;
  std::unordered_map<int, uint64_t> id_of_fd;
  std::vector<BatchEndTask*> batch_end;
  std::vector<PollSource*> poll_sources;  // nullptr: removed while they were being called

  // Calls f on every source; true when one of them found work.
  template <class F>
  bool CallSources(F f) {
    bool found = false;
    for (size_t i = 0; i < poll_sources.size(); i++) {  // f may add or remove sources
      PollSource* s = poll_sources[i];
      if (s && f(s)) found = true;
    }
    std::erase(poll_sources, nullptr);
    return found;
  }

  // Adaptive polling (top of the file): waits made with timeout 0, and those that found work.
  std::atomic<uint64_t> polls{0};
  std::atomic<uint64_t> poll_hits{0};

  // Tasks may queue further tasks (a flush that completes requests inline): run until none.
  void RunBatchEnd() {
    while (!batch_end.empty()) {
      std::vector<BatchEndTask*> now;
      now.swap(batch_end);
      for (BatchEndTask* t : now) {
        if (!t) continue;  // cancelled
        t->batch_end_queued_ = false;
        t->RunBatchEnd();
      }
    }
  }

  void Wake() {
    uint64_t one = 1;
    ssize_t n = write(wakefd, &one, sizeof(one));
    (void)n;  // EAGAIN only when the counter is saturated: already awake
  }

  // Returns true when the queue was empty after running.
  void RunPosted() {
    uint64_t v;
    ssize_t n = read(wakefd, &v, sizeof(v));
    (void)n;
    for (;;) {
      std::deque<std::function<void()>> batch;
      {
        std::lock_guard<std::mutex> lk(mu);
        batch.swap(posted);
      }
      if (batch.empty()) return;
      for (auto& fn : batch) fn();
    }
  }

  void Run(EventLoop* self) {
    current_loop = self;
    loop_thread = std::this_thread::get_id();
    std::string tname = name.substr(0, 15);
    pthread_setname_np(pthread_self(), tname.c_str());
    std::vector<epoll_event> events(64);
    uint64_t last_work_ns = 0;  // when the last batch with work ended; 0: not polling
    for (;;) {
      // poll_us 0 (the default): one relaxed load, then the blocking wait as without polling
      const unsigned window_us = poll_us.load(std::memory_order_relaxed);
      bool polling = false;
      if (window_us != 0 && last_work_ns != 0) {
        polling = MonotonicNs() - last_work_ns < uint64_t(window_us) * 1000u;
        if (!polling) last_work_ns = 0;  // the window passed empty: sleep until the next event
      }
      // the sources: polled in the window; else armed before the blocking wait, which is
      // skipped when arming found work (its handlers ran; the batch end below follows them)
      bool sourced = false;
      if (!poll_sources.empty()) {
        sourced = polling ? CallSources([](PollSource* s) { return s->PollOnce(); })
                          : CallSources([](PollSource* s) { return s->ArmForSleep(); });
      }
      int n = epoll_wait(epfd, events.data(), static_cast<int>(events.size()),
                         polling || sourced ? 0 : -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        LogMsg(LogLevel::kError, {"event-loop"}, "%s: epoll_wait: %s", name.c_str(), strerror(errno));
        break;
      }
      if (polling) {
        Bump(polls);
        if (n == 0 && !sourced) {
          // Nothing yet: let any other runnable thread on this core go first. The work we wait
          // for is often produced by one (the peer daemon's IO thread, the guest's vCPU, the
          // disk's completion): on a busy host a poll without the yield took the very CPU the
          // answer needed (2 cores, both daemons polling: QD1 IOPS fell to 0.4×; with it, hits
          // rose from < 1 % to 15-35 % of polls). Uncontended, it returns at once.
          sched_yield();
          continue;
        }
        Bump(poll_hits);
      }
      bool wake = false;
      for (int i = 0; i < n; i++) {
        uint64_t id = events[i].data.u64;
        if (id == kWakeId) {
          wake = true;
          continue;
        }
        auto it = by_id.find(id);
        if (it == by_id.end()) continue;  // removed by an earlier handler of this batch
        // Copy: the handler may Remove() itself, destroying the stored std::function.
        Handler h = it->second.handler;
        h(events[i].events);
      }
      RunBatchEnd();
      if (wake) {
        RunPosted();
        RunBatchEnd();
      }
      if (stopping.load(std::memory_order_acquire)) {
        RunPosted();
        RunBatchEnd();
        break;
      }
      // this batch had events (a blocking wait returns none only on EINTR): the window
      // (re)starts from its end
      if (window_us != 0) last_work_ns = MonotonicNs();
    }
    current_loop = nullptr;
  }
};

EventLoop::EventLoop(std::string name) : impl_(std::make_unique<Impl>()) {
  impl_->name = std::move(name);
  impl_->epfd = epoll_create1(EPOLL_CLOEXEC);
  impl_->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (impl_->epfd < 0 || impl_->wakefd < 0) {
    LogMsg(LogLevel::kError, {"event-loop"}, "%s: cannot create epoll/eventfd: %s", impl_->name.c_str(), strerror(errno));
    abort();
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeId;
  epoll_ctl(impl_->epfd, EPOLL_CTL_ADD, impl_->wakefd, &ev);
}

EventLoop::~EventLoop() {
  Stop();
  close(impl_->wakefd);
  close(impl_->epfd);
}

void EventLoop::Start() {
  if (impl_->running.exchange(true)) return;
  impl_->thread = std::thread([this] { impl_->Run(this); });
}

void EventLoop::Stop() {
  if (!impl_->running.load()) return;
  if (InLoop()) {  // cannot join ourselves: just ask the loop to end after this batch
    impl_->stopping.store(true, std::memory_order_release);
    return;
  }
  impl_->stopping.store(true, std::memory_order_release);
  impl_->Wake();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->running.store(false);
}

int EventLoop::Add(int fd, uint32_t epoll_events, Handler handler) {
  if (impl_->id_of_fd.count(fd)) return -EEXIST;
  uint64_t id = impl_->next_id++;
  epoll_event ev{};
  ev.events = epoll_events;
  ev.data.u64 = id;
  if (epoll_ctl(impl_->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) return -errno;
  impl_->by_id.emplace(id, Impl::Entry{fd, std::move(handler)});
  impl_->id_of_fd.emplace(fd, id);
  return 0;
}

int EventLoop::Modify(int fd, uint32_t epoll_events) {
  auto it = impl_->id_of_fd.find(fd);
  if (it == impl_->id_of_fd.end()) return -ENOENT;
  epoll_event ev{};
  ev.events = epoll_events;
  ev.data.u64 = it->second;
  if (epoll_ctl(impl_->epfd, EPOLL_CTL_MOD, fd, &ev) != 0) return -errno;
  return 0;
}

int EventLoop::Remove(int fd) {
  auto it = impl_->id_of_fd.find(fd);
  if (it == impl_->id_of_fd.end()) return -ENOENT;
  uint64_t id = it->second;
  impl_->id_of_fd.erase(it);
  impl_->by_id.erase(id);
  if (epoll_ctl(impl_->epfd, EPOLL_CTL_DEL, fd, nullptr) != 0) return -errno;
  return 0;
}

void EventLoop::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->posted.push_back(std::move(fn));
  }
  impl_->Wake();
}

void EventLoop::RunSync(const std::function<void()>& fn) {
  if (InLoop() || !impl_->running.load()) {
    fn();
    return;
  }
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  Post([&] {
    fn();
    std::lock_guard<std::mutex> lk(m);
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lk(m);
  cv.wait(lk, [&] { return done; });
}

void EventLoop::AtBatchEnd(BatchEndTask* t) {
  if (!InLoop()) return t->RunBatchEnd();
  if (t->batch_end_queued_) return;
  t->batch_end_queued_ = true;
  impl_->batch_end.push_back(t);
}

void EventLoop::AddPollSource(PollSource* s) { impl_->poll_sources.push_back(s); }

void EventLoop::RemovePollSource(PollSource* s) {
  for (PollSource*& q : impl_->poll_sources)
    if (q == s) q = nullptr;  // CallSources() drops it, also when it is running them now
}

void EventLoop::CancelBatchEnd(BatchEndTask* t) {
  if (!t->batch_end_queued_) return;
  t->batch_end_queued_ = false;
  for (BatchEndTask*& q : impl_->batch_end)
    if (q == t) q = nullptr;
}

bool EventLoop::InLoop() const { return current_loop == this; }
const std::string& EventLoop::name() const { return impl_->name; }
unsigned EventLoop::index() const { return impl_->index; }
EventLoop* EventLoop::Current() { return current_loop; }

// ---------------------------------------------------------------------------------------------

namespace {
std::mutex pool_mu;
unsigned configured_count = 1;
IoThreads* pool = nullptr;  // leaked on purpose: IO threads must outlive static destructors
}  // namespace

struct IoThreads::Impl {
  std::vector<std::unique_ptr<EventLoop>> loops;
};

IoThreads::IoThreads() : impl_(std::make_unique<Impl>()) {}

void IoThreads::Configure(unsigned count) {
  std::lock_guard<std::mutex> lk(pool_mu);
  if (count == 0) count = 1;
  configured_count = count;
}

bool IoThreads::Started() {
  std::lock_guard<std::mutex> lk(pool_mu);
  return pool != nullptr;
}

IoThreads& IoThreads::Get() {
  std::lock_guard<std::mutex> lk(pool_mu);
  if (pool == nullptr) {
    auto* p = new IoThreads();
    for (unsigned i = 0; i < configured_count; i++) {
      auto loop = std::make_unique<EventLoop>("ibnbd-io" + std::to_string(i));
      loop->impl_->index = i;
      p->impl_->loops.push_back(std::move(loop));
    }
    for (auto& l : p->impl_->loops) l->Start();
    pool = p;
  }
  return *pool;
}

unsigned IoThreads::size() const { return static_cast<unsigned>(impl_->loops.size()); }

EventLoop& IoThreads::loop(unsigned i) { return *impl_->loops[i % impl_->loops.size()]; }

void IoThreads::SetPollUs(unsigned us) { poll_us.store(us, std::memory_order_relaxed); }

unsigned IoThreads::PollUs() { return poll_us.load(std::memory_order_relaxed); }

IoThreads::PollCounts IoThreads::PollStats() {
  std::lock_guard<std::mutex> lk(pool_mu);  // the pool's loops never go away once made
  PollCounts c;
  if (pool == nullptr) return c;
  for (auto& l : pool->impl_->loops) {
    c.polls += l->impl_->polls.load(std::memory_order_relaxed);
    c.poll_hits += l->impl_->poll_hits.load(std::memory_order_relaxed);
  }
  return c;
}

}  // namespace ibnbd
