// The queue side of a vhost-user-blk device: a kick pops the ring, each request is planned
// (blk_request.h) and sent to the transport as one ClientIo per chunk, the last chunk's
// completion answers the guest on the used ring, and the driver is notified once per loop
// batch. The end of a connection is here too (teardown, finalize), because it is paced by the
// requests still at the transport. The message side is vhost_connection.cc; the state both
// share is vhost_blk_internal.h.
//
// Threads and locks: queue q's kick, pop, transport Submit, completion, used-ring push and
// notify all run on IoThreads loop q (mod the pool size), so a request never changes threads
// and the transport's rule (completion on the submitting IO thread) holds. Each of these
// events holds the connection's read lock (ReadGuard) for that event only, so H can take the
// write lock between two of them to dispatch a message; a Submit that completes inline
// re-enters on the same thread, which tl_reading detects so the lock is not taken twice. The
// read lock, not a per-queue lock, is enough because a queue is only touched by its own loop
// or by H under the write lock. Teardown and finalize run on H and take the write lock
// themselves: teardown may answer requests still in flight (IOERR) and stops the kicks;
// finalize does nothing while the transport still holds a request (the Settle of the last one
// posts it again to H), so guest memory is unregistered and unmapped only after that.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <string>

#include "proto/ibnbd_proto.h"
#include "transport/core/policy.h"
#include "vhost/vhost_blk_internal.h"

