// The vhost-user-blk back-end of one mapped device.
//
// Design
// ------
// * Threads. The device has a home loop H (an IoThreads loop, chosen round-robin per device):
//   the listening socket, the front-end socket, vu_dispatch, teardown. Virtqueue q lives on
//   IoThreads loop q (modulo the pool size, event_loop.h): its kick eventfd is watched there,
//   and vu_queue_pop, the transport Submit, the completion and vu_queue_push/notify all run on
//   that one thread, so a request never changes threads.
// * Locking, virtiofsd's scheme (PROTOCOL.md §4.5). libvhost-user has no locks, so each
//   connection has a writer-preferring rwlock: vu_dispatch and teardown run under the write
//   side (they remap memory and rewrite rings), queue work under the read side. A queue is
//   only ever touched by its own loop (or by H under the write lock), so no per-queue lock is
//   needed. The read side is held for one event's work, never across a wait; the writer only
//   Post()s to other loops, never waits for them, so no cycle can form. Re-entry (a Submit
//   completing inline) is detected with a thread-local and does not re-lock.
// * Guest memory pointers stay valid while the transport uses them: messages that unmap guest
//   memory or stop rings (SET_MEM_TABLE, ADD/REM_MEM_REG, GET_VRING_BASE, RESET_OWNER,
//   SET_INFLIGHT_FD) are held back until no request of the connection is in flight. Meanwhile
//   the socket is not read and the rings are not popped; the last completion resumes both.
//   A connection that goes away keeps its mappings (VuDev) until its last transport request
//   completes, so late completions never touch unmapped memory.
// * We read vhost-user messages ourselves (non-blocking, incrementally, fds collected), check
//   them (vhost_msg_check.h) and only then hand them to vu_dispatch through the read_msg hook:
//   a slow or hostile front-end can neither block a loop nor reach libvhost-user's unchecked
//   paths. Any malformed message, broken ring or libvhost-user panic disconnects the front-end;
//   the device keeps listening for the next one (QEMU reconnect=1).
// * Requests are translated by blk_request.h; each IBNBD request is a transport ClientIo whose
//   iovecs point into guest memory (no copy on our side).
#include "vhost/vhost_blk_device.h"

#include <fcntl.h>
#include <pthread.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>
#include <unordered_map>
#include <unordered_set>

#include "common/event_loop.h"
#include "proto/ibnbd_proto.h"
#include "vhost/blk_request.h"
#include "vhost/vhost_msg_check.h"

extern "C" {
#include "libvhost-user.h"
}

namespace ibnbd::vhost {
namespace {

constexpr int kMaxPendingReplyBytes = 256 * 1024;  // a front-end that stops reading replies
constexpr uint64_t kProtocolFeatures =
    (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
    (1ull << VHOST_USER_PROTOCOL_F_CONFIG) | (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
    (1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);

std::atomic<unsigned> g_next_loop{0};

void CloseFds(VhostUserMsg* m) {
  for (int i = 0; i < m->fd_num; i++)
    if (m->fds[i] >= 0) close(m->fds[i]);
  m->fd_num = 0;
}

}  // namespace

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
  bool answered = false;  // already pushed (front-end forcibly disconnected)
};

struct QueueCounters {
  std::atomic<uint64_t> requests{0}, read_bytes{0}, write_bytes{0}, errors{0}, splits{0},
      inflight{0};
};

struct Watch {
  vu_watch_cb cb;
  void* data;
  int dup_fd;      // our own descriptor of the eventfd, registered on the queue's loop
  EventLoop* loop;
};

// The rwlock of a connection (see the design notes). Writer-preferring so that dispatch is not
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
  VuDev dev;  // first: libvhost-user callbacks get &dev and we cast back
  VhostBlkDevice::Impl* impl = nullptr;
  std::shared_ptr<VhostBlkDevice> keep;  // the device outlives its connections' late completions
  ConnLock lock;
  // H only
  int sock = -1;
  bool sock_watched = false;
  bool teardown_done = false;
  VhostUserMsg rx;
  size_t rx_got = 0;
  VhostUserMsg held;             // the message waiting for the drain
  const VhostUserMsg* current = nullptr;  // handed to vu_dispatch via read_msg
  // written under the write lock (broken also from panics under the read lock)
  std::atomic<bool> dead{false};
  std::atomic<bool> broken{false};       // stop touching the rings; teardown scheduled
  std::atomic<bool> teardown_posted{false};
  std::atomic<bool> draining{false};     // a held-back message waits for in-flight requests
  std::atomic<uint64_t> inflight{0};     // requests popped and not yet finished
  std::unordered_map<int, Watch> watches;              // by libvhost-user's fd; write lock
  std::vector<std::unordered_set<Request*>> requests;  // per queue: its loop (read) or H (write)
  std::weak_ptr<Connection> weak;  // lets a queue loop hold the connection until its batch end
  // Guest memory regions registered with the session (zero copy on RDMA; TCP: no-op handles).
  // Changed under the write lock, only while no request is in flight.
  struct Registered {
    uintptr_t addr;
    uint64_t len;
    uint64_t handle;
  };
  std::vector<Registered> registered;
};

// Read side for queue work; a no-op when this thread already holds it for the connection
// (an inline completion inside Submit).
thread_local Connection* tl_reading = nullptr;
class ReadGuard {
 public:
  explicit ReadGuard(Connection* c) : c_(tl_reading == c ? nullptr : c) {
    if (c_) c_->lock.ReadLock(), prev_ = tl_reading, tl_reading = c_;
  }
  ~ReadGuard() {
    if (c_) tl_reading = prev_, c_->lock.Unlock();
  }

