// The state behind VhostBlkDevice, shared by the three files that implement it and by nothing
// else: vhost_blk_device.cc (the public methods), vhost_connection.cc (accept, vhost-user
// messages, drain/hold, guest memory registration, libvhost-user callbacks) and vhost_queue.cc
// (kicks, the request life cycle, teardown).
//
// Threads and locks. H is the device's home loop; "a queue loop" is the IoThreads loop of a
// queue index (the pool is shared, so it may be H itself or serve several queues).
// * H only, so unlocked: Impl's listen_fd, accepting, conn and all; a Connection's socket and
//   message fields (sock, sock_watched, teardown_done, rx, rx_got, held, current).
// * Under the connection's ConnLock, a writer-preferring rwlock: libvhost-user's VuDev (memory
//   regions, rings), the watches and the per-queue request sets. H holds the write side while
//   it dispatches a message, tears down or finalizes (these remap guest memory and rewrite
//   rings). A queue loop holds the read side for one event (a kick, a transport completion, its
//   batch-end notify) and then touches only its own queues' VuVirtq and request sets, which is
//   why readers on different loops need no lock among themselves.
// * Atomics, read without the lock: a connection's flags (dead, broken, draining: queue work
//   tests them before touching a ring; teardown_posted) and in-flight count, the guest's
//   write-cache setting (wce), the counters and the log window. Stats() reads the counters from
//   any thread; any loop may log.
// Nothing waits while holding the lock: whatever crosses between a queue loop and H is
// Post()ed, never run inline, so the lock is held for one event and never nested, even when a
// queue shares H's thread.
#pragma once
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/event_loop.h"
#include "common/io_metrics.h"
#include "common/log.h"
#include "proto/ibnbd_proto.h"
#include "vhost/blk_request.h"
#include "vhost/dirty_log.h"
#include "vhost/vhost_blk_device.h"

extern "C" {
#include "libvhost-user.h"
}

namespace ibnbd::vhost {

// Closes the fds a message carries (a rejected, partial or held-back message at teardown).
void CloseFds(VhostUserMsg* m);

struct Connection;

struct Chunk {
  transport::ClientIo io;
  uint8_t msg[proto::kIoSize];
  struct Request* req;
};

// Allocated by vu_queue_pop (the element must come first); constructed in place.
struct Request {
  VuVirtqElement elem;
  Connection* conn = nullptr;
  int qidx = 0;
  RequestPlan plan;
  std::vector<Chunk> chunks;
  uint32_t pending = 0;
  int first_err = 0;
  bool lost = false;      // a chunk came back kLostWithPath: the whole request may go again
  bool answered = false;  // already pushed (front-end forcibly disconnected)
  uint64_t start_ns = 0;  // popped (MonotonicNs): the latency histogram's start
};

// A queue's loop writes these (and H, when teardown answers what is in flight). Requests, bytes
// and errors are the per-operation metrics; Stats() derives its totals from them. Aligned so that
// queues served by different threads do not share a cache line.
struct alignas(64) QueueCounters {
  IoMetrics io;
  std::atomic<uint64_t> splits{0}, inflight{0}, waiting{0};
};

struct Watch {
  vu_watch_cb cb;
  void* data;
  int dup_fd;      // our own descriptor of the eventfd, registered on the queue's loop
  EventLoop* loop;
};

// The rwlock of a connection (see the top of this file). Writer-preferring so that dispatch is not
// starved by busy queues; never taken recursively (ReadGuard checks the thread-local).
class ConnLock {
 public:
  ConnLock() {
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&rw_, &a);
    pthread_rwlockattr_destroy(&a);
  }
  ~ConnLock() { pthread_rwlock_destroy(&rw_); }
  void ReadLock() { pthread_rwlock_rdlock(&rw_); }
  void WriteLock() { pthread_rwlock_wrlock(&rw_); }
  void Unlock() { pthread_rwlock_unlock(&rw_); }

 private:
  pthread_rwlock_t rw_;
};

