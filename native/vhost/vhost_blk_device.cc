// The vhost-user-blk back-end of one mapped device: the public methods of VhostBlkDevice. The
// work is in vhost_connection.cc (socket, vhost-user messages, libvhost-user callbacks) and
// vhost_queue.cc (requests, teardown), over the state in vhost_blk_internal.h.
//
// Design
// ------
// * Threads. The device has a home loop H (an IoThreads loop, chosen round-robin per device):
//   the listening socket, the front-end socket, vu_dispatch, teardown. Virtqueue q lives on
//   IoThreads loop q (modulo the pool size, event_loop.h): its kick eventfd is watched there,
//   and vu_queue_pop, the transport Submit, the completion and vu_queue_push/notify all run on
//   that one thread, so a request never changes threads. The public methods below run on the
//   caller's thread: Start, DisconnectFrontend and Close hand their loop-side work to H with
//   RunSync, which blocks the caller (Close then polls H until every connection is finalized
//   or the timeout passes); Stats only reads atomics; SetServerDeviceId stores atomics and posts
//   the release of held requests to H, which posts it to each queue's loop.
// * Waiting through a server's absence: while the device is not open on the server and its
//   policy waits, the rings are not popped and requests that cannot go out are held on their
//   queue (Request memory they already had); reopening sends them again in order. See
//   SetServerDeviceId in vhost_blk_device.h.
// * Locking, the scheme of QEMU's C virtiofsd (tools/virtiofsd/fuse_virtio.c,
//   vu_dispatch_rwlock). libvhost-user has no locks, so each connection has a writer-preferring
//   rwlock: vu_dispatch and teardown run under the write side (they remap memory and rewrite
//   rings), queue work under the read side. A queue is only ever touched by its own loop (or by
//   H under the write lock), so no per-queue lock is needed. The read side is held for one
//   event's work, never across a wait; the writer only Post()s to other loops, never waits for
//   them, so no cycle can form. Re-entry (a Submit completing inline) is detected with a
//   thread-local and does not re-lock.
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

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "vhost/vhost_blk_internal.h"

namespace ibnbd::vhost {
namespace {

std::atomic<unsigned> g_next_loop{0};

}  // namespace

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

void VhostBlkDevice::SetServerDeviceId(std::optional<uint32_t> id, bool wait) {
  wait_.store(!id && wait, std::memory_order_release);
  server_device_.store(id ? uint64_t(*id) : kNoServerDevice, std::memory_order_release);
  if (id)
    impl_->PostToQueues([impl = impl_.get()](Connection* c, int q) { impl->ResumeHeld(c, q); });
  else if (!wait)
    impl_->PostToQueues([impl = impl_.get()](Connection* c, int q) { impl->FailHeld(c, q); });
  // nullopt + wait: nothing to post; kicks find the rings paused (RingsPaused)
}

int VhostBlkDevice::Start() {
  if (socket_path_.empty() || socket_path_.size() >= sizeof(sockaddr_un::sun_path))
    return -ENAMETOOLONG;
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

uint64_t VhostBlkDevice::AtTransport() const {
  uint64_t inflight = 0, waiting = 0;
  for (unsigned i = 0; i < limits_.queues; i++) {
    inflight += impl_->counters[i].inflight.load();
    waiting += impl_->counters[i].waiting.load();
  }
  return inflight > waiting ? inflight - waiting : 0;
}

bool VhostBlkDevice::Close(int timeout_ms, bool hand_over) {
  int waited = 0;
  if (hand_over && !closed_.load()) {
    // No new request is popped (RingsPaused); what the server is executing gets its answer. A
    // kick meanwhile finds the rings paused and leaves its requests there for the next daemon.
    handing_over_.store(true);
    for (; AtTransport() > 0 && waited < timeout_ms; waited += 10) usleep(10000);
  }
  if (!closed_.exchange(true)) {
    loop_->RunSync([&] {
      impl_->SetAccepting(false);
      if (impl_->listen_fd >= 0) {
        close(impl_->listen_fd);
        impl_->listen_fd = -1;
        unlink(socket_path_.c_str());
      }
      if (ConnPtr c = impl_->conn) impl_->Teardown(c.get(), !hand_over);
    });
  }
  for (;; waited += 10) {
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
    IoSnapshot q;
    c.io.AddTo(&q);
    c.io.AddTo(&s.io);
    // the show totals are sums of the per-operation metrics, never counted twice
    QueueStats qs;
    for (const IoOpSnapshot& op : q.ops) {
      qs.requests += op.requests;
      for (uint64_t e : op.errors) qs.errors += e;
    }
    qs.read_bytes = q.ops[unsigned(MetricOp::kRead)].bytes;
    qs.write_bytes = q.ops[unsigned(MetricOp::kWrite)].bytes;
    qs.splits = c.splits.load();
    qs.inflight = c.inflight.load();
    qs.waiting = c.waiting.load();
    s.queues.push_back(qs);
  }
  s.connections = impl_->connections.load();
  s.protocol_errors = impl_->protocol_errors.load();
  s.dirty_log = impl_->logging.load();
  s.dirty_pages = impl_->dirty_pages.load();
  return s;
}

}  // namespace ibnbd::vhost