 private:
  Connection* c_;
  Connection* prev_ = nullptr;
};

class WriteGuard {
 public:
  explicit WriteGuard(Connection* c) : c_(c) { c_->lock.WriteLock(); }
  ~WriteGuard() { c_->lock.Unlock(); }

 private:
  Connection* c_;
};

using ConnPtr = std::shared_ptr<Connection>;

// Used-ring notifications of one queue loop, sent once at the end of its batch: the responses
// one socket read brings are pushed one by one, and the driver is signalled (an eventfd write)
// once, not once per request. Until then the requests still count as in flight on their
// connection (Impl::Settle runs after the notify), so a held-back message that stops or remaps
// the rings is dispatched only once every completion has been signalled.
class PendingNotifies final : public BatchEndTask {
 public:
  struct Item {
    ConnPtr conn;
    int qidx;
    uint64_t requests;
  };
  // false: not on a loop or the connection is being finalized; the caller notifies itself.
  static bool Add(Connection* c, int qidx) {
    EventLoop* loop = EventLoop::Current();
    if (!loop) return false;
    PendingNotifies& p = ThisThread();
    for (Item& it : p.items_)
      if (it.conn.get() == c && it.qidx == qidx) return it.requests++, true;
    ConnPtr sc = c->weak.lock();
    if (!sc) return false;
    p.items_.push_back({std::move(sc), qidx, 1});
    loop->AtBatchEnd(&p);
    return true;
  }
  void RunBatchEnd() override;

 private:
  static PendingNotifies& ThisThread() {
    thread_local PendingNotifies p;  // IO threads live as long as the process
    return p;
  }
  std::vector<Item> items_;
};

struct VhostBlkDevice::Impl {
  VhostBlkDevice* self;
  int listen_fd = -1;
  bool accepting = false;
  ConnPtr conn;                                   // the live front-end (H)
  std::unordered_map<Connection*, ConnPtr> all;   // every connection not yet finalized (H)
  std::atomic<bool> wce;
  std::unique_ptr<QueueCounters[]> counters;
  std::atomic<uint64_t> connections{0}, protocol_errors{0};
  VuDevIface iface{};

  explicit Impl(VhostBlkDevice* s) : self(s), wce(s->limits_.writeback) {
    counters.reset(new QueueCounters[s->limits_.queues]);
  }

  EventLoop& home() { return *self->loop_; }
  static EventLoop& QueueLoop(int qidx) { return IoThreads::Get().loop(unsigned(qidx)); }
  const BlkLimits& limits() const { return self->limits_; }

  void Log(const std::string& what) {
    std::fprintf(stderr, "ibnbd vhost-blk %s: %s\n", self->socket_path_.c_str(), what.c_str());
  }

  // Per-request failures come from the guest or the network, at any rate: at most
  // kRequestLogBurst lines per second, then a count of what was left out.
  static constexpr uint64_t kRequestLogBurst = 20;
  std::atomic<int64_t> log_window{0};
  std::atomic<uint64_t> log_in_window{0};
  void LogRequest(const std::string& what) {
    int64_t now = int64_t(std::time(nullptr));
    int64_t win = log_window.load();
    if (win != now && log_window.compare_exchange_strong(win, now)) {
      uint64_t n = log_in_window.exchange(0);
      if (n > kRequestLogBurst) Log(std::to_string(n - kRequestLogBurst) + " request failures not logged");
    }
    if (log_in_window++ < kRequestLogBurst) Log(what);
  }
  void Emit(const std::string& type, const std::string& detail) {
    if (self->on_event_) self->on_event_(type, detail);
  }
  ConnPtr Shared(Connection* c) {  // H only
    auto it = all.find(c);
    return it == all.end() ? nullptr : it->second;
  }

