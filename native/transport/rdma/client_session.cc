// The RDMA client session, as the session half of Linux drivers/infiniband/ulp/rtrs/rtrs-clt.c:
// what spans its paths. Connect() opens every path once and starts the reconnect thread. Submit()
// takes a permit (a buffer id, shared by all paths; when none is free the request waits, FIFO)
// and StartIo() puts the request on a connected path chosen by mp_policy (round-robin,
// min-latency by heartbeat round trip, else min-inflight). When a path fails, FailPath()
// re-issues its requests on another path with the same permit (RTRS failover) and flags the path
// for the reconnector (core/reconnector.h). Paths(), Close() and the factory CreateRdmaClientSession are here
// too. One path's connections, heartbeats and reconnect are in client_path.cc; a request's wire
// format and completion in client_io.cc; the data they share in client_internal.h.
//
// Threads: Connect() and Close() run on the caller's thread (Close() joins the reconnect thread
// and fails what is left on each request's loop). Submit() is called on an IoThreads loop and a
// request stays on that loop: StartIo(), its failover and its completion run there. FailPath()
// runs on the loop that saw the failure and posts each loop's requests of the path back to that
// loop; ReleasePermit() starts the first waiter on the waiter's own loop.
// Locks: the permit pool has its own (core/permits.h), permit_mu_ the sizing of reqs_; mem_mu_
// the growth of paths_ (with the regions' MR slots); the reconnector its schedule.
#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "transport/core/policy.h"
#include "transport/rdma/client_internal.h"
#include "transport/rdma/rdma.h"

