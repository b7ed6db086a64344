// TCP server (docs/tcp-transport.md, "Handshake", "Server side"): listening, handshakes, and
// grouping accepted connections into paths and sessions; a connection's own IO is in
// server_conn.cc, the classes both files use in server_internal.h. Listeners and handshakes run
// on IO thread 0; once a connection's handshake is accepted it moves to its IO thread (service
// connection: one per path, spread over the threads; IO connection k: thread k-1, modulo the
// number of threads) and stays there. The handshake that completes a session's first path
// raises OnSessionUp on IO thread 0; OnSessionDown follows once the session's last path is gone
// and all its connections closed, never before OnSessionUp has returned (ConnClosed,
// ReportDown). TcpServer::mu_ guards the session table and the session and path bookkeeping
// (listed in server_internal.h); KillPath, SrvSession::Close and SrvSession::Paths may run on
// any thread.
//
// A malformed handshake closes that socket only; a malformed frame closes that connection's
// path (its other connections are useless without it). Other paths and sessions are untouched.
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/event_loop.h"
#include "common/log.h"
#include "transport/core/allow.h"
#include "transport/core/fault.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"
#include "transport/tcp/server_internal.h"
#include "transport/tcp/tcp.h"

namespace ibnbd::transport::tcp::server {
namespace {

constexpr uint32_t kRefusalsLoggedPerSweep = 20;

// What a session's requests may pin in data buffers at once (limits.max_buffer_bytes).
uint64_t SessionBytes(const SrvSession& s) { return uint64_t(s.qd) * s.max_io; }

}  // namespace

// The ServerSession the handler sees (Complete(), the response path, is in server_conn.cc).

std::vector<PathInfo> SrvSession::Paths() const {
  std::lock_guard<std::mutex> lk(srv->mu_);
  std::vector<PathInfo> out;
  for (auto& p : paths) {
    PathInfo pi;
    pi.src = p->client_addr;
    pi.dst = p->local_addr;
    pi.state = p->up ? PathState::kConnected : PathState::kConnecting;
    int64_t inf = p->inflight.load();
    pi.inflight = inf > 0 ? static_cast<uint64_t>(inf) : 0;
    pi.hb_rtt_ns = p->hb.rtt_ns();
    pi.requests = p->requests.load(std::memory_order_relaxed);
    out.push_back(pi);
  }
  return out;
}

void SrvSession::Close() {
  std::vector<std::shared_ptr<SrvPath>> ps;
  {
    std::lock_guard<std::mutex> lk(srv->mu_);
    ps = paths;
  }
  for (auto& p : ps) srv->KillPath(p, "session closed by the server");
}

// --------------------------------------------------------------------------------------------

int TcpServer::Start() {
  if (started_) return -EALREADY;
  std::vector<Endpoint> eps = opt_.listen;
  if (eps.empty()) eps = {{"ip", "0.0.0.0", kDefaultPort}, {"ip", "::", kDefaultPort}};
  std::vector<int> fds;
  std::vector<Endpoint> bound;
  auto fail = [&](int rc) {
    for (int fd : fds) close(fd);
    return rc;
  };
  for (auto& ep : eps) {
    sockaddr_storage ss;
    socklen_t len;
    int rc = ToSockaddr(ep, &ss, &len);
    if (rc) return fail(rc);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return fail(-errno);
    fds.push_back(fd);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return fail(-errno);
    if (listen(fd, 64) != 0) return fail(-errno);
    sockaddr_storage b{};
    socklen_t bl = sizeof(b);
    getsockname(fd, reinterpret_cast<sockaddr*>(&b), &bl);
    bound.push_back(EndpointOf(b));
  }
  EventLoop& l0 = IoThreads::Get().loop(0);
  int rc = 0;
  l0.RunSync([&] {
    for (int fd : fds) {
      int r = l0.Add(fd, EPOLLIN, [this, fd](uint32_t) { OnAccept(fd); });
      if (r) rc = r;
    }
    sweep_fd_ = PeriodicTimer(1000);
    l0.Add(sweep_fd_, EPOLLIN, [this](uint32_t) { Sweep(); });
    drain_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);  // armed on demand
    if (drain_fd_ < 0) rc = -errno;
    else l0.Add(drain_fd_, EPOLLIN, [this](uint32_t) { OnDrainTick(); });
  });
  if (rc) {
    l0.RunSync([&] {
      for (int fd : fds) l0.Remove(fd);
      l0.Remove(sweep_fd_);
      close(sweep_fd_);
      sweep_fd_ = -1;
      if (drain_fd_ >= 0) l0.Remove(drain_fd_), close(drain_fd_), drain_fd_ = -1;
    });
    return fail(rc);
  }
  std::lock_guard<std::mutex> lk(mu_);
  listen_fds_ = fds;
  bound_ = bound;
  started_ = true;
  return 0;
}