  // ---- accept (H) -----------------------------------------------------------------------

  void SetAccepting(bool on) {
    if (listen_fd < 0 || on == accepting) return;
    if (on) {
      home().Add(listen_fd, EPOLLIN, [this](uint32_t) { OnAccept(); });
    } else {
      home().Remove(listen_fd);
    }
    accepting = on;
  }

  void OnAccept() {
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (conn) {  // cannot happen while not accepting; refuse rather than share a device
      close(fd);
      return;
    }
    auto c = std::make_shared<Connection>();
    c->impl = this;
    c->keep = self->shared_from_this();
    c->requests.resize(limits().queues);
    if (!vu_init(&c->dev, limits().queues, fd, &Impl::OnPanic, &Impl::ReadMsg, &Impl::SetWatch,
                 &Impl::RemoveWatch, &iface)) {
      close(fd);
      return;
    }
    c->dev.inflight_info.fd = -1;  // vu_init leaves 0, which SET_INFLIGHT_FD would close()
    c->sock = fd;
    c->weak = c;
    all[c.get()] = c;
    wce = limits().writeback;  // a new driver starts from the device default
    conn = c;
    connections++;
    self->connected_ = true;
    SetAccepting(false);  // one front-end at a time; the next waits in the backlog
    WatchSocket(c.get(), true);
    Emit("connected", "");
  }

  void WatchSocket(Connection* c, bool on) {
    if (on == c->sock_watched || c->sock < 0) return;
    if (on)
      home().Add(c->sock, EPOLLIN | EPOLLRDHUP, [this, c](uint32_t) { OnReadable(c); });
    else
      home().Remove(c->sock);
    c->sock_watched = on;
  }

  // ---- messages (H) ---------------------------------------------------------------------

  void OnReadable(Connection* c) {
    while (!c->dead && !c->broken && !c->draining) {
      int r = ReadSome(c);
      if (r == 0) return;  // would block
      if (r < 0) {
        ScheduleTeardown(c, false, "");  // EOF or reset: the front-end went away
        return;
      }
      // a whole message is in c->rx
      VhostUserMsg m = c->rx;
      c->rx_got = 0;
      c->rx.fd_num = 0;
      HandleMessage(c, &m);
    }
  }

  // 1: a full message; 0: would block; <0: EOF / error (fds of a partial message closed).
  int ReadSome(Connection* c) {
    const size_t hdr = VHOST_USER_HDR_SIZE;
    for (;;) {
      size_t want = c->rx_got < hdr ? hdr - c->rx_got : hdr + c->rx.size - c->rx_got;
      if (c->rx_got >= hdr && want == 0) return 1;
      char control[CMSG_SPACE(VHOST_MEMORY_BASELINE_NREGIONS * sizeof(int))];
      iovec iov = {reinterpret_cast<uint8_t*>(&c->rx) + c->rx_got, want};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      ssize_t n = recvmsg(c->sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
      bool bad = n <= 0 || (mh.msg_flags & MSG_CTRUNC);
      for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        int cnt = int((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < cnt; i++) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
          if (c->rx.fd_num < VHOST_MEMORY_BASELINE_NREGIONS && !bad)
            c->rx.fds[c->rx.fd_num++] = fd;
          else
            close(fd), bad = true;
        }
      }
      if (bad) {
        if (n > 0) Violation("more than 8 fds or truncated control data");
        CloseFds(&c->rx);
        c->rx_got = 0;
        return -1;
      }
      c->rx_got += size_t(n);
      if (c->rx_got == hdr && c->rx.size > sizeof(c->rx.payload)) {
        Violation("message payload of " + std::to_string(c->rx.size) + " bytes");
        CloseFds(&c->rx);
        c->rx_got = 0;
        return -1;
      }
    }
  }