namespace ibnbd::rdma::client {

// ------------------------------------------------------------------------------------------
// Opening the paths

int RdmaClientSession::Connect(int timeout_ms) {
  if (closed_) return -ECONNABORTED;
  if (int rc = CheckRdmaDevice()) return rc;
  if (opts_.paths.empty()) return -EINVAL;
  if (opts_.paths.size() > wire::kMaxPathsPerSession) return -EINVAL;
  int last = -ENOTCONN;
  if (!paths_.empty()) return -EALREADY;
  for (size_t i = 0; i < opts_.paths.size(); i++) {
    auto p = std::make_unique<Path>();
    p->spec = opts_.paths[i];
    p->index = i;
    RandomUuid(p->sess_uuid);
    Path* raw = p.get();
    {
      std::unique_lock lock(mem_mu_);
      paths_.push_back(std::move(p));
      for (auto& [a, r] : regions_) r.mrs.resize(paths_.size(), nullptr);
    }
    int rc = ConnectPath(raw, timeout_ms);
    if (rc) {
      last = rc;
      raw->state = PathState::kClosed;
    }
  }
  if (!connected()) return last;
  transport::core::Reconnector::Hooks hooks;
  hooks.dial = [this](size_t i) { return Redial(paths_[i].get()); };
  hooks.any_path_up = [this] { return connected(); };
  hooks.gave_up = [this](size_t i) { paths_[i]->state = PathState::kClosed; };
  reconnector_.Start(paths_.size(), opts_.reconnect_delay_ms, opts_.max_reconnect_attempts,
                     std::move(hooks));
  // as RTRS: once the session is open, paths that could not connect keep trying
  for (auto& p : paths_) {
    if (p->state != PathState::kClosed) continue;
    p->state = PathState::kReconnecting;
    reconnector_.Lost(p->index);
  }
  return 0;
}

// ------------------------------------------------------------------------------------------
// Permits and path choice (IO threads)

void RdmaClientSession::Finish(ClientIo* io, int err, EventLoop* loop) {
  // never complete inside Submit(): the caller may hold its own locks
  loop->Post([io, err] { io->done(io, err); });
}

void RdmaClientSession::Submit(ClientIo* io) {
  EventLoop* loop = EventLoop::Current();
  if (!loop) {  // contract violation; there is no thread to complete on
    io->done(io, -EINVAL);
    return;
  }
  if (io->usr_len > transport::kMaxUsrLen || io->data_len > max_io_ || (io->data_len && !io->iov)) {
    Finish(io, -EINVAL, loop);
    return;
  }
  if (closed_ || !connected()) {
    Finish(io, -ENOTCONN, loop);
    return;
  }
  uint32_t buf_id;
  if (!permits_.GetOrWait({io, loop}, &buf_id)) return;  // ReleasePermit() starts it later
  StartIo(io, buf_id, loop);
}

Path* RdmaClientSession::ChoosePath() {
  long i = transport::core::ChoosePath(policy_, paths_.size(), rr_, [&](size_t k) {
    Path* p = paths_[k].get();
    transport::core::PathLoad l;
    l.usable = p->state == PathState::kConnected;
    l.inflight = p->inflight.load(std::memory_order_relaxed);
    l.rtt_ns = p->hb.rtt_ns();
    return l;
  });
  return i < 0 ? nullptr : paths_[size_t(i)].get();
}

void RdmaClientSession::StartIo(ClientIo* io, uint32_t buf_id, EventLoop* loop, Path* moved_from) {
  for (;;) {
    Path* p = ChoosePath();
    if (!p) {
      ReleasePermit(buf_id);
      io->done(io, -ENOTCONN);
      return;
    }
    if (moved_from) {  // counted once, when another path takes it
      moved_from->failovers.fetch_add(1, std::memory_order_relaxed);
      moved_from = nullptr;
    }
    Conn* c = p->conns[1 + loop->index() % (p->conns.size() - 1)].get();
    Req& r = reqs_[buf_id];
    r.io = io;
    r.path = p;
    r.loop = loop;
    p->progress.OnSubmit(transport::core::MonotonicNs(), p->inflight++);
    bool bounced = false;
    int rc = PostRequest(p, c, io, buf_id, &bounced);
    r.bounce = bounced;
    if (rc == 0) return;
    r.io = nullptr;
    p->inflight--;
    FailPath(p, "post_send failed");
  }
}

void RdmaClientSession::ReleasePermit(uint32_t buf_id) {
  auto waiter = permits_.Put(buf_id);
  if (!waiter) return;
  auto [next, loop] = *waiter;
  // the waiter runs on its own thread (its IO connection and completion live there)
  auto self = shared_from_this();
  loop->Post([self, next, buf_id, loop] {
    if (self->closed_) {
      self->ReleasePermit(buf_id);
      next->done(next, -ECONNABORTED);
      return;
    }
    self->StartIo(next, buf_id, loop);
  });
}

// ------------------------------------------------------------------------------------------
// Failover

// A path is lost: its QPs go to the error state; every request on it is re-issued on another
// connected path with the same buffer id (RTRS failover) or fails with kLostWithPath (-ENOTCONN:
// the caller may send it again once the session is back).
void RdmaClientSession::FailPath(Path* p, const char* why) {
  PathState expected = PathState::kConnected;
  if (!p->state.compare_exchange_strong(expected, PathState::kClosed)) return;
  {
    std::lock_guard lock(p->info_mu);
    SetLastError(std::string("path ") + p->dst + " failed: " + why);
  }
  for (auto& c : p->conns) rdma_disconnect(c->id());
  if (!connected() && opts_.on_link_event) opts_.on_link_event(transport::LinkEvent::kDisconnected);
  if (!closed_) {
    p->state = PathState::kReconnecting;
    reconnector_.Lost(p->index);
  }
  auto self = shared_from_this();
  IoThreads& pool = IoThreads::Get();
  for (unsigned i = 0; i < pool.size(); i++) {
    EventLoop* loop = &pool.loop(i);
    loop->Post([self, p, loop] {
      for (uint32_t b = 0; b < self->reqs_.size(); b++) {
        Req& r = self->reqs_[b];
        if (!r.io || r.path != p || r.loop != loop) continue;
        ClientIo* io = r.io;
        r.io = nullptr;
        p->inflight--;
        const auto fate = transport::core::FateOfLost(self->closed_, self->connected());
        if (fate == transport::core::LostFate::kFailover) {
          self->StartIo(io, b, loop, p);  // same permit
        } else {
          self->ReleasePermit(b);
          io->done(io, transport::core::LostError(fate));
        }
      }
    });
  }
}

// ------------------------------------------------------------------------------------------
// Reporting and closing

std::vector<transport::PathInfo> RdmaClientSession::Paths() const {
  std::vector<transport::PathInfo> out;
  for (auto& p : paths_) {
    transport::PathInfo i;
    {
      std::lock_guard lock(p->info_mu);
      i.src = p->src;
      i.dst = p->dst.empty() ? p->spec.dst.kind + ":" + p->spec.dst.addr : p->dst;
    }
    i.state = p->state;
    i.inflight = p->inflight;
    i.reconnects = p->recon_cnt > 0 ? p->recon_cnt - 1 : 0;
    i.hb_rtt_ns = p->hb.rtt_ns();
    i.requests = p->requests.load(std::memory_order_relaxed);
    i.failovers = p->failovers.load(std::memory_order_relaxed);
    out.push_back(i);
  }
  return out;
}

void RdmaClientSession::Close() {
  if (closed_.exchange(true)) return;
  reconnector_.Stop();
  for (auto& p : paths_) {
    p->state = PathState::kClosed;
    for (auto& c : p->conns) rdma_disconnect(c->id());
    if (!p->conns.empty() && p->ch) {
      EventLoop* l0 = &IoThreads::Get().loop(0);
      l0->RunSync([&] {
        l0->Remove(p->ch->fd);
        if (p->hb_timer >= 0) l0->Remove(p->hb_timer);
      });
    }
    for (auto& c : p->conns) c->Detach();
  }
  // no completion can run now: fail what is in flight and what waits, each on its own thread
  IoThreads& pool = IoThreads::Get();
  if (!reqs_.empty()) {
    for (unsigned i = 0; i < pool.size(); i++) {
      EventLoop* loop = &pool.loop(i);
      loop->RunSync([&] {
        for (auto& r : reqs_) {
          if (!r.io || r.loop != loop) continue;
          ClientIo* io = r.io;
          r.io = nullptr;
          io->done(io, -ECONNABORTED);
        }
      });
    }
  }
  for (auto& [io, loop] : permits_.TakeWaiters()) {
    ClientIo* w = io;
    loop->Post([w] { w->done(w, -ECONNABORTED); });
  }
  for (auto& p : paths_) TeardownPath(p.get());
  std::unique_lock lock(mem_mu_);
  for (auto& [a, r] : regions_)
    for (auto*& mr : r.mrs)
      if (mr) {
        ibv_dereg_mr(mr);
        mr = nullptr;
      }
  regions_.clear();
}

}  // namespace ibnbd::rdma::client

