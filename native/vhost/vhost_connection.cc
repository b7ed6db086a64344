// The connection side of a vhost-user-blk device: the listening socket and the one front-end
// accepted at a time, vhost-user message framing (read by us, fds collected from SCM_RIGHTS),
// the hold-back of messages that must wait for a drain, the registration of guest memory with
// the session, and the callbacks libvhost-user makes from vu_dispatch. The request side is
// vhost_queue.cc; the state both share is vhost_blk_internal.h.
//
// Threads and locks: all of this runs on the device's home loop H. Accepting and reading the
// socket touch only H's own state and take no lock. A checked message is dispatched under the
// connection's write lock, so no queue loop is inside libvhost-user while the message remaps
// guest memory or rewrites a ring. A message that unmaps memory or stops rings while requests
// are at the transport is held back (socket unwatched, rings not popped) until the last of them
// settles, then dispatched from AfterDrain, again on H under the write lock. Two callbacks run
// elsewhere too: OnPanic also on a queue loop under the read lock (a ring found broken while
// popping or notifying), which is why it only sets an atomic, logs and emits; and SetWatch hands
// a kick eventfd to the queue's loop by Post() rather than registering it from H.
#include <fcntl.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>

#include "vhost/vhost_blk_internal.h"
#include "vhost/vhost_msg_check.h"