void TcpServer::OnAccept(int lfd) {
  for (int i = 0; i < 64; i++) {
    sockaddr_storage peer{};
    socklen_t pl = sizeof(peer);
    int fd = accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &pl, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // out of descriptors or memory: the listener stays readable, so stop watching it until the
      // next sweep instead of spinning on it; established sessions go on
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        const int e = errno;
        const uint64_t now = NowNs();
        if (now - last_accept_error_log_ns_ > 60ull * 1000000000ull) {  // once a minute at most
          last_accept_error_log_ns_ = now;
          LogMsg(LogLevel::kError, {"tcp-server"}, "accept: %s; not accepting for a second (said once a minute)", strerror(e));
        }
        IoThreads::Get().loop(0).Modify(lfd, 0);
        paused_.push_back(lfd);
      }
      return;
    }
    if (opt_.allow && !opt_.allow->Allows(reinterpret_cast<sockaddr*>(&peer))) {
      LogMsg(LogLevel::kWarn, {.component = "tcp-server", .path = FormatSockaddr(peer).c_str()}, "connection from %s refused: not in --allow",
             FormatSockaddr(peer).c_str());
      close(fd);
      continue;
    }
    if (pending_.size() >= opt_.limits->Get().max_pending) EvictOldestPending();
    SetNoDelay(fd);
    auto p = std::make_unique<Pending>();
    p->fd = fd;
    p->since_ns = NowNs();
    p->peer = FormatSockaddr(peer);
    sockaddr_storage local{};
    socklen_t ll = sizeof(local);
    getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll);
    p->local = FormatSockaddr(local);
    EventLoop& l0 = IoThreads::Get().loop(0);
    if (l0.Add(fd, EPOLLIN, [this, fd](uint32_t) { OnPendingReadable(fd); }) != 0) {
      close(fd);
      continue;
    }
    pending_[fd] = std::move(p);
  }
}

void TcpServer::ClosePending(int fd) {
  IoThreads::Get().loop(0).Remove(fd);
  close(fd);
  pending_.erase(fd);
}

// Each refusal is logged, up to kRefusalsLoggedPerSweep a second; the sweep counts the rest.
void TcpServer::LogRefusal(const std::string& peer, int err, const std::string& why) {
  if (refusals_logged_ >= kRefusalsLoggedPerSweep) {
    refusals_unlogged_++;
    return;
  }
  refusals_logged_++;
  LogMsg(LogLevel::kWarn, {.component = "tcp-server", .path = peer.c_str()}, "handshake from %s refused (%s): %s", peer.c_str(),
         strerrorname_np(-err) ? strerrorname_np(-err) : "?", why.c_str());
}

void TcpServer::Reject(Pending* p, int err, const std::string& why) {
  LogRefusal(p->peer, err, why);
  HandshakeRsp rsp;
  rsp.err = err;
  uint8_t b[kHandshakeRspSize];
  EncodeHandshakeRsp(rsp, b);
  ssize_t n = send(p->fd, b, sizeof(b), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)n;
  ClosePending(p->fd);
}

void TcpServer::Sweep() {
  uint64_t t;
  ssize_t n = read(sweep_fd_, &t, sizeof(t));
  (void)n;
  uint64_t now = NowNs();
  std::vector<int> stale;
  const uint64_t timeout_ns = uint64_t(opt_.limits->Get().handshake_timeout_ms) * 1000000ull;
  for (auto& [fd, p] : pending_)
    if (now - p->since_ns > timeout_ns) stale.push_back(fd);
  // one line a sweep, however many: a flood of half-open connections must not flood the log
  if (!stale.empty())
    LogMsg(LogLevel::kWarn, {"tcp-server"}, "no handshake in time from %s%s; closing", pending_[stale[0]]->peer.c_str(),
           stale.size() > 1 ? (" and " + std::to_string(stale.size() - 1) + " more").c_str() : "");
  for (int fd : stale) ClosePending(fd);
  if (refusals_unlogged_)
    LogMsg(LogLevel::kWarn, {"tcp-server"}, "%llu more handshakes refused in the last second, not logged one by one",
           static_cast<unsigned long long>(refusals_unlogged_));
  refusals_logged_ = 0;
  refusals_unlogged_ = 0;
  // listeners paused by EMFILE/ENFILE at accept (OnAccept) are watched again
  for (int lfd : paused_) IoThreads::Get().loop(0).Modify(lfd, EPOLLIN);
  paused_.clear();
}