namespace ibnbd::vhost {
namespace {

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

}  // namespace

// ---- kicks (queue loops, read lock) -----------------------------------------------------

// Queue loop: a kick. Static: after teardown the device may be gone, only c is alive.
void VhostBlkDevice::Impl::OnKickFd(Connection* c, int fd, int dup_fd) {
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

void VhostBlkDevice::Impl::OnKick(VuDev* d, int qidx) {  // queue loop, read lock held by OnKickFd
  Connection* c = Conn(d);
  c->impl->ProcessQueue(c, qidx);
}

void VhostBlkDevice::Impl::PostProcess(Connection* c, int qidx) {  // H
  ConnPtr sc = Shared(c);
  if (!sc) return;
  QueueLoop(qidx).Post([this, sc, keep = sc->keep, qidx] {
    ReadGuard r(sc.get());
    ProcessQueue(sc.get(), qidx);
  });
}

void VhostBlkDevice::Impl::PostProcessAll(Connection* c) {  // H
  for (int q = 0; q < limits().queues; q++) PostProcess(c, q);
}

// How much data for the device (WRITE payloads) one pass pops before it lets the loop run.
// Popping a whole ring of large WRITEs in one pass sends them all before the loop reads a single
// answer: at 128 KiB QD8 the driver got its 8 completions only after the 8th WRITE was out, and
// resubmitted all 8 at once, so the client and the server took turns instead of overlapping.
// READs carry no data out (their requests are small), and small WRITEs (4 KiB QD32: 128 KiB a
// ring) never reach it.
constexpr uint64_t kPopYieldBytes = 256 * 1024;

void VhostBlkDevice::Impl::ProcessQueue(Connection* c, int qidx) {
  VuVirtq* vq = vu_get_queue(&c->dev, qidx);
  bool popped = false;
  uint64_t popped_bytes = 0;
  while (!c->dead && !c->broken && !c->draining && !c->dev.broken) {
    if (popped_bytes >= kPopYieldBytes) {
      // the rest in a later batch of this loop, after the answers that came meanwhile; what was
      // popped goes out at this batch's end
      if (ConnPtr sc = c->weak.lock()) {
        QueueLoop(qidx).Post([this, sc, keep = sc->keep, qidx] {
          ReadGuard r(sc.get());
          ProcessQueue(sc.get(), qidx);
        });
        break;
      }
    }
    if (!vu_queue_started(&c->dev, vq) || !vu_queue_enabled(&c->dev, vq)) break;
    // waiting for the server: new requests stay in the ring (no memory of ours); reopening
    // posts this again
    if (self->RingsPaused()) break;
    Request* r = PopRequest(c, qidx);
    if (!r) break;
    popped = true;
    for (uint32_t i = 0; i < r->elem.out_num; i++) popped_bytes += r->elem.out_sg[i].iov_len;
    StartRequest(r);
  }
  // a pop writes avail_event into the used ring (VIRTIO_RING_F_EVENT_IDX)
  if (popped && !c->dev.broken && DirtyLog::Enabled(c->dev, c->log)) LogUsedRing(c, qidx);
  if (c->dev.broken) ScheduleTeardown(c, false, "");
}

// ---- requests (queue loops, read lock) --------------------------------------------------

// The next available request of queue qidx, in the memory libvhost-user allocated for its element
// (room for a whole Request), planned (blk_request.h); nullptr when the ring is empty.
Request* VhostBlkDevice::Impl::PopRequest(Connection* c, int qidx) {
  void* mem = vu_queue_pop(&c->dev, vu_get_queue(&c->dev, qidx), sizeof(Request));
  if (!mem) return nullptr;
  VuVirtqElement elem = *static_cast<VuVirtqElement*>(mem);
  Request* r = new (mem) Request();
  r->elem = elem;
  r->conn = c;
  r->qidx = qidx;
  r->start_ns = MonotonicNs();
  PlanRequest(elem.out_sg, elem.out_num, elem.in_sg, elem.in_num, limits(), self->capacity_sectors(), wce, &r->plan);
  return r;
}

void VhostBlkDevice::Impl::StartRequest(Request* r) {
  Connection* c = r->conn;
  c->requests[r->qidx].insert(r);
  c->inflight++;
  counters[r->qidx].inflight++;
  // how far the guest has written: a shrink below it is refused (ibnbd resize)
  for (const PlannedIo& p : r->plan.ios)
    if (p.op == kOpWrite || p.op == kOpWriteZeroes) self->NoteWritten((p.sector << kSectorShift) + p.bytes);
  if (r->plan.local) {
    if (!r->plan.error.empty()) LogRequest("request failed: " + r->plan.error);
    return Finish(r, r->plan.local_status);
  }
  SubmitRequest(r);
}

// Planned and counted (in `requests` and inflight): sends every chunk, or holds the request when
// it cannot go out now and the device's policy waits, or answers IOERR.
void VhostBlkDevice::Impl::SubmitRequest(Request* r) {
  // read once: every chunk of a request goes to the same server device
  const uint64_t server_device = self->server_device_.load(std::memory_order_acquire);
  if (server_device == kNoServerDevice || !self->session_->connected())
    return self->HoldsRequests() ? Hold(r) : Finish(r, kBlkSIoErr);
  r->first_err = 0;
  r->lost = false;
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
void VhostBlkDevice::Impl::ChunkDone(transport::ClientIo* io, int err) {
  Request* r = static_cast<Chunk*>(io->ctx)->req;
  Connection* c = r->conn;
  ReadGuard g(c);
  c->impl->ReleaseChunk(r, err);
}

void VhostBlkDevice::Impl::ReleaseChunk(Request* r, int err) {
  if (err == transport::core::kLostWithPath)
    r->lost = true;  // nothing known of it on the server: it may go again as a whole
  else if (err && !r->first_err)
    r->first_err = err;
  if (--r->pending) return;
  if (r->lost && !r->first_err) {
    if (self->HoldsRequests() && !r->answered && !r->conn->dead) return Hold(r);
    r->first_err = transport::core::kLostWithPath;
  }
  if (r->first_err) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "IBNBD request failed: %s", std::strerror(-r->first_err));
    LogRequest(buf);
  }
  Finish(r, r->first_err ? kBlkSIoErr : kBlkSOk);
}

// Queue loop, read lock: the request waits on its queue, unanswered, for the device to be open
// again (ResumeHeld) or closed for good (FailHeld); a drain or a teardown drops it (DropHeld).
void VhostBlkDevice::Impl::Hold(Request* r) {
  // a message already waits for the queues to empty: waiting would hold QEMU's main loop too
  if (r->conn->draining) return Finish(r, kBlkSIoErr);
  r->chunks.clear();
  r->pending = 0;
  r->conn->waiting[r->qidx].push_back(r);
  counters[r->qidx].waiting++;
}

// Queue loop: the device is open again. Held requests go first, in the order they were held,
// then whatever the ring gathered meanwhile.
void VhostBlkDevice::Impl::ResumeHeld(Connection* c, int qidx) {
  std::deque<Request*> now;
  now.swap(c->waiting[qidx]);
  for (Request* r : now) {
    counters[qidx].waiting--;
    if (c->dead) {  // teardown ran first and dropped nothing of these: free them unanswered
      Finish(r, kBlkSIoErr);
      continue;
    }
    SubmitRequest(r);
  }
  ProcessQueue(c, qidx);
}

// Queue loop: the device will not be open again soon (fast_io_fail_tmo, ctrl_loss_tmo, a failed
// re-OPEN): what waited is answered IOERR, and popping resumes so that new requests fail too.
void VhostBlkDevice::Impl::FailHeld(Connection* c, int qidx) {
  std::deque<Request*> now;
  now.swap(c->waiting[qidx]);
  if (!now.empty()) LogRequest(std::to_string(now.size()) + " waiting requests failed: the device is closed");
  for (Request* r : now) {
    counters[qidx].waiting--;
    Finish(r, kBlkSIoErr);
  }
  ProcessQueue(c, qidx);
}

// Any thread: runs fn(c, q) on queue q's loop, under c's read lock, for every queue of every
// connection still alive. Hops through H, which owns the set of connections.
void VhostBlkDevice::Impl::PostToQueues(std::function<void(Connection*, int)> fn) {
  home().Post([this, keep = self->shared_from_this(), fn = std::move(fn)] {
    for (auto& [raw, sc] : all) {
      if (raw->dead) continue;
      for (int q = 0; q < limits().queues; q++) {
        QueueLoop(q).Post([sc = sc, keep = sc->keep, q, fn] {
          ReadGuard r(sc.get());
          if (!sc->dead) fn(sc.get(), q);
        });
      }
    }
  });
}

// H, write lock (exclusive: no queue loop touches the rings or the held lists meanwhile).
void VhostBlkDevice::Impl::DropHeld(Connection* c, bool answer) {
  uint64_t n = 0;
  for (int q = 0; q < limits().queues; q++) {
    std::deque<Request*> now;
    now.swap(c->waiting[q]);
    if (now.empty()) continue;
    const bool speak = answer && !c->dead && !c->dev.broken;
    for (Request* r : now) {
      counters[q].waiting--;
      if (speak && !r->answered) Answer(c, r, kBlkSIoErr);
      counters[q].inflight--;
      c->requests[q].erase(r);
      r->~Request();
      std::free(r);
      n++;
    }
    if (speak) vu_queue_notify(&c->dev, vu_get_queue(&c->dev, q));
    LogRequest(std::to_string(now.size()) + " waiting requests " + (speak ? "answered IOERR" : "dropped") +
               (c->dead ? ": the front-end is gone" : ": the front-end stops the rings"));
  }
  if (n) Settle(c, n);
}

// Answers (unless already answered) and frees a request.
void VhostBlkDevice::Impl::Finish(Request* r, uint8_t status) {
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
void VhostBlkDevice::Impl::Settle(Connection* c, uint64_t n) {
  if ((c->inflight -= n) == 0 && (c->dead || c->draining)) {
    // the home loop finalizes a dead connection or resumes the held message
    home().Post([this, sc = c->keep, c] { AfterDrain(c); });
  }
  if (c->dev.broken) ScheduleTeardown(c, false, "");
}

// The request's operation, size and fate in the queue's metrics (common/io_metrics.h).
static void RecordAnswer(IoMetrics& m, const Request& r, uint8_t status) {
  const RequestPlan& p = r.plan;
  MetricOp op = p.type == kBlkTIn             ? MetricOp::kRead
                : p.type == kBlkTOut          ? MetricOp::kWrite
                : p.type == kBlkTFlush        ? MetricOp::kFlush
                : p.type == kBlkTDiscard      ? MetricOp::kDiscard
                : p.type == kBlkTWriteZeroes  ? MetricOp::kWriteZeroes
                                              : MetricOp::kOther;
  uint64_t bytes = p.data_bytes;
  if (op == MetricOp::kDiscard || op == MetricOp::kWriteZeroes)
    for (const PlannedIo& io : p.ios) bytes += io.bytes;
  // IOERR: refused here before any IO (invalid), the server's errno (io), or the request never
  // got an answer from the server: lost with its path, closed session, device gone (transport)
  const int err = r.first_err;
  ErrorKind kind = status == kBlkSUnsupp ? ErrorKind::kUnsupported
                   : p.local             ? ErrorKind::kInvalid
                   : err && err != transport::core::kLostWithPath && err != -ECONNABORTED
                       ? ErrorKind::kIo
                       : ErrorKind::kTransport;
  m.Record(op, status == kBlkSOk, kind, bytes, r.start_ns);
}

// Queue loop (read lock), or H under the write lock when teardown fails what is in flight.
void VhostBlkDevice::Impl::Answer(Connection* c, Request* r, uint8_t status) {
  QueueCounters& q = counters[r->qidx];
  uint32_t len = 0;
  if (r->plan.status) {
    *r->plan.status = status;
    len = status == kBlkSOk ? r->plan.used_len : 1;
  }
  RecordAnswer(q.io, *r, status);
  r->answered = true;
  if (c->dev.broken) return;
  // Migration: the pages are marked once written and before the guest can see the answer; the
  // used ring once its entry is written (a log read between a mark and the write it covers
  // would miss the write).
  const bool logging = DirtyLog::Enabled(c->dev, c->log);
  if (logging && !LogRequestPages(c, r)) return;
  vu_queue_push(&c->dev, vu_get_queue(&c->dev, r->qidx), &r->elem, len);
  if (logging) LogUsedRing(c, r->qidx);
}

// Every device-writable buffer of the request (read data, GET_ID string, status byte), whole:
// marking a page the device did not write only costs the migration one more copy of it.
bool VhostBlkDevice::Impl::LogRequestPages(Connection* c, Request* r) {
  if (c->log.MarkIov(c->dev, r->elem.in_sg, r->elem.in_num)) return true;
  protocol_errors++;
  ScheduleTeardown(c, false, "the front-end's dirty log does not cover the guest memory of a request");
  return false;
}

bool VhostBlkDevice::Impl::LogUsedRing(Connection* c, int qidx) {
  if (c->log.MarkUsedRing(*vu_get_queue(&c->dev, qidx))) {
    c->log.Kick();
    return true;
  }
  protocol_errors++;
  ScheduleTeardown(c, false, "the front-end's dirty log does not cover used ring " + std::to_string(qidx));
  return false;
}

void VhostBlkDevice::Impl::LogRequest(const std::string& what) {
  int64_t now = int64_t(std::time(nullptr));
  int64_t win = log_window.load();
  if (win != now && log_window.compare_exchange_strong(win, now)) {
    uint64_t n = log_in_window.exchange(0);
    if (n > kRequestLogBurst)
      Log(LogLevel::kWarn, std::to_string(n - kRequestLogBurst) + " request failures not logged");
  }
  if (log_in_window++ < kRequestLogBurst) Log(LogLevel::kWarn, what);
}

// ---- teardown, finalize (H, write lock) -------------------------------------------------

// Any loop, either lock side (or none): only flags the connection and posts the work to H.
void VhostBlkDevice::Impl::ScheduleTeardown(Connection* c, bool fail_inflight,
                                            const std::string& why) {
  c->broken = true;
  if (c->teardown_posted.exchange(true) || c->dead) return;
  if (!why.empty()) Log(LogLevel::kWarn, why);
  home().Post([this, keep = c->keep, c, fail_inflight] {
    if (Shared(c)) Teardown(c, fail_inflight);
  });
}

void VhostBlkDevice::Impl::Teardown(Connection* c, bool fail_inflight) {
  if (c->teardown_done) return;
  c->teardown_done = true;
  {
    WriteGuard w(c);
    if (fail_inflight && !c->dev.broken) {
      for (auto& set : c->requests)
        for (Request* r : set)
          if (!r->answered) Answer(c, r, kBlkSIoErr);
      for (int q = 0; q < limits().queues; q++) {
        FailUnpopped(c, q);
        vu_queue_notify(&c->dev, vu_get_queue(&c->dev, q));
      }
    }
    c->dead = true;
    DropHeld(c, false);  // answered above when fail_inflight; never at the transport
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
    logging = false;
    self->connected_ = false;
    if (!self->closed_) SetAccepting(true);
  }
  Emit("disconnected", "");
  MaybeFinalize(c);
}

// H, write lock, in a teardown that fails what the front-end sent: the requests still in the
// ring (made available, not yet popped) are answered IOERR too, so a forced unmap leaves the
// guest waiting on none of them. At most one ring's worth: a front-end that keeps adding
// requests meanwhile cannot hold the home loop.
void VhostBlkDevice::Impl::FailUnpopped(Connection* c, int qidx) {
  VuVirtq* vq = vu_get_queue(&c->dev, qidx);
  if (!vu_queue_started(&c->dev, vq) || !vu_queue_enabled(&c->dev, vq)) return;
  unsigned n = 0;
  for (; n < vq->vring.num && !c->dev.broken; n++) {
    Request* r = PopRequest(c, qidx);  // planned: its status byte, its type for the metrics
    if (!r) break;
    Answer(c, r, kBlkSIoErr);
    r->~Request();
    std::free(r);
  }
  if (n) LogRequest(std::to_string(n) + " requests still in ring " + std::to_string(qidx) + " answered IOERR: the front-end is disconnected");
}

void VhostBlkDevice::Impl::MaybeFinalize(Connection* c) {
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

}  // namespace ibnbd::vhost
