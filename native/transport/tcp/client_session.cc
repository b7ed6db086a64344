// The TCP client session (docs/tcp-transport.md, "Model", "Multipath and failures (client)"):
// the session-wide state and the way of a request through it. Submit() takes a permit (FIFO wait
// when none is free: core/permits.h); Start() has Choose() pick a connected path by mp_policy
// (core/path_choice.h, the same for RDMA) and sends on that path's IO connection for the calling
// thread; Finish() returns the permit (a waiter that gets it is started on its own thread) and
// completes the request; a request lost with its path goes to client_fence.cc, which sends it
// again on another path once the server has fenced the lost one (RTRS failover, fenced). Also
// the constructor, Close(), Paths() and the factory. A path's connect, heartbeats and reconnect
// are in client_path.cc, the IO connection in client_io_conn.cc.
//
// Threads: Submit, Start and Finish run on the request's IO thread
// (transport_private[kTpLoop]); link events are posted to IO thread 0. Close() runs on the
// caller's thread (never an IO thread): it stops the reconnector, tears every path down on its
// loops (RunSync), completes parked requests and permit waiters with -ECONNABORTED on their threads and drains every
// loop twice. Paths() may run on any thread. Locks: the permit pool's own mutex (core/permits.h); close_mu_ orders Close()
// against ConnectPath installing a path's connections; ClientPath::mu guards src_str.
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/event_loop.h"
#include "common/log.h"
#include "transport/core/policy.h"
#include "transport/tcp/client_internal.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"
#include "transport/tcp/tcp.h"
#include "transport/uuid.h"