// The pending table is full: the oldest handshake goes (a client that is still talking has had
// the longest; one that only opened a socket loses its place to a newer one).
void TcpServer::EvictOldestPending() {
  int oldest = -1;
  uint64_t since = UINT64_MAX;
  for (auto& [fd, p] : pending_)
    if (p->since_ns < since) since = p->since_ns, oldest = fd;
  if (oldest < 0) return;
  if (evictions_++ % 1000 == 0)
    LogMsg(LogLevel::kWarn, {"tcp-server"},
           "%zu handshakes in progress (--max-pending-handshakes): closing the oldest, from %s (%llu so far)",
           pending_.size(), pending_[oldest]->peer.c_str(), static_cast<unsigned long long>(evictions_));
  ClosePending(oldest);
}

void TcpServer::OnPendingReadable(int fd) {
  auto it = pending_.find(fd);
  if (it == pending_.end()) return;
  Pending* p = it->second.get();
  ssize_t r = RecvSome(fd, p->buf + p->have, p->need - p->have);
  if (r == -EAGAIN) return;
  if (r <= 0) {
    // a client that does not hold the secret finds our proof wrong and hangs up: a failed attempt
    if (p->awaiting_proof)
      LogRefusal(p->peer, -EACCES, "authentication failed for session '" + p->req.sessname +
                                       "' (the client hung up on the challenge)");
    return ClosePending(fd);
  }
  p->have += static_cast<size_t>(r);
  if (p->have < p->need) return;
  if (p->awaiting_proof) return CheckProof(p);  // server_auth.cc
  HandshakeReq req;
  uint16_t name_len = 0;
  int rc = DecodeHandshakeReqFixed(p->buf, &req, &name_len);
  if (rc) return Reject(p, rc, "malformed handshake");
  if (p->need == kHandshakeReqSize) {
    p->need += HandshakeReqTailLen(req, name_len);
    return;
  }
  rc = DecodeHandshakeReqTail(p->buf + kHandshakeReqSize, name_len, &req);
  if (rc) return Reject(p, rc, "invalid session name");
  Authenticate(p, req, name_len);
}