  void HandleMessage(Connection* c, VhostUserMsg* m) {
    m->data = nullptr;
    WriteGuard w(c);
    std::string why;
    if (!CheckVhostMsg(&c->dev, m, &why)) {
      CloseFds(m);
      Violation("request " + std::to_string(m->request) + ": " + why);
      ScheduleTeardown(c, false, "");
      return;
    }
    if (NeedsDrain(m->request) && c->inflight > 0) {
      c->held = *m;
      c->draining = true;
      WatchSocket(c, false);
      return;
    }
    Dispatch(c, m);
  }

  // Under the write lock.
  void Dispatch(Connection* c, VhostUserMsg* m) {
    const bool remaps = m->request == VHOST_USER_SET_MEM_TABLE || m->request == VHOST_USER_REM_MEM_REG;
    const bool adds = remaps || m->request == VHOST_USER_ADD_MEM_REG;
    // Memory-table messages are dispatched only with no request in flight (NeedsDrain), so
    // nothing uses the registrations now. Drop them before libvhost-user unmaps: a new region
    // mmap()ed at the same address must never match an MR that pins the old pages.
    if (remaps) UnregisterGuestMemory(c);
    c->current = m;
    bool ok = vu_dispatch(&c->dev);
    c->current = nullptr;
    if (adds && ok && !c->dev.broken) RegisterGuestMemory(c);
    if (!ok || c->dev.broken) {
      ScheduleTeardown(c, false, ok ? "" : "vhost-user dispatch failed");
      return;
    }
    std::string why;
    if (!CheckRings(&c->dev, &why)) {
      Violation(why);
      ScheduleTeardown(c, false, "");
      return;
    }
    if (m->request == VHOST_USER_SET_VRING_ENABLE) PostProcessAll(c);
    int outq = 0;
    if (ioctl(c->sock, SIOCOUTQ, &outq) == 0 && outq > kMaxPendingReplyBytes) {
      Violation("front-end does not read its replies");
      ScheduleTeardown(c, false, "");
    }
  }

  // Registers every mapped guest region not registered yet with the session, so requests go
  // to the wire straight from guest memory (RDMA: MRs; otherwise the bounce pool is used and
  // counted). A failure is not fatal: that region's requests bounce.
  void RegisterGuestMemory(Connection* c) {
    for (uint32_t i = 0; i < c->dev.nregions; i++) {
      const VuDevRegion& r = c->dev.regions[i];
      uintptr_t addr = uintptr_t(r.mmap_addr + r.mmap_offset);
      bool known = false;
      for (const auto& g : c->registered) known |= g.addr == addr && g.len == r.size;
      if (known || !r.mmap_addr || !r.size) continue;
      uint64_t handle = 0;
      int rc = self->session_->RegisterMemory(reinterpret_cast<void*>(addr), r.size, &handle);
      if (rc < 0) {
        Log("guest memory region of " + std::to_string(r.size) + " bytes not registered (" +
            std::strerror(-rc) + "): its requests use the bounce buffers");
        continue;
      }
      c->registered.push_back({addr, r.size, handle});
    }
  }

  void UnregisterGuestMemory(Connection* c) {
    for (const auto& g : c->registered) self->session_->UnregisterMemory(g.handle);
    c->registered.clear();
  }

  void Violation(const std::string& why) {
    protocol_errors++;
    Log("protocol error, disconnecting the front-end: " + why);
    Emit("error", "vhost-user protocol error: " + why);
  }

  // libvhost-user callbacks -------------------------------------------------------------

  static Connection* Conn(VuDev* d) { return reinterpret_cast<Connection*>(d); }

  static bool ReadMsg(VuDev* d, int, VhostUserMsg* out) {
    Connection* c = Conn(d);
    if (!c->current) return false;
    *out = *c->current;
    return true;
  }

  static void OnPanic(VuDev* d, const char* err) {  // H (dispatch) or a queue loop (pop)
    Connection* c = Conn(d);
    c->broken = true;
    c->impl->Log(std::string("libvhost-user: ") + (err ? err : "?"));
    c->impl->Emit("error", std::string("vhost-user: ") + (err ? err : "?"));
  }

