// The vhost-user-blk back-end of one mapped device.
//
// Design
// ------
// * One home loop per device (an IoThreads loop, chosen round-robin at creation). Accepting,
//   reading vhost-user messages, libvhost-user dispatch, kick eventfds, vu_queue_pop, the
//   transport Submit, its completion and vu_queue_push all run there. libvhost-user keeps no
//   locks, so a single owner thread is the simplest correct model; MQ queues of one device
//   share its loop (their kicks are separate fds in the same epoll set), while different
//   devices use different loops. Spreading one device's queues over several loops would need
//   virtiofsd's rwlock scheme (PROTOCOL.md §4.5) plus one transport connection per loop; it is
//   a possible later step, not needed for correctness.
// * Guest memory pointers stay valid while the transport uses them: messages that unmap guest
//   memory or stop rings (SET_MEM_TABLE, ADD/REM_MEM_REG, GET_VRING_BASE, RESET_OWNER,
//   SET_INFLIGHT_FD) are held back until no request of the connection is in flight. Meanwhile
//   the socket is not read and the rings are not popped; the last completion resumes both.
//   A connection that goes away keeps its mappings (VuDev) until its last transport request
//   completes, so late completions never touch unmapped memory.
// * We read vhost-user messages ourselves (non-blocking, incrementally, fds collected), check
//   them (vhost_msg_check.h) and only then hand them to vu_dispatch through the read_msg hook:
//   a slow or hostile front-end can neither block the loop nor reach libvhost-user's unchecked
//   paths. Any malformed message, broken ring or libvhost-user panic disconnects the front-end;
//   the device keeps listening for the next one (QEMU reconnect=1).
// * Requests are translated by blk_request.h; each IBNBD request is a transport ClientIo whose
//   iovecs point into guest memory (no copy on our side).
#include "vhost/vhost_blk_device.h"

#include <fcntl.h>
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
};

struct Connection {
  VuDev dev;  // first: libvhost-user callbacks get &dev and we cast back
  VhostBlkDevice::Impl* impl = nullptr;
  std::shared_ptr<VhostBlkDevice> keep;  // the device outlives its connections' late completions
  int sock = -1;
  bool sock_watched = false;
  bool dead = false;
  bool broken = false;           // stop touching the rings; teardown scheduled
  bool teardown_posted = false;
  bool draining = false;         // a held-back message waits for in-flight requests
  // incremental message reader
  VhostUserMsg rx;
  size_t rx_got = 0;
  VhostUserMsg held;             // the message waiting for the drain
  const VhostUserMsg* current = nullptr;  // handed to vu_dispatch via read_msg
  std::unordered_map<int, Watch> watches;
  std::unordered_set<Request*> requests;
};

struct VhostBlkDevice::Impl {
  VhostBlkDevice* self;
  int listen_fd = -1;
  bool accepting = false;
  Connection* conn = nullptr;                // the live front-end
  std::unordered_set<Connection*> zombies;   // gone, waiting for transport completions
  std::unordered_set<Connection*> all;       // every Connection not yet deleted
  bool wce;
  std::unique_ptr<QueueCounters[]> counters;
  std::atomic<uint64_t> connections{0}, protocol_errors{0};
  VuDevIface iface{};

  explicit Impl(VhostBlkDevice* s) : self(s), wce(s->limits_.writeback) {
    counters.reset(new QueueCounters[s->limits_.queues]);
  }

  EventLoop& loop() { return *self->loop_; }
  const BlkLimits& limits() const { return self->limits_; }

  void Log(const std::string& what) {
    std::fprintf(stderr, "ibnbd vhost-blk %s: %s\n", self->socket_path_.c_str(), what.c_str());
  }
  void Emit(const std::string& type, const std::string& detail) {
    if (self->on_event_) self->on_event_(type, detail);
  }

  // ---- accept ---------------------------------------------------------------------------