namespace ibnbd::transport::tcp::client {

TcpClientSession::TcpClientSession(Options opt) : opt_(std::move(opt)) {
  core::ParseMpPolicy(opt_.mp_policy, &policy_);  // checked by CreateClientSession
  RandomUuid(uuid_);
  unsigned n = IoThreads::Get().size();
  for (size_t i = 0; i < opt_.paths.size(); i++) {
    auto p = std::make_unique<ClientPath>();
    p->index = i;
    p->spec = opt_.paths[i];
    p->dst_str = opt_.paths[i].dst.kind + ":" + opt_.paths[i].dst.addr + ":" +
                 std::to_string(opt_.paths[i].dst.port);
    p->loop_conn.assign(n, nullptr);
    p->service_loop = static_cast<unsigned>(i % n);
    RandomUuid(p->uuid);
    paths_.push_back(std::move(p));
  }
}

void TcpClientSession::RaiseLink(LinkEvent ev) {
  if (!opt_.on_link_event) return;
  auto cb = opt_.on_link_event;
  IoThreads::Get().loop(0).Post([cb, ev] { cb(ev); });
}

ClientPath* TcpClientSession::Choose(unsigned loop, ClientPath* exclude) {
  long i = core::ChoosePath(policy_, paths_.size(), rr_, [&](size_t k) {
    ClientPath* p = paths_[k].get();
    core::PathLoad l;
    l.usable = p != exclude && p->state.load() == PathState::kConnected && p->loop_conn[loop] &&
               !p->loop_conn[loop]->dead;
    int64_t inf = p->inflight.load(std::memory_order_relaxed);
    l.inflight = inf > 0 ? uint64_t(inf) : 0;
    l.rtt_ns = p->hb.rtt_ns();
    return l;
  });
  return i < 0 ? nullptr : paths_[size_t(i)].get();
}

void TcpClientSession::PostDone(ClientIo* io, int err) {
  EventLoop* l = EventLoop::Current();
  if (l)
    l->Post([io, err] { io->done(io, err); });
  else
    io->done(io, err);
}

void TcpClientSession::Submit(ClientIo* io) {
  EventLoop* l = EventLoop::Current();
  if (l == nullptr || l->index() >= IoThreads::Get().size()) {
    LogMsg(LogLevel::kError, {.component = "tcp-session", .session = opt_.sessname.c_str()},
           "ClientSession::Submit outside an IO thread");
    return PostDone(io, -EINVAL);
  }
  io->transport_private[kTpLoop] = l->index();
  if (io->usr_len > kMaxUsrLen || io->data_len > max_io_.load() ||
      (io->data_len > 0 && io->iov == nullptr))
    return PostDone(io, -EINVAL);
  if (closed_.load()) return PostDone(io, -ECONNABORTED);
  if (connected_paths_.load() == 0) return PostDone(io, -ENOTCONN);
  uint32_t id;
  if (!permits_.GetOrWait(io, &id)) return;  // Put() hands it over later
  io->transport_private[kTpPermit] = id;
  Start(io);
}

void TcpClientSession::Start(ClientIo* io) {
  if (closed_.load()) return Finish(io, -ECONNABORTED);
  unsigned loop = static_cast<unsigned>(io->transport_private[kTpLoop]);
  ClientPath* p = Choose(loop, nullptr);
  if (!p) return Finish(io, -ENOTCONN);
  p->loop_conn[loop]->Send(io);
}

void TcpClientSession::Finish(ClientIo* io, int err) {
  uint32_t id = static_cast<uint32_t>(io->transport_private[kTpPermit]);
  std::optional<ClientIo*> next = permits_.Put(id);
  io->done(io, err);
  if (next) {
    ClientIo* w = *next;
    w->transport_private[kTpPermit] = id;
    unsigned loop = static_cast<unsigned>(w->transport_private[kTpLoop]);
    IoThreads::Get().loop(loop).Post([this, w] { Start(w); });
  }
}

void TcpClientSession::Close() {
  {
    std::lock_guard<std::mutex> lk(close_mu_);
    if (closed_.exchange(true)) return;
  }
  {
    // a handshake blocked on a server that does not answer ends now, not at its deadline
    std::lock_guard<std::mutex> lk(dial_mu_);
    for (int fd : dialing_) shutdown(fd, SHUT_RDWR);
  }
  reconnector_.Stop();
  for (auto& p : paths_) {
    PathState prev = p->state.exchange(PathState::kClosed);
    TeardownPath(p.get(), p->gen.load(), true);
    if (prev == PathState::kConnected) connected_paths_.fetch_sub(1);
  }
  for (const Parked& pk : TakeParked()) {
    unsigned loop = static_cast<unsigned>(pk.io->transport_private[kTpLoop]);
    IoThreads::Get().loop(loop).Post([io = pk.io] { io->done(io, -ECONNABORTED); });
  }
  for (ClientIo* io : permits_.TakeWaiters()) {
    unsigned loop = static_cast<unsigned>(io->transport_private[kTpLoop]);
    IoThreads::Get().loop(loop).Post([io] { io->done(io, -ECONNABORTED); });
  }
  // Twice: completions posted while the first pass ran (a Submit that raced with Close) are
  // delivered before Close returns, so callers may free what done() uses right after.
  IoThreads& pool = IoThreads::Get();
  for (int pass = 0; pass < 2; pass++)
    for (unsigned i = 0; i < pool.size(); i++) pool.loop(i).RunSync([] {});
}

std::vector<PathInfo> TcpClientSession::Paths() const {
  std::vector<PathInfo> out;
  for (auto& p : paths_) {
    PathInfo pi;
    {
      std::lock_guard<std::mutex> lk(p->mu);
      pi.src = p->src_str;
    }
    pi.dst = p->dst_str;
    pi.state = p->state.load();
    int64_t inf = p->inflight.load();
    pi.inflight = inf > 0 ? static_cast<uint64_t>(inf) : 0;
    pi.reconnects = p->reconnects.load();
    pi.hb_rtt_ns = p->hb.rtt_ns();
    pi.requests = p->requests.load(std::memory_order_relaxed);
    pi.failovers = p->failovers.load(std::memory_order_relaxed);
    out.push_back(pi);
  }
  return out;
}

}  // namespace ibnbd::transport::tcp::client

namespace ibnbd::transport::tcp {

std::shared_ptr<ClientSession> CreateClientSession(ClientSession::Options options, int* err) {
  if (options.paths.empty() || options.paths.size() > kMaxPaths) {
    *err = -EINVAL;
    return nullptr;
  }
  if (ValidateSessname(options.sessname) != 0 || options.queue_depth == 0 ||
      options.queue_depth > kMaxQueueDepth || options.max_io_size < kMinMaxIoSize ||
      options.max_io_size > kMaxMaxIoSize || options.heartbeat_interval_ms == 0) {
    *err = -EINVAL;
    return nullptr;
  }
  core::MpPolicy policy;
  if (!core::ParseMpPolicy(options.mp_policy, &policy)) {
    *err = -EINVAL;
    return nullptr;
  }
  for (auto& ps : options.paths) {
    sockaddr_storage ss;
    socklen_t l;
    int rc = ToSockaddr(ps.dst, &ss, &l);
    if (rc == 0 && ps.src) rc = ToSockaddr(*ps.src, &ss, &l);
    if (rc) {
      *err = rc;
      return nullptr;
    }
  }
  *err = 0;
  return std::make_shared<client::TcpClientSession>(std::move(options));
}

}  // namespace ibnbd::transport::tcp