  // Called by libvhost-user inside dispatch (H, write lock) for kick eventfds; data is the
  // queue index. The eventfd is dup()ed so the queue loop owns what it watches, whatever
  // libvhost-user closes meanwhile.
  static void SetWatch(VuDev* d, int fd, int, vu_watch_cb cb, void* data) {
    Connection* c = Conn(d);
    auto it = c->watches.find(fd);
    if (it != c->watches.end()) {
      it->second.cb = cb;
      it->second.data = data;
      return;
    }
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (dup_fd < 0) {
      c->broken = true;
      return;
    }
    int qidx = int(reinterpret_cast<intptr_t>(data));
    EventLoop* loop = &QueueLoop(qidx);
    c->watches[fd] = {cb, data, dup_fd, loop};
    ConnPtr sc = c->impl->Shared(c);
    loop->Post([sc, fd, dup_fd, loop] {
      int rc = loop->Add(dup_fd, EPOLLIN, [sc, fd, dup_fd](uint32_t) { OnKickFd(sc.get(), fd, dup_fd); });
      // Cannot happen with a fresh descriptor; if it does the ring would silently stall, so say it.
      if (rc != 0) std::fprintf(stderr, "ibnbd vhost-blk: cannot watch a kick eventfd: %s\n", std::strerror(-rc));
    });
  }

  static void RemoveWatch(VuDev* d, int fd) {
    Connection* c = Conn(d);
    auto it = c->watches.find(fd);
    if (it == c->watches.end()) return;
    Watch w = it->second;
    c->watches.erase(it);
    UnwatchLater(w);
  }

  static void UnwatchLater(const Watch& w) {
    EventLoop* loop = w.loop;
    int dup_fd = w.dup_fd;
    loop->Post([loop, dup_fd] {
      loop->Remove(dup_fd);
      close(dup_fd);
    });
  }

  // Queue loop: a kick. Static: after teardown the device may be gone, only c is alive.
  static void OnKickFd(Connection* c, int fd, int dup_fd) {
    ReadGuard r(c);
    auto it = c->watches.find(fd);
    if (c->dead || c->broken || it == c->watches.end() || it->second.dup_fd != dup_fd) {
      eventfd_t v;
      eventfd_read(dup_fd, &v);  // stale watch: just consume (removal is posted)
      return;
    }
    if (c->draining) {  // rings wait; the pass after the drain picks the requests up
      eventfd_t v;
      eventfd_read(dup_fd, &v);
      return;
    }
    Watch w = it->second;
    w.cb(&c->dev, VU_WATCH_IN, w.data);  // vu_kick_cb: reads the eventfd, calls OnKick
    if (c->dev.broken) c->impl->ScheduleTeardown(c, false, "");
  }

  static uint64_t GetFeatures(VuDev* d) { return BlkFeatures(Conn(d)->impl->limits()); }
  static void SetFeatures(VuDev*, uint64_t) {}

  static int ProcessMsg(VuDev* d, VhostUserMsg* m, int* do_reply) {
    Connection* c = Conn(d);
    switch (m->request) {
      case VHOST_USER_GET_PROTOCOL_FEATURES:
        // Exactly what this device implements; libvhost-user's own list adds the back-end
        // channel, host notifiers, logging and postcopy, which we do not serve.
        m->payload.u64 = kProtocolFeatures;
        m->size = sizeof(m->payload.u64);
        m->fd_num = 0;
        *do_reply = 1;
        return 1;
      case VHOST_USER_SET_CONFIG: {
        // Only `writeback` is writable (CONFIG_WCE); other writes are ignored, not fatal.
        const VhostUserConfig& cfg = m->payload.config;
        if (cfg.offset == offsetof(BlkConfig, wce) && cfg.size == 1)
          c->impl->wce = cfg.region[0] != 0;
        else
          c->impl->Log("SET_CONFIG of read-only config bytes ignored");
        *do_reply = 0;
        return 1;
      }
      default:
        return 0;
    }
  }

  static int GetConfig(VuDev* d, uint8_t* config, uint32_t len) {
    Impl* impl = Conn(d)->impl;
    BlkLimits live = impl->limits();  // the capacity a re-OPEN reported, if it changed
    live.size_bytes = impl->self->capacity_sectors() << kSectorShift;
    BlkConfig cfg = BlkConfigSpace(live, impl->wce);
    if (len > sizeof cfg) return -1;
    std::memcpy(config, &cfg, len);
    return 0;
  }

  static int SetConfig(VuDev*, const uint8_t*, uint32_t, uint32_t, uint32_t) { return 0; }

  static void QueueStarted(VuDev* d, int qidx, bool started) {  // H, write lock
    Connection* c = Conn(d);
    VuVirtq* vq = vu_get_queue(d, qidx);
    vu_set_queue_handler(d, vq, started ? &Impl::OnKick : nullptr);
    // Requests resubmitted from the inflight area, or queued before the first kick.
    if (started) c->impl->PostProcess(c, qidx);
  }