  void SetAccepting(bool on) {
    if (listen_fd < 0 || on == accepting) return;
    if (on) {
      loop().Add(listen_fd, EPOLLIN, [this](uint32_t) { OnAccept(); });
    } else {
      loop().Remove(listen_fd);
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
    auto* c = new Connection();
    c->impl = this;
    c->keep = self->shared_from_this();
    if (!vu_init(&c->dev, limits().queues, fd, &Impl::OnPanic, &Impl::ReadMsg, &Impl::SetWatch,
                 &Impl::RemoveWatch, &iface)) {
      close(fd);
      delete c;
      return;
    }
    c->dev.inflight_info.fd = -1;  // vu_init leaves 0, which SET_INFLIGHT_FD would close()
    c->sock = fd;
    all.insert(c);
    wce = limits().writeback;  // a new driver starts from the device default
    conn = c;
    connections++;
    self->connected_ = true;
    SetAccepting(false);  // one front-end at a time; the next waits in the backlog
    WatchSocket(c, true);
    Emit("connected", "");
  }

  void WatchSocket(Connection* c, bool on) {
    if (on == c->sock_watched || c->sock < 0) return;
    if (on)
      loop().Add(c->sock, EPOLLIN | EPOLLRDHUP, [this, c](uint32_t) { OnReadable(c); });
    else
      loop().Remove(c->sock);
    c->sock_watched = on;
  }

  // ---- messages -------------------------------------------------------------------------

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
        if (n > 0) Violation(c, "more than 8 fds or truncated control data");
        CloseFds(&c->rx);
        c->rx_got = 0;
        return -1;
      }
      c->rx_got += size_t(n);
      if (c->rx_got == hdr && c->rx.size > sizeof(c->rx.payload)) {
        Violation(c, "message payload of " + std::to_string(c->rx.size) + " bytes");
        CloseFds(&c->rx);
        c->rx_got = 0;
        return -1;
      }
    }
  }

  void HandleMessage(Connection* c, VhostUserMsg* m) {
    m->data = nullptr;
    std::string why;
    if (!CheckVhostMsg(&c->dev, m, &why)) {
      CloseFds(m);
      Violation(c, "request " + std::to_string(m->request) + ": " + why);
      ScheduleTeardown(c, false, "");
      return;
    }
    if (NeedsDrain(m->request) && !c->requests.empty()) {
      c->held = *m;
      c->draining = true;
      WatchSocket(c, false);
      return;
    }
    Dispatch(c, m);
  }

  void Dispatch(Connection* c, VhostUserMsg* m) {
    c->current = m;
    bool ok = vu_dispatch(&c->dev);
    c->current = nullptr;
    if (!ok || c->dev.broken) {
      ScheduleTeardown(c, false, ok ? "" : "vhost-user dispatch failed");
      return;
    }
    std::string why;
    if (!CheckRings(&c->dev, &why)) {
      Violation(c, why);
      ScheduleTeardown(c, false, "");
      return;
    }
    if (m->request == VHOST_USER_SET_VRING_ENABLE || m->request == VHOST_USER_VRING_KICK)
      for (int q = 0; q < limits().queues; q++) ProcessQueue(c, q);
    int outq = 0;
    if (ioctl(c->sock, SIOCOUTQ, &outq) == 0 && outq > kMaxPendingReplyBytes) {
      Violation(c, "front-end does not read its replies");
      ScheduleTeardown(c, false, "");
    }
  }

  void Violation(Connection* c, const std::string& why) {
    (void)c;
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

  static void OnPanic(VuDev* d, const char* err) {
    Connection* c = Conn(d);
    c->broken = true;
    c->impl->Log(std::string("libvhost-user: ") + (err ? err : "?"));
    c->impl->Emit("error", std::string("vhost-user: ") + (err ? err : "?"));
  }

  static void SetWatch(VuDev* d, int fd, int, vu_watch_cb cb, void* data) {
    Connection* c = Conn(d);
    auto it = c->watches.find(fd);
    if (it != c->watches.end()) {
      it->second = {cb, data};
      return;
    }
    c->watches[fd] = {cb, data};
    Impl* impl = c->impl;
    impl->loop().Add(fd, EPOLLIN, [impl, c, fd](uint32_t) { impl->OnWatch(c, fd); });
  }

  static void RemoveWatch(VuDev* d, int fd) {
    Connection* c = Conn(d);
    if (c->watches.erase(fd)) c->impl->loop().Remove(fd);
  }

  void OnWatch(Connection* c, int fd) {
    if (c->dead || c->broken) return;
    auto it = c->watches.find(fd);
    if (it == c->watches.end()) return;
    if (c->draining) {  // rings wait; the kick is picked up by the pass after the drain
      eventfd_t v;
      eventfd_read(fd, &v);
      return;
    }
    Watch w = it->second;
    w.cb(&c->dev, VU_WATCH_IN, w.data);
    if (c->dev.broken) ScheduleTeardown(c, false, "");
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
    BlkConfig cfg = BlkConfigSpace(impl->limits(), impl->wce);
    if (len > sizeof cfg) return -1;
    std::memcpy(config, &cfg, len);
    return 0;
  }

  static int SetConfig(VuDev*, const uint8_t*, uint32_t, uint32_t, uint32_t) { return 0; }

  static void QueueStarted(VuDev* d, int qidx, bool started) {
    Connection* c = Conn(d);
    VuVirtq* vq = vu_get_queue(d, qidx);
    vu_set_queue_handler(d, vq, started ? &Impl::OnKick : nullptr);
    // Requests resubmitted from the inflight area, or queued before the first kick.
    if (started) c->impl->loop().Post([impl = c->impl, c, keep = c->keep, qidx] {
      if (impl->all.count(c) && !c->dead) impl->ProcessQueue(c, qidx);
    });
  }

  static void OnKick(VuDev* d, int qidx) {
    Connection* c = Conn(d);
    c->impl->ProcessQueue(c, qidx);
  }

  // ---- requests -------------------------------------------------------------------------

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
    PlanRequest(r->elem.out_sg, r->elem.out_num, r->elem.in_sg, r->elem.in_num, limits(), wce,
                &r->plan);
    c->requests.insert(r);
    counters[r->qidx].inflight++;
    if (r->plan.local) {
      if (!r->plan.error.empty()) Log("request failed: " + r->plan.error);
      return Finish(r, r->plan.local_status);
    }
    if (!self->session_->connected()) return Finish(r, kBlkSIoErr);
    const size_t n = r->plan.ios.size();
    r->chunks.resize(n);
    if (n > 1 && r->plan.data_bytes) counters[r->qidx].splits++;
    r->pending = uint32_t(n) + 1;  // +1: held while submitting (a Submit may complete inline)
    for (size_t i = 0; i < n; i++) {
      const PlannedIo& p = r->plan.ios[i];
      Chunk& ch = r->chunks[i];
      ch.req = r;
      proto::IoMsg m{};
      m.device_id = limits().device_id;
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

  static void ChunkDone(transport::ClientIo* io, int err) {
    Chunk* ch = static_cast<Chunk*>(io->ctx);
    ch->req->conn->impl->OnChunkDone(io, err);
  }

  void OnChunkDone(transport::ClientIo* io, int err) {
    ReleaseChunk(static_cast<Chunk*>(io->ctx)->req, err);
  }

  void ReleaseChunk(Request* r, int err) {
    if (err && !r->first_err) r->first_err = err;
    if (--r->pending) return;
    if (r->first_err) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "IBNBD request failed: %s", std::strerror(-r->first_err));
      Log(buf);
    }
    Finish(r, r->first_err ? kBlkSIoErr : kBlkSOk);
  }

  // Answers (unless already answered) and frees a request.
  void Finish(Request* r, uint8_t status) {
    Connection* c = r->conn;
    QueueCounters& q = counters[r->qidx];
    if (!r->answered && !c->dead) {
      Answer(c, r, status);
      VuVirtq* vq = vu_get_queue(&c->dev, r->qidx);
      vu_queue_notify(&c->dev, vq);
    }
    q.inflight--;
    c->requests.erase(r);
    r->~Request();
    std::free(r);
    if (c->dead) return MaybeFinalize(c);
    if (c->draining && c->requests.empty()) {
      loop().Post([this, c, keep = c->keep] {
        if (all.count(c)) ResumeAfterDrain(c);
      });
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

  void ResumeAfterDrain(Connection* c) {
    if (c->dead || !c->draining || !c->requests.empty()) return;
    c->draining = false;
    VhostUserMsg m = c->held;
    Dispatch(c, &m);
    if (c->dead || c->broken) return;
    WatchSocket(c, true);
    for (int q = 0; q < limits().queues; q++) ProcessQueue(c, q);
    OnReadable(c);  // bytes may already wait in the socket
  }

  // ---- teardown -------------------------------------------------------------------------

  void ScheduleTeardown(Connection* c, bool fail_inflight, const std::string& why) {
    c->broken = true;
    if (c->teardown_posted || c->dead) return;
    c->teardown_posted = true;
    if (!why.empty()) Log(why);
    loop().Post([this, c, keep = c->keep, fail_inflight] {
      if (all.count(c)) Teardown(c, fail_inflight);
    });
  }

  void Teardown(Connection* c, bool fail_inflight) {
    if (c->dead) return;
    if (fail_inflight && !c->dev.broken) {
      for (Request* r : c->requests)
        if (!r->answered) Answer(c, r, kBlkSIoErr);
      for (int q = 0; q < limits().queues; q++) vu_queue_notify(&c->dev, vu_get_queue(&c->dev, q));
    }
    c->dead = true;
    WatchSocket(c, false);
    for (auto& w : c->watches) loop().Remove(w.first);
    c->watches.clear();
    if (c->draining) CloseFds(&c->held);
    CloseFds(&c->rx);
    close(c->sock);
    c->sock = -1;
    c->dev.sock = -1;
    if (conn == c) {
      conn = nullptr;
      self->connected_ = false;
      if (!self->closed_) SetAccepting(true);
    }
    zombies.insert(c);
    Emit("disconnected", "");
    MaybeFinalize(c);
  }

  void MaybeFinalize(Connection* c) {
    if (!c->dead || !c->requests.empty() || !zombies.count(c)) return;
    zombies.erase(c);
    all.erase(c);
    vu_deinit(&c->dev);  // unmaps guest memory: nothing of ours points there any more
    auto keep = std::move(c->keep);
    delete c;
    // keep (the device) is released after the connection is gone
  }
};

VhostBlkDevice::VhostBlkDevice(BlkLimits limits, std::string socket_path,
                               std::shared_ptr<transport::ClientSession> session, EventFn on_event)
    : limits_(std::move(limits)),
      socket_path_(std::move(socket_path)),
      session_(std::move(session)),
      on_event_(std::move(on_event)),
      loop_(&IoThreads::Get().loop(g_next_loop++)),
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
    if (Connection* c = impl_->conn) {
      was = true;
      impl_->Teardown(c, true);
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
      if (Connection* c = impl_->conn) impl_->Teardown(c, true);
    });
  }
  for (int waited = 0;; waited += 10) {
    bool drained = false;
    loop_->RunSync([&] { drained = impl_->zombies.empty(); });
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