struct Connection {
  // The constructor makes this no aggregate any more: the C structs below are zeroed by their
  // `{}`, not by make_shared's value-initialization (ReadSome relies on rx.fd_num starting at 0).
  explicit Connection(std::atomic<uint64_t>* dirty_pages) : log(dirty_pages) {}
  VuDev dev{};  // first: libvhost-user callbacks get &dev and we cast back
  VhostBlkDevice::Impl* impl = nullptr;
  std::shared_ptr<VhostBlkDevice> keep;  // the device outlives its connections' late completions
  ConnLock lock;
  // H only
  int sock = -1;
  bool sock_watched = false;
  bool teardown_done = false;
  VhostUserMsg rx{};
  size_t rx_got = 0;
  VhostUserMsg held{};           // the message waiting for the drain
  const VhostUserMsg* current = nullptr;  // handed to vu_dispatch via read_msg
  // written under the write lock (broken also from panics under the read lock)
  std::atomic<bool> dead{false};
  std::atomic<bool> broken{false};       // stop touching the rings; teardown scheduled
  std::atomic<bool> teardown_posted{false};
  std::atomic<bool> draining{false};     // a held-back message waits for in-flight requests
  std::atomic<uint64_t> inflight{0};     // requests popped and not yet finished
  // by libvhost-user's fd; written under the write lock, read by kicks under the read lock
  std::unordered_map<int, Watch> watches;
  std::vector<std::unordered_set<Request*>> requests;  // per queue: its loop (read) or H (write)
  // Per queue, in arrival order: requests held while the device waits for its server (a subset
  // of `requests`, counted in inflight, not at the transport). Same rule as `requests`.
  std::vector<std::deque<Request*>> waiting;
  std::weak_ptr<Connection> weak;  // lets a queue loop hold the connection until its batch end
  // Guest memory regions registered with the session (zero copy on RDMA; TCP: no-op handles).
  // Changed under the write lock, only while no request is in flight.
  struct Registered {
    uintptr_t addr;
    uint64_t len;
    uint64_t handle;
  };
  std::vector<Registered> registered;
  // Migration's dirty log (SET_LOG_BASE); the rings' rule: changed under the write lock, marked
  // by queue loops under the read lock.
  DirtyLog log;
};

class WriteGuard {
 public:
  explicit WriteGuard(Connection* c) : c_(c) { c_->lock.WriteLock(); }
  ~WriteGuard() { c_->lock.Unlock(); }

 private:
  Connection* c_;
};

using ConnPtr = std::shared_ptr<Connection>;

// The loop-side state of one device. The section comments below name the thread and the lock
// side of each group of methods; the exceptions say so where they are defined.
struct VhostBlkDevice::Impl {
  VhostBlkDevice* self;
  int listen_fd = -1;
  bool accepting = false;
  ConnPtr conn;                                   // the live front-end (H)
  std::unordered_map<Connection*, ConnPtr> all;   // every connection not yet finalized (H)
  std::atomic<bool> wce;
  std::unique_ptr<QueueCounters[]> counters;
  std::atomic<uint64_t> connections{0}, protocol_errors{0};
  // the live connection's dirty logging (VHOST_F_LOG_ALL with a log table), for show; H writes
  std::atomic<bool> logging{false};
  std::atomic<uint64_t> dirty_pages{0};  // pages marked in migration logs, every connection
  VuDevIface iface{};

  explicit Impl(VhostBlkDevice* s) : self(s), wce(s->limits_.writeback) {
    counters.reset(new QueueCounters[s->limits_.queues]);
  }

  EventLoop& home() { return *self->loop_; }
  static EventLoop& QueueLoop(int qidx) { return IoThreads::Get().loop(unsigned(qidx)); }
  const BlkLimits& limits() const { return self->limits_; }

  void Log(LogLevel level, const std::string& what) {
    LogMsg(level, {.component = "vhost-blk", .device = self->log_name().c_str()}, "%s", what.c_str());
  }

  // Per-request failures come from the guest or the network, at any rate: at most
  // kRequestLogBurst lines per second, then a count of what was left out.
  static constexpr uint64_t kRequestLogBurst = 20;
  std::atomic<int64_t> log_window{0};
  std::atomic<uint64_t> log_in_window{0};
  void LogRequest(const std::string& what);
  void Emit(const std::string& type, const std::string& detail) {
    if (self->on_event_) self->on_event_(type, detail);
  }
  ConnPtr Shared(Connection* c) {  // H only
    auto it = all.find(c);
    return it == all.end() ? nullptr : it->second;
  }
  static Connection* Conn(VuDev* d) { return reinterpret_cast<Connection*>(d); }