  static void OnKick(VuDev* d, int qidx) {  // queue loop, read lock held by OnKickFd
    Connection* c = Conn(d);
    c->impl->ProcessQueue(c, qidx);
  }

  // ---- requests (queue loops, read lock) -----------------------------------------------

  void PostProcess(Connection* c, int qidx) {  // H
    ConnPtr sc = Shared(c);
    if (!sc) return;
    QueueLoop(qidx).Post([this, sc, keep = sc->keep, qidx] {
      ReadGuard r(sc.get());
      ProcessQueue(sc.get(), qidx);
    });
  }

  void PostProcessAll(Connection* c) {
    for (int q = 0; q < limits().queues; q++) PostProcess(c, q);
  }

  void ProcessQueue(Connection* c, int qidx) {
    VuVirtq* vq = vu_get_queue(&c->dev, qidx);
    while (!c->dead && !c->broken && !c->draining && !c->dev.broken) {
      if (!vu_queue_started(&c->dev, vq) || !vu_queue_enabled(&c->dev, vq)) break;
      void* mem = vu_queue_pop(&c->dev, vq, sizeof(Request));
      if (!mem) break;
      VuVirtqElement elem = *static_cast<VuVirtqElement*>(mem);
      Request* r = new (mem) Request();
      r->elem = elem;
      r->conn = c;
      r->qidx = qidx;
      StartRequest(r);
    }
    if (c->dev.broken) ScheduleTeardown(c, false, "");
  }

  void StartRequest(Request* r) {
    Connection* c = r->conn;
    PlanRequest(r->elem.out_sg, r->elem.out_num, r->elem.in_sg, r->elem.in_num, limits(),
                self->capacity_sectors(), wce, &r->plan);
    c->requests[r->qidx].insert(r);
    c->inflight++;
    counters[r->qidx].inflight++;
    if (r->plan.local) {
      if (!r->plan.error.empty()) LogRequest("request failed: " + r->plan.error);
      return Finish(r, r->plan.local_status);
    }
    if (!self->session_->connected()) return Finish(r, kBlkSIoErr);
    // read once: every chunk of a request goes to the same server device
    const uint64_t server_device = self->server_device_.load(std::memory_order_acquire);
    if (server_device == kNoServerDevice) return Finish(r, kBlkSIoErr);
    const size_t n = r->plan.ios.size();
    r->chunks.resize(n);
    if (n > 1 && r->plan.data_bytes) counters[r->qidx].splits++;
    r->pending = uint32_t(n) + 1;  // +1: held while submitting (a Submit may complete inline)
    for (size_t i = 0; i < n; i++) {
      const PlannedIo& p = r->plan.ios[i];
      Chunk& ch = r->chunks[i];
      ch.req = r;
      proto::IoMsg m{};
      m.device_id = uint32_t(server_device);
      m.sector = p.sector;
      m.op = proto::IoOp(p.op);
      m.flags = p.flags;
      m.bi_size = p.bytes;
      if (proto::EncodeIo(m, ch.msg, sizeof ch.msg) != 0) {
        ReleaseChunk(r, -EINVAL);
        continue;
      }
      ch.io.dir = p.read ? transport::Dir::kRead : transport::Dir::kWrite;
      ch.io.usr = ch.msg;
      ch.io.usr_len = proto::kIoSize;
      ch.io.iov = p.iov_count ? &r->plan.iov[p.iov_first] : nullptr;
      ch.io.iov_cnt = p.iov_count;
      ch.io.data_len = p.iov_count ? p.bytes : 0;
      ch.io.done = &Impl::ChunkDone;
      ch.io.ctx = &ch;
      self->session_->Submit(&ch.io);
    }
    ReleaseChunk(r, 0);
  }

  // Transport completion: on the queue's loop, which submitted the request.
  static void ChunkDone(transport::ClientIo* io, int err) {
    Request* r = static_cast<Chunk*>(io->ctx)->req;
    Connection* c = r->conn;
    ReadGuard g(c);
    c->impl->ReleaseChunk(r, err);
  }