void TcpServer::Handshake(Pending* pend, HandshakeReq& req) {
  IoThreads& pool = IoThreads::Get();
  std::string key(reinterpret_cast<char*>(req.session_uuid), 16);
  std::shared_ptr<SrvSession> sess;
  std::shared_ptr<SrvConn> conn;
  std::vector<std::shared_ptr<SrvConn>> retired;
  std::string retired_from;
  bool fire_up = false;
  int err = 0;
  std::string why;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopped_) {
      err = -ESHUTDOWN;
      why = "server stopping";
    } else {
      auto it = sessions_.find(key);
      if (it != sessions_.end()) {
        sess = it->second;
        if (sess->name != req.sessname) err = -EINVAL, why = "session uuid reused with another name";
      } else {
        for (auto& [k, s] : sessions_)
          if (s->name == req.sessname) err = -EPERM, why = "session name in use by another session";
        const uint64_t bytes = uint64_t(std::min(req.queue_depth, opt_.queue_depth)) *
                               std::min(req.max_io_size, opt_.max_io_size);
        if (!err && sessions_.size() >= opt_.limits->Get().max_sessions) {
          err = -EBUSY, why = "the server has its most sessions (--max-sessions " +
                               std::to_string(opt_.limits->Get().max_sessions) + ")";
        } else if (!err && reserved_bytes_ + bytes > opt_.limits->Get().max_buffer_bytes) {
          err = -ENOMEM, why = "the sessions' request buffers would pass --max-buffer-memory (" +
                               std::to_string(opt_.limits->Get().max_buffer_bytes) + " bytes)";
        }
        if (!err) {
          sess = std::make_shared<SrvSession>();
          sess->srv = this;
          sess->name = req.sessname;
          memcpy(sess->uuid_bytes, req.session_uuid, 16);
          sess->sid = next_sid_++;
          sess->qd = std::min(req.queue_depth, opt_.queue_depth);
          sess->max_io = std::min(req.max_io_size, opt_.max_io_size);
          sessions_[key] = sess;
          reserved_bytes_ += SessionBytes(*sess);
          live_sessions_++;
        }
      }
      std::shared_ptr<SrvPath> path;
      if (!err) {
        if (req.queue_depth < sess->qd) err = -EINVAL, why = "queue depth below the session's";
        for (auto& p : sess->paths)
          if (memcmp(p->uuid, req.path_uuid, 16) == 0) path = p;
        // a newer incarnation of a path retires the old one (server_fence.cc); an older one is
        // a dial the client gave up on, arriving late
        if (!err && path && req.incarnation > path->incarnation) {
          RetireLocked(sess.get(), path, &retired);
          retired_from = path->client_addr;
          path = nullptr;
        } else if (!err && ((path && req.incarnation < path->incarnation) || StaleLocked(key, req))) {
          err = -ESTALE, why = "an older incarnation of a path that has reconnected since";
        }
      }
      if (!err && !path) {
        if (sess->paths.size() >= kMaxPaths) {
          err = -ECONNRESET, why = "too many paths";
        } else {
          path = std::make_shared<SrvPath>();
          memcpy(path->uuid, req.path_uuid, 16);
          path->incarnation = req.incarnation;
          path->sess_key = key;
          path->sess_name = sess->name;
          path->conn_count = req.conn_count;
          path->conns.resize(req.conn_count);
          path->client_addr = pend->peer;
          path->local_addr = pend->local;
          static std::atomic<unsigned> spread{0};
          path->service_loop = spread.fetch_add(1) % pool.size();
          sess->paths.push_back(path);
        }
      }
      if (!err && !path->conns[req.conn_index] && sess->open_conns >= int(opt_.limits->Get().max_conns_per_session))
        err = -EBUSY, why = "the session has its most connections (--max-conns-per-session " +
                             std::to_string(opt_.limits->Get().max_conns_per_session) + ")";
      if (!err && path->conn_count != req.conn_count) err = -EINVAL, why = "connection count differs";
      if (!err && path->conns[req.conn_index]) err = -EEXIST, why = "connection index already taken";
      if (!err) {
        unsigned li = req.conn_index == 0 ? path->service_loop : (req.conn_index - 1u) % pool.size();
        conn = std::make_shared<SrvConn>(this, sess, path, req.conn_index, pend->fd, &pool.loop(li));
        path->conns[req.conn_index] = conn;
        sess->open_conns++;
        if (++path->accepted == path->conn_count) {
          path->up = true;
          fire_up = !sess->up;
          sess->up = true;
          if (fire_up) sess->up_reporting = true;
        }
      } else if (sess && sess->paths.empty() && sess->open_conns == 0 && !sess->down_pending) {
        // a session created by this very refused handshake
        reserved_bytes_ -= SessionBytes(*sess);
        sessions_.erase(key);
        live_sessions_--;
      }
    }
  }
  if (!retired.empty())
    LogMsg(LogLevel::kInfo, {.component = "tcp-server", .session = req.sessname.c_str(), .path = retired_from.c_str()},
           "session '%s' path from %s retired: it reconnected", req.sessname.c_str(), retired_from.c_str());
  for (auto& c : retired) c->loop->Post([c] { c->Close(); });
  if (err) return Reject(pend, err, why);
  if (fire_up) {
    handler_->OnSessionUp(sess.get());
    bool down;
    {
      std::lock_guard<std::mutex> lk(mu_);
      sess->up_reporting = false;
      down = sess->down_after_up;
      sess->down_after_up = false;
    }
    if (down) ReportDown(sess.get());  // every connection closed while up was being reported
  }
  HandshakeRsp rsp;
  rsp.queue_depth = sess->qd;
  rsp.max_io_size = sess->max_io;
  uint8_t b[kHandshakeRspSize];
  EncodeHandshakeRsp(rsp, b);
  int fd = pend->fd;
  IoThreads::Get().loop(0).Remove(fd);
  pending_.erase(fd);  // the connection owns fd now
  {
    // the path's requests go out once this answer is in: not while a lost path of the session
    // still has requests running here (server_fence.cc)
    std::lock_guard<std::mutex> lk(mu_);
    if (DrainingLocked(sess.get())) return HoldAnswerLocked(conn, b);
  }
  ssize_t n = send(fd, b, sizeof(b), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n != static_cast<ssize_t>(sizeof(b))) {
    KillPath(conn->path, "cannot send the handshake response");
    return;
  }
  conn->loop->Post([conn] { conn->Register(); });
}

