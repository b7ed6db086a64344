// EventLoop: one epoll thread. Handlers are looked up by a registration id carried in the epoll
// event, never by pointer, so Remove() from inside a handler simply makes later events of the
// same epoll_wait batch find nothing. Post() queues under a mutex and wakes the thread with an
// eventfd.
#include "common/event_loop.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
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
    for (;;) {
      int n = epoll_wait(epfd, events.data(), static_cast<int>(events.size()), -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        LogMsg(LogLevel::kError, {"event-loop"}, "%s: epoll_wait: %s", name.c_str(), strerror(errno));
        break;
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

}  // namespace ibnbd