namespace ibnbd::rdma {

std::shared_ptr<transport::ClientSession> CreateRdmaClientSession(
    transport::ClientSession::Options options, int* err) {
  *err = 0;
  if (options.paths.empty() || options.queue_depth == 0 ||
      options.queue_depth > wire::kMaxQueueDepth || options.max_io_size == 0 ||
      options.sessname.empty() || options.sessname.size() > 254) {
    SetLastError("invalid RDMA session options (paths, queue_depth, max_io_size, sessname)");
    *err = -EINVAL;
    return nullptr;
  }
  transport::core::MpPolicy policy;
  if (!transport::core::ParseMpPolicy(options.mp_policy, &policy)) {
    SetLastError("invalid mp_policy '" + options.mp_policy + "' (round-robin, min-inflight or min-latency)");
    *err = -EINVAL;
    return nullptr;
  }
  for (auto& p : options.paths) {
    sockaddr_storage ss;
    socklen_t len;
    if ((*err = ParseEndpoint(p.dst, &ss, &len)) || (p.src && (*err = ParseEndpoint(*p.src, &ss, &len)))) {
      SetLastError("invalid RDMA address " + p.dst.kind + ":" + p.dst.addr + ": " + LastRdmaError());
      return nullptr;
    }
  }
  if ((*err = CheckRdmaDevice())) return nullptr;
  return std::make_shared<client::RdmaClientSession>(std::move(options));
}

}  // namespace ibnbd::rdma