  void ReleaseChunk(Request* r, int err) {
    if (err && !r->first_err) r->first_err = err;
    if (--r->pending) return;
    if (r->first_err) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "IBNBD request failed: %s", std::strerror(-r->first_err));
      LogRequest(buf);
    }
    Finish(r, r->first_err ? kBlkSIoErr : kBlkSOk);
  }

  // Answers (unless already answered) and frees a request.
  void Finish(Request* r, uint8_t status) {
    Connection* c = r->conn;
    const int qidx = r->qidx;
    bool deferred = false;
    if (!r->answered && !c->dead) {
      Answer(c, r, status);
      deferred = PendingNotifies::Add(c, qidx);
      if (!deferred) vu_queue_notify(&c->dev, vu_get_queue(&c->dev, qidx));
    }
    counters[qidx].inflight--;
    c->requests[qidx].erase(r);
    r->~Request();
    std::free(r);
    if (!deferred) Settle(c, 1);
  }

  // Read lock held. Called after the used-ring notify of n finished requests.
  void Settle(Connection* c, uint64_t n) {
    if ((c->inflight -= n) == 0 && (c->dead || c->draining)) {
      // the home loop finalizes a dead connection or resumes the held message
      home().Post([this, sc = c->keep, c] { AfterDrain(c); });
    }
    if (c->dev.broken) ScheduleTeardown(c, false, "");
  }

  void Answer(Connection* c, Request* r, uint8_t status) {
    QueueCounters& q = counters[r->qidx];
    uint32_t len = 0;
    if (r->plan.status) {
      *r->plan.status = status;
      len = status == kBlkSOk ? r->plan.used_len : 1;
    }
    if (status == kBlkSOk) {
      if (r->plan.type == kBlkTIn) q.read_bytes += r->plan.data_bytes;
      if (r->plan.type == kBlkTOut) q.write_bytes += r->plan.data_bytes;
    } else {
      q.errors++;
    }
    q.requests++;
    r->answered = true;
    if (!c->dev.broken) vu_queue_push(&c->dev, vu_get_queue(&c->dev, r->qidx), &r->elem, len);
  }

  // ---- drain, teardown, finalize (H) ----------------------------------------------------

  void AfterDrain(Connection* c) {
    ConnPtr sc = Shared(c);
    if (!sc) return;
    if (c->dead) return MaybeFinalize(c);
    {
      WriteGuard w(c);
      if (!c->draining || c->inflight) return;
      c->draining = false;
      VhostUserMsg m = c->held;
      Dispatch(c, &m);
      if (c->dead || c->broken) return;
      PostProcessAll(c);
    }
    WatchSocket(c, true);
    OnReadable(c);  // bytes may already wait in the socket
  }

  void ScheduleTeardown(Connection* c, bool fail_inflight, const std::string& why) {
    c->broken = true;
    if (c->teardown_posted.exchange(true) || c->dead) return;
    if (!why.empty()) Log(why);
    home().Post([this, keep = c->keep, c, fail_inflight] {
      if (Shared(c)) Teardown(c, fail_inflight);
    });
  }

  void Teardown(Connection* c, bool fail_inflight) {
    if (c->teardown_done) return;
    c->teardown_done = true;
    {
      WriteGuard w(c);
      if (fail_inflight && !c->dev.broken) {
        for (auto& set : c->requests)
          for (Request* r : set)
            if (!r->answered) Answer(c, r, kBlkSIoErr);
        for (int q = 0; q < limits().queues; q++) vu_queue_notify(&c->dev, vu_get_queue(&c->dev, q));
      }
      c->dead = true;
      for (auto& w : c->watches) UnwatchLater(w.second);
      c->watches.clear();
    }
    WatchSocket(c, false);
    if (c->draining) CloseFds(&c->held);
    CloseFds(&c->rx);
    close(c->sock);
    c->sock = -1;
    c->dev.sock = -1;
    if (conn.get() == c) {
      conn.reset();
      self->connected_ = false;
      if (!self->closed_) SetAccepting(true);
    }
    Emit("disconnected", "");
    MaybeFinalize(c);
  }

  void MaybeFinalize(Connection* c) {
    ConnPtr sc = Shared(c);
    if (!sc || !c->dead || !c->teardown_done || c->inflight) return;
    std::shared_ptr<VhostBlkDevice> keep;
    {
      WriteGuard w(c);
      UnregisterGuestMemory(c);  // no request in flight: the MRs go before the mappings
      vu_deinit(&c->dev);  // unmaps guest memory: nothing of ours points there any more
      keep = std::move(c->keep);
    }
    all.erase(c);
    // Tasks still posted with the connection keep its memory; the device reference goes here
    // (keep is destroyed before sc: nothing touches the device after this line).
  }

  bool Drained() const { return all.empty(); }
};