namespace ibnbd::vhost {
namespace {

constexpr int kMaxPendingReplyBytes = 256 * 1024;  // a front-end that stops reading replies
constexpr uint64_t kProtocolFeatures =
    (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
    (1ull << VHOST_USER_PROTOCOL_F_CONFIG) | (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
    (1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) |
    // the back-end channel: only for CONFIG_CHANGE_MSG when the capacity changes (resize)
    (1ull << VHOST_USER_PROTOCOL_F_SLAVE_REQ) |
    // migration: the dirty log in shared memory (dirty_log.h); QEMU blocks migration without it
    (1ull << VHOST_USER_PROTOCOL_F_LOG_SHMFD);

}  // namespace

void CloseFds(VhostUserMsg* m) {
  for (int i = 0; i < m->fd_num; i++)
    if (m->fds[i] >= 0) close(m->fds[i]);
  m->fd_num = 0;
}

// ---- accept (H, no lock: H-only state) --------------------------------------------------

void VhostBlkDevice::Impl::SetAccepting(bool on) {
  if (listen_fd < 0 || on == accepting) return;
  if (on) {
    home().Add(listen_fd, EPOLLIN, [this](uint32_t) { OnAccept(); });
  } else {
    home().Remove(listen_fd);
  }
  accepting = on;
}

void VhostBlkDevice::Impl::OnAccept() {
  int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return;
  if (conn) {  // cannot happen while not accepting; refuse rather than share a device
    close(fd);
    return;
  }
  auto c = std::make_shared<Connection>(&dirty_pages);
  c->impl = this;
  c->keep = self->shared_from_this();
  c->requests.resize(limits().queues);
  c->waiting.resize(limits().queues);
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

void VhostBlkDevice::Impl::WatchSocket(Connection* c, bool on) {
  if (on == c->sock_watched || c->sock < 0) return;
  if (on)
    home().Add(c->sock, EPOLLIN | EPOLLRDHUP, [this, c](uint32_t) { OnReadable(c); });
  else
    home().Remove(c->sock);
  c->sock_watched = on;
}

// ---- messages (H; checked and dispatched under the write lock) --------------------------

void VhostBlkDevice::Impl::OnReadable(Connection* c) {
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
int VhostBlkDevice::Impl::ReadSome(Connection* c) {
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

void VhostBlkDevice::Impl::HandleMessage(Connection* c, VhostUserMsg* m) {
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
    // Requests waiting for a server that is away would hold QEMU's main loop for as long as the
    // server stays away: they never reached the transport, so they can be answered now.
    DropHeld(c, true);
    return;
  }
  Dispatch(c, m);
}

// Under the write lock.
void VhostBlkDevice::Impl::Dispatch(Connection* c, VhostUserMsg* m) {
  const bool remaps =
      m->request == VHOST_USER_SET_MEM_TABLE || m->request == VHOST_USER_REM_MEM_REG;
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

// Posted to H by Settle once the connection has no request in flight: finalizes a dead
// connection, or dispatches the held-back message and resumes the rings and the socket.
void VhostBlkDevice::Impl::AfterDrain(Connection* c) {
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

void VhostBlkDevice::Impl::Violation(const std::string& why) {
  protocol_errors++;
  Log(LogLevel::kWarn, "protocol error, disconnecting the front-end: " + why);
  Emit("error", "vhost-user protocol error: " + why);
}

// ---- guest memory (H, write lock) -------------------------------------------------------

// Registers every mapped guest region not registered yet with the session, so requests go
// to the wire straight from guest memory (RDMA: MRs; otherwise the bounce pool is used and
// counted). A failure is not fatal: that region's requests bounce.
void VhostBlkDevice::Impl::RegisterGuestMemory(Connection* c) {
  for (uint32_t i = 0; i < c->dev.nregions; i++) {
    const VuDevRegion& r = c->dev.regions[i];
    uintptr_t addr = uintptr_t(r.mmap_addr + r.mmap_offset);
    bool known = false;
    for (const auto& g : c->registered) known |= g.addr == addr && g.len == r.size;
    if (known || !r.mmap_addr || !r.size) continue;
    uint64_t handle = 0;
    int rc = self->session_->RegisterMemory(reinterpret_cast<void*>(addr), r.size, &handle);
    if (rc < 0) {
      Log(LogLevel::kWarn, "guest memory region of " + std::to_string(r.size) + " bytes not registered (" +
          std::strerror(-rc) + "): its requests use the bounce buffers");
      continue;
    }
    c->registered.push_back({addr, r.size, handle});
  }
}

void VhostBlkDevice::Impl::UnregisterGuestMemory(Connection* c) {
  for (const auto& g : c->registered) self->session_->UnregisterMemory(g.handle);
  c->registered.clear();
}

// ---- libvhost-user callbacks (H, inside vu_dispatch, write lock, unless noted) ----------

bool VhostBlkDevice::Impl::ReadMsg(VuDev* d, int, VhostUserMsg* out) {
  Connection* c = Conn(d);
  if (!c->current) return false;
  *out = *c->current;
  return true;
}

// H (dispatch, teardown) or a queue loop (pop, notify), under either side of the lock.
void VhostBlkDevice::Impl::OnPanic(VuDev* d, const char* err) {
  Connection* c = Conn(d);
  c->broken = true;
  c->impl->Log(LogLevel::kError, std::string("libvhost-user: ") + (err ? err : "?"));
  c->impl->Emit("error", std::string("vhost-user: ") + (err ? err : "?"));
}

// Called by libvhost-user inside dispatch (H, write lock) for kick eventfds; data is the
// queue index. The eventfd is dup()ed so the queue loop owns what it watches, whatever
// libvhost-user closes meanwhile.
void VhostBlkDevice::Impl::SetWatch(VuDev* d, int fd, int, vu_watch_cb cb, void* data) {
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
    int rc = loop->Add(dup_fd, EPOLLIN,
                       [sc, fd, dup_fd](uint32_t) { OnKickFd(sc.get(), fd, dup_fd); });
    // Cannot happen with a fresh descriptor; if it does the ring would silently stall, so say it.
    if (rc != 0) sc->impl->Log(LogLevel::kError, std::string("cannot watch a kick eventfd: ") + std::strerror(-rc));
  });
}

void VhostBlkDevice::Impl::RemoveWatch(VuDev* d, int fd) {
  Connection* c = Conn(d);
  auto it = c->watches.find(fd);
  if (it == c->watches.end()) return;
  Watch w = it->second;
  c->watches.erase(it);
  UnwatchLater(w);
}

void VhostBlkDevice::Impl::UnwatchLater(const Watch& w) {
  EventLoop* loop = w.loop;
  int dup_fd = w.dup_fd;
  loop->Post([loop, dup_fd] {
    loop->Remove(dup_fd);
    close(dup_fd);
  });
}

uint64_t VhostBlkDevice::Impl::GetFeatures(VuDev* d) {
  return BlkFeatures(Conn(d)->impl->limits());
}

// VHOST_F_LOG_ALL may come and go at any time while the rings run (QEMU turns logging on when
// a migration starts and off when it is cancelled); it takes effect from the next answer.
void VhostBlkDevice::Impl::SetFeatures(VuDev* d, uint64_t) {
  Conn(d)->impl->UpdateLogging(Conn(d));
}

void VhostBlkDevice::Impl::UpdateLogging(Connection* c) {
  const bool on = DirtyLog::Enabled(c->dev, c->log);
  if (logging.exchange(on) != on)
    Log(LogLevel::kInfo, on ? "dirty logging on (migration)" : "dirty logging off");
}

int VhostBlkDevice::Impl::ProcessMsg(VuDev* d, VhostUserMsg* m, int* do_reply) {
  Connection* c = Conn(d);
  switch (m->request) {
    case VHOST_USER_GET_PROTOCOL_FEATURES:
      // Exactly what this device implements; libvhost-user's own list adds host notifiers
      // and postcopy, which we do not serve.
      m->payload.u64 = kProtocolFeatures;
      m->size = sizeof(m->payload.u64);
      m->fd_num = 0;
      *do_reply = 1;
      return 1;
    case VHOST_USER_SET_LOG_BASE: {
      // Our own log, not libvhost-user's (dirty_log.h says why); its dev->log_table stays NULL,
      // so its own marking never runs. With LOG_SHMFD the front-end waits for a reply.
      std::string why;
      const int fd = m->fds[0];
      m->fd_num = 0;
      if (!c->log.SetBase(fd, m->payload.log.mmap_size, m->payload.log.mmap_offset, &why)) {
        c->impl->Log(LogLevel::kError, why);
        d->broken = true;  // no log means a migration that loses pages: end the connection
        *do_reply = 0;
        return 1;
      }
      c->impl->UpdateLogging(c);
      m->payload.u64 = 0;
      m->size = sizeof(m->payload.u64);
      *do_reply = 1;
      return 1;
    }
    case VHOST_USER_SET_LOG_FD:
      c->log.SetCallFd(m->fds[0]);
      m->fd_num = 0;
      *do_reply = 0;
      return 1;
    case VHOST_USER_SET_CONFIG: {
      // Only `writeback` is writable (CONFIG_WCE); other writes are ignored, not fatal.
      const VhostUserConfig& cfg = m->payload.config;
      if (cfg.offset == offsetof(BlkConfig, wce) && cfg.size == 1)
        c->impl->wce = cfg.region[0] != 0;
      else
        c->impl->Log(LogLevel::kWarn, "SET_CONFIG of read-only config bytes ignored");
      *do_reply = 0;
      return 1;
    }
    default:
      return 0;
  }
}

int VhostBlkDevice::Impl::GetConfig(VuDev* d, uint8_t* config, uint32_t len) {
  Impl* impl = Conn(d)->impl;
  BlkLimits live = impl->limits();  // the capacity a re-OPEN reported, if it changed
  live.size_bytes = impl->self->capacity_sectors() << kSectorShift;
  BlkConfig cfg = BlkConfigSpace(live, impl->wce);
  if (len > sizeof cfg) return -1;
  std::memcpy(config, &cfg, len);
  return 0;
}

int VhostBlkDevice::Impl::SetConfig(VuDev*, const uint8_t*, uint32_t, uint32_t, uint32_t) {
  return 0;
}

// ---- the back-end channel (H) ------------------------------------------------------------

// A CONFIG_CHANGE_MSG is a bare header (no payload, no reply asked: QEMU reads GET_CONFIG on the
// main socket while handling it, so waiting here for an ack would wait on ourselves). On H, the
// only thread that dispatches SET_SLAVE_REQ_FD or tears the connection down, so the channel's fd
// cannot change under the write; libvhost-user's own mutex for it is taken all the same.
bool VhostBlkDevice::NotifyConfigChange() {
  bool sent = false;
  loop_->RunSync([&] {
    ConnPtr c = impl_->conn;
    if (!c) return;
    VuDev& d = c->dev;
    const uint64_t want = (1ull << VHOST_USER_PROTOCOL_F_SLAVE_REQ) | (1ull << VHOST_USER_PROTOCOL_F_CONFIG);
    if (d.slave_fd < 0 || (d.protocol_features & want) != want) return;
    struct {
      uint32_t request, flags, size;
    } hdr = {VHOST_USER_SLAVE_CONFIG_CHANGE_MSG, 1 /* version */, 0};
    pthread_mutex_lock(&d.slave_mutex);
    sent = send(d.slave_fd, &hdr, sizeof hdr, MSG_NOSIGNAL | MSG_DONTWAIT) == ssize_t(sizeof hdr);
    pthread_mutex_unlock(&d.slave_mutex);
    if (!sent) impl_->Log(LogLevel::kWarn, "the front-end's back-end channel did not take the config change: " + std::string(strerror(errno)));
  });
  return sent;
}

void VhostBlkDevice::Impl::QueueStarted(VuDev* d, int qidx, bool started) {  // H, write lock
  Connection* c = Conn(d);
  VuVirtq* vq = vu_get_queue(d, qidx);
  vu_set_queue_handler(d, vq, started ? &Impl::OnKick : nullptr);
  // Requests resubmitted from the inflight area, or queued before the first kick.
  if (started) c->impl->PostProcess(c, qidx);
}

}  // namespace ibnbd::vhost