  // ---- accept, messages, drain, guest memory (H; vhost_connection.cc) -------------------
  // Messages are checked and dispatched under the write lock.
  void SetAccepting(bool on);
  void OnAccept();
  void WatchSocket(Connection* c, bool on);
  void OnReadable(Connection* c);
  int ReadSome(Connection* c);
  void HandleMessage(Connection* c, VhostUserMsg* m);
  void Dispatch(Connection* c, VhostUserMsg* m);
  void AfterDrain(Connection* c);
  void RegisterGuestMemory(Connection* c);
  void UnregisterGuestMemory(Connection* c);
  void Violation(const std::string& why);
  void UpdateLogging(Connection* c);  // H, write lock: after SET_FEATURES / SET_LOG_BASE
  // Queue loop (read lock) or H (write lock): marks the pages a request wrote, after the writes
  // and before the push; false (connection torn down) when the log cannot hold them.
  bool LogRequestPages(Connection* c, Request* r);
  bool LogUsedRing(Connection* c, int qidx);

  // ---- libvhost-user callbacks (vhost_connection.cc) ------------------------------------
  // From vu_dispatch on H under the write lock; OnPanic from any loop, either lock side.
  static bool ReadMsg(VuDev* d, int, VhostUserMsg* out);
  static void OnPanic(VuDev* d, const char* err);
  static void SetWatch(VuDev* d, int fd, int, vu_watch_cb cb, void* data);
  static void RemoveWatch(VuDev* d, int fd);
  static void UnwatchLater(const Watch& w);
  static uint64_t GetFeatures(VuDev* d);
  static void SetFeatures(VuDev*, uint64_t);
  static int ProcessMsg(VuDev* d, VhostUserMsg* m, int* do_reply);
  static int GetConfig(VuDev* d, uint8_t* config, uint32_t len);
  static int SetConfig(VuDev*, const uint8_t*, uint32_t, uint32_t, uint32_t);
  static void QueueStarted(VuDev* d, int qidx, bool started);

  // ---- kicks and requests (queue loops, read lock; vhost_queue.cc) ----------------------
  // PostProcess and PostProcessAll run on H and post the work; Answer also runs on H under the
  // write lock when teardown fails the requests in flight.
  static void OnKickFd(Connection* c, int fd, int dup_fd);
  static void OnKick(VuDev* d, int qidx);
  void PostProcess(Connection* c, int qidx);
  void PostProcessAll(Connection* c);
  void ProcessQueue(Connection* c, int qidx);
  Request* PopRequest(Connection* c, int qidx);  // also H, write lock (FailUnpopped)
  void StartRequest(Request* r);
  void SubmitRequest(Request* r);  // planned and counted: encode each chunk and send it
  void Hold(Request* r);
  void ResumeHeld(Connection* c, int qidx);  // device open again: send the held ones in order
  void FailHeld(Connection* c, int qidx);    // device closed for good: answer them IOERR
  void PostToQueues(std::function<void(Connection*, int)> fn);  // any thread; via H
  static void ChunkDone(transport::ClientIo* io, int err);
  void ReleaseChunk(Request* r, int err);
  void Finish(Request* r, uint8_t status);
  void Settle(Connection* c, uint64_t n);
  void Answer(Connection* c, Request* r, uint8_t status);

  // ---- teardown, finalize (H, write lock; vhost_queue.cc) -------------------------------
  // ScheduleTeardown: any loop, any lock side; it only flags the connection and posts to H.
  void ScheduleTeardown(Connection* c, bool fail_inflight, const std::string& why);
  // H, write lock: releases every held request, answering it IOERR when `answer` and the
  // front-end can still hear it (a drain before GET_VRING_BASE & co., a teardown).
  void DropHeld(Connection* c, bool answer);
  void Teardown(Connection* c, bool fail_inflight);
  void FailUnpopped(Connection* c, int qidx);  // within a failing teardown: the ring's rest, IOERR
  void MaybeFinalize(Connection* c);

  bool Drained() const { return all.empty(); }
};

}  // namespace ibnbd::vhost