void PendingNotifies::RunBatchEnd() {
  std::vector<Item> now;
  now.swap(items_);
  for (Item& it : now) {
    Connection* c = it.conn.get();
    ReadGuard r(c);
    VuVirtq* vq = vu_get_queue(&c->dev, it.qidx);
    if (!c->dead && vu_queue_started(&c->dev, vq)) vu_queue_notify(&c->dev, vq);
    c->impl->Settle(c, it.requests);
  }
}

VhostBlkDevice::VhostBlkDevice(BlkLimits limits, std::string socket_path,
                               std::shared_ptr<transport::ClientSession> session, EventFn on_event)
    : limits_(std::move(limits)),
      socket_path_(std::move(socket_path)),
      session_(std::move(session)),
      on_event_(std::move(on_event)),
      loop_(&IoThreads::Get().loop(g_next_loop++)),
      server_device_(limits_.device_id),
      capacity_sectors_(limits_.capacity_sectors()),
      impl_(std::make_unique<Impl>(this)) {
  VuDevIface& i = impl_->iface;
  i.get_features = &Impl::GetFeatures;
  i.set_features = &Impl::SetFeatures;
  i.process_msg = &Impl::ProcessMsg;
  i.queue_set_started = &Impl::QueueStarted;
  i.get_config = &Impl::GetConfig;
  i.set_config = &Impl::SetConfig;
}

VhostBlkDevice::~VhostBlkDevice() {
  // Only reached when no connection holds a reference: nothing left on the loop but the
  // listening socket, which Close() removed (or never existed).
  if (impl_->listen_fd >= 0) close(impl_->listen_fd);
}

void VhostBlkDevice::SetServerDeviceId(std::optional<uint32_t> id) {
  server_device_.store(id ? uint64_t(*id) : kNoServerDevice, std::memory_order_release);
}

int VhostBlkDevice::Start() {
  if (socket_path_.empty() || socket_path_.size() >= sizeof(sockaddr_un::sun_path)) return -ENAMETOOLONG;
  struct stat st;
  if (lstat(socket_path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return -EEXIST;
    // A socket file: replace it if nobody listens on it any more.
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, socket_path_.data(), socket_path_.size());
    bool live = probe >= 0 && connect(probe, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (probe >= 0) close(probe);
    if (live) return -EADDRINUSE;
    unlink(socket_path_.c_str());
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, socket_path_.data(), socket_path_.size());
  // Create the file with 0600 from the start: no window where another user could connect.
  mode_t old = umask(0177);
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  int err = errno;
  umask(old);
  if (rc != 0 || chmod(socket_path_.c_str(), 0600) != 0 || listen(fd, 4) != 0) {
    if (rc == 0) err = errno, unlink(socket_path_.c_str());
    close(fd);
    return -err;
  }
  loop_->RunSync([&] {
    impl_->listen_fd = fd;
    impl_->SetAccepting(true);
  });
  return 0;
}

bool VhostBlkDevice::DisconnectFrontend() {
  bool was = false;
  loop_->RunSync([&] {
    if (ConnPtr c = impl_->conn) {
      was = true;
      impl_->Teardown(c.get(), true);
    }
  });
  return was;
}

bool VhostBlkDevice::Close(int timeout_ms) {
  if (!closed_.exchange(true)) {
    loop_->RunSync([&] {
      impl_->SetAccepting(false);
      if (impl_->listen_fd >= 0) {
        close(impl_->listen_fd);
        impl_->listen_fd = -1;
        unlink(socket_path_.c_str());
      }
      if (ConnPtr c = impl_->conn) impl_->Teardown(c.get(), true);
    });
  }
  for (int waited = 0;; waited += 10) {
    bool drained = false;
    loop_->RunSync([&] { drained = impl_->Drained(); });
    if (drained) return true;
    if (waited >= timeout_ms) return false;
    usleep(10000);
  }
}

DeviceStats VhostBlkDevice::Stats() const {
  DeviceStats s;
  for (unsigned i = 0; i < limits_.queues; i++) {
    const QueueCounters& c = impl_->counters[i];
    s.queues.push_back({c.requests.load(), c.read_bytes.load(), c.write_bytes.load(),
                        c.errors.load(), c.splits.load(), c.inflight.load()});
  }
  s.connections = impl_->connections.load();
  s.protocol_errors = impl_->protocol_errors.load();
  return s;
}

}  // namespace ibnbd::vhost