void TcpServer::KillPath(const std::shared_ptr<SrvPath>& p, const char* why) {
  if (p->dead.exchange(true)) return;
  std::vector<std::shared_ptr<SrvConn>> conns;
  std::string name;
  {
    std::lock_guard<std::mutex> lk(mu_);
    conns = p->conns;
    for (auto& c : conns) {
      if (!c) continue;
      SrvSession* s = c->sess.get();
      name = s->name;
      auto& v = s->paths;
      v.erase(std::remove(v.begin(), v.end(), p), v.end());
      PruneRetiredLocked();
      retired_.push_back(p);  // its requests may still run (server_fence.cc)
      if (v.empty() && !s->down_pending) {
        s->down_pending = true;
        reserved_bytes_ -= SessionBytes(*s);
        sessions_.erase(std::string(reinterpret_cast<char*>(s->uuid_bytes), 16));
      }
      break;
    }
  }
  if (!stopped_)
    LogMsg(LogLevel::kInfo, {.component = "tcp-server", .session = name.c_str(), .path = p->client_addr.c_str()},
           "session '%s' path from %s closed: %s", name.c_str(), p->client_addr.c_str(), why);
  for (auto& c : conns) {
    if (!c) continue;
    c->loop->Post([c] { c->Close(); });
  }
}

void TcpServer::ConnClosed(SrvSession* s) {
  bool fire = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    s->open_conns--;
    if (s->open_conns == 0 && s->down_pending) {
      fire = s->up;
      s->up = false;
      s->down_pending = false;
      if (fire && s->up_reporting) {
        s->down_after_up = true;  // the handshake thread reports it after OnSessionUp
        return;
      }
      if (!fire) live_sessions_--;
    }
  }
  if (fire) return ReportDown(s);
  cv_.notify_all();
}

// The session stays counted live until the handler has returned: Stop() must not return (and
// the upper layer free its callbacks' state) while OnSessionDown is still running.
void TcpServer::ReportDown(SrvSession* s) {
  // widens the window between the last connection closing and the report, where Stop() once
  // returned early (tests/native/server-stop.test.ts)
  FaultDelay("IBNBD_FAULT_SESSION_DOWN_DELAY_MS");
  handler_->OnSessionDown(s);
  {
    std::lock_guard<std::mutex> lk(mu_);
    live_sessions_--;
  }
  cv_.notify_all();
}

void TcpServer::Stop() {
  std::vector<std::shared_ptr<SrvPath>> paths;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!started_ || stopped_) return;
    stopped_ = true;
    for (auto& [k, s] : sessions_)
      for (auto& p : s->paths) paths.push_back(p);
  }
  EventLoop& l0 = IoThreads::Get().loop(0);
  l0.RunSync([&] {
    for (int fd : listen_fds_) {
      l0.Remove(fd);
      close(fd);
    }
    listen_fds_.clear();
    if (sweep_fd_ >= 0) {
      l0.Remove(sweep_fd_);
      close(sweep_fd_);
      sweep_fd_ = -1;
    }
    if (drain_fd_ >= 0) {
      l0.Remove(drain_fd_);
      close(drain_fd_);
      drain_fd_ = -1;
    }
    std::vector<int> fds;
    for (auto& [fd, p] : pending_) fds.push_back(fd);
    for (int fd : fds) ClosePending(fd);
  });
  for (auto& p : paths) KillPath(p, "server stopping");
  std::unique_lock<std::mutex> lk(mu_);
  // Connections close on their IO threads; only a stuck loop can make this take long.
  if (!cv_.wait_for(lk, std::chrono::seconds(30), [&] { return live_sessions_ == 0; }))
    LogMsg(LogLevel::kError, {"tcp-server"}, "%d session(s) still closing after 30 s; stopping anyway", live_sessions_);
}

}  // namespace ibnbd::transport::tcp::server

namespace ibnbd::transport::tcp {

std::unique_ptr<Server> CreateServer(Server::Options options, ServerHandler* handler, int* err) {
  if (handler == nullptr || options.queue_depth == 0 || options.queue_depth > kMaxQueueDepth ||
      options.max_io_size < kMinMaxIoSize || options.max_io_size > kMaxMaxIoSize ||
      options.heartbeat_interval_ms == 0) {
    *err = -EINVAL;
    return nullptr;
  }
  *err = 0;
  return std::make_unique<server::TcpServer>(std::move(options), handler);
}

}  // namespace ibnbd::transport::tcp
