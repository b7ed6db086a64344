// One path of a TCP client session (docs/tcp-transport.md, "Handshake", "Heartbeats and path
// death", "Multipath and failures (client)"): connecting it, its service connection, its failure
// and its reconnection. Each connect is a new generation (ClientPath::gen); a failure report or
// a teardown for an older generation does nothing.
//
// Threads:
//   * Connect() runs on the caller's thread (never an IO thread): ConnectPath for every path,
//     then, when at least one came up, it starts the session's core::Reconnector, whose thread
//     ("ibnbd-reconn") runs ConnectPath again (Redial) for each lost path on the shared
//     back-off (core/reconnector.h, core/policy.h).
//   * ConnectPath does the handshake with blocking sockets on its calling thread, then, holding
//     the session's close_mu_ (Close() either sees the connections or runs first), creates each
//     connection on its own loop with RunSync: IO connection i on IO thread i, the ServiceConn on
//     the path's service_loop.
//   * ServiceConn runs on service_loop: each heartbeat interval it asks the path's
//     core::Heartbeat (core/liveness.h: misses since anything was received on any connection of
//     the path, and io_timeout) whether to send a HEARTBEAT or fail the path.
//   * PathFailed runs on the loop of the connection that failed (or on the connecting thread,
//     from PathUp): the path goes to kReconnecting (kClosed once the session is closing),
//     TeardownPath is posted to every loop, and the reconnector is told (Lost).
#include <netinet/in.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/event_loop.h"
#include "common/log.h"
#include "transport/core/auth.h"
#include "transport/core/policy.h"
#include "transport/tcp/client_internal.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"
#include "transport/uuid.h"

namespace ibnbd::transport::tcp::client {
namespace {

std::atomic<uint64_t> next_gen{1};

}  // namespace

// --------------------------------------------------------------------------------------------
// Service connection: heartbeats only, on the path's service_loop. Declared in client_internal.h
// (ClientPath::service points here), so not in the anonymous namespace.

struct ServiceConn {
  TcpClientSession* sess = nullptr;
  ClientPath* path = nullptr;
  uint64_t gen = 0;
  int fd = -1;
  int tfd = -1;
  EventLoop* loop = nullptr;
  std::string out;
  uint8_t rx[kFrameHeaderSize * 8];
  size_t rx_have = 0;
  bool dead = false;

  int Register(uint32_t interval_ms) {
    tfd = PeriodicTimer(interval_ms);
    if (tfd < 0) return -errno;
    int rc = loop->Add(fd, EPOLLIN, [this](uint32_t ev) { OnEvent(ev); });
    if (rc) return rc;
    return loop->Add(tfd, EPOLLIN, [this](uint32_t) { OnTick(); });
  }

  void Fail(const char* why) {
    if (!dead) sess->PathFailed(path, gen, why);
    dead = true;
  }

  void SendFrame(FrameKind kind, uint64_t cookie, const uint8_t* uuid = nullptr, uint32_t id = 0) {
    FrameHeader h;
    h.kind = kind;
    h.cookie = cookie;
    h.id = id;
    h.usr_len = uuid ? 16 : 0;
    uint8_t b[kFrameHeaderSize];
    EncodeFrameHeader(h, b);
    out.append(reinterpret_cast<char*>(b), sizeof(b));
    if (uuid) out.append(reinterpret_cast<const char*>(uuid), 16);
    Flush();
  }

  void Flush() {
    while (!out.empty() && !dead) {
      iovec v{out.data(), out.size()};
      ssize_t w = SendvSome(fd, &v, 1);
      if (w < 0) {
        if (w != -EAGAIN) Fail("send failed");
        break;
      }
      out.erase(0, static_cast<size_t>(w));
    }
    if (!dead) loop->Modify(fd, out.empty() ? EPOLLIN : (EPOLLIN | EPOLLOUT));
  }

  void OnTick() {
    uint64_t ticks;
    ssize_t n = read(tfd, &ticks, sizeof(ticks));
    (void)n;
    if (dead) return;
    const int64_t inflight = path->inflight.load(std::memory_order_relaxed);
    const uint64_t now = NowNs();
    using V = core::Heartbeat::Verdict;
    const V v = path->hb.OnTick(now, sess->opt().heartbeat_missed_max, &path->progress,
                                inflight > 0 ? uint64_t(inflight) : 0, sess->opt().io_timeout_ms);
    if (v == V::kDeadMissed || v == V::kDeadStalled) return Fail(core::Heartbeat::Why(v));
    if (v == V::kSend) SendFrame(FrameKind::kHeartbeat, now);
  }

  void OnEvent(uint32_t ev) {
    if (dead) return;
    if (ev & EPOLLOUT) Flush();
    if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    for (;;) {
      ssize_t r = RecvSome(fd, rx + rx_have, sizeof(rx) - rx_have);
      if (r == -EAGAIN) return;
      if (r <= 0) return Fail(r == 0 ? "connection closed by server" : "receive failed");
      rx_have += static_cast<size_t>(r);
      size_t pos = 0;
      for (; rx_have - pos >= kFrameHeaderSize; pos += kFrameHeaderSize) {
        FrameHeader h;
        if (DecodeFrameHeader(rx + pos, &h) != 0 || h.usr_len || h.data_len)
          return Fail("protocol error from server");
        path->hb.OnReceive();
        if (h.kind == FrameKind::kHeartbeat) {
          SendFrame(FrameKind::kHeartbeatAck, h.cookie);
        } else if (h.kind == FrameKind::kHeartbeatAck) {
          path->hb.OnAck(NowNs());
        } else if (h.kind == FrameKind::kFenceAck) {
          sess->OnFenceAck(path, gen, h.cookie);
        } else {
          return Fail("unexpected frame on the service connection");
        }
        if (dead) return;
      }
      memmove(rx, rx + pos, rx_have - pos);
      rx_have -= pos;
    }
  }

  void Teardown() {
    loop->Remove(fd);
    loop->Remove(tfd);
    close(fd);
    close(tfd);
    dead = true;
  }
};

void TcpClientSession::SendFence(ClientPath* via, uint64_t gen, const uint8_t* uuid,
                                 uint32_t incarnation, uint64_t cookie) {
  ServiceConn* s = via->service;
  if (s && s->gen == gen && !s->dead) s->SendFrame(FrameKind::kFence, cookie, uuid, incarnation);
}

// --------------------------------------------------------------------------------------------
// Connecting, failing and tearing down a path.

int TcpClientSession::ConnectPath(ClientPath* p, uint64_t deadline_ns) {
  IoThreads& pool = IoThreads::Get();
  unsigned n = pool.size();
  uint16_t conn_count = static_cast<uint16_t>(n + 1);
  sockaddr_storage dst, src;
  socklen_t dst_len = 0, src_len = 0;
  int rc = ToSockaddr(p->spec.dst, &dst, &dst_len);
  if (rc) return rc;
  if (p->spec.src) {
    rc = ToSockaddr(*p->spec.src, &src, &src_len);
    if (rc) return rc;
    reinterpret_cast<sockaddr_in*>(&src)->sin_port = 0;  // same offset in sockaddr_in6
  }
  HandshakeReq req;
  req.conn_count = conn_count;
  req.queue_depth = qd_.load() ? qd_.load() : opt_.queue_depth;
  req.max_io_size = opt_.max_io_size;
  memcpy(req.session_uuid, uuid_, 16);
  // the path keeps its uuid; each attempt counts up, so the server retires what an older one
  // left behind and refuses an older attempt that arrives late (server_fence.cc)
  memcpy(req.path_uuid, p->uuid, 16);
  req.incarnation = p->incarnation.fetch_add(1) + 1;
  req.sessname = opt_.sessname;
  const bool auth = !opt_.auth_secret.empty();
  if (auth) req.flags |= kHandshakeFlagAuth;
  // per connection: its request as sent (the proofs' transcript) and its nonce
  std::vector<std::vector<uint8_t>> sent(conn_count);

  std::vector<int> fds(conn_count, -1);
  // While the handshake blocks, Close() may shut these down (dialing_) so it need not wait out
  // the deadline; they leave dialing_ before they are closed or handed to the connections.
  auto undial = [&] {
    std::lock_guard<std::mutex> lk(dial_mu_);
    for (int fd : fds) dialing_.erase(std::remove(dialing_.begin(), dialing_.end(), fd), dialing_.end());
  };
  auto close_all = [&] {
    undial();
    for (int& fd : fds)
      if (fd >= 0) close(fd), fd = -1;
  };
  HandshakeRsp first{};
  for (uint16_t i = 0; i < conn_count && rc == 0; i++) {
    int fd = socket(dst.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      rc = -errno;
      break;
    }
    fds[i] = fd;
    {
      std::lock_guard<std::mutex> lk(dial_mu_);
      if (closed_.load()) {
        rc = -ECONNABORTED;
        break;
      }
      dialing_.push_back(fd);
    }
    SetNoDelay(fd);
    if (p->spec.src && bind(fd, reinterpret_cast<sockaddr*>(&src), src_len) != 0) {
      rc = -errno;
      break;
    }
    rc = ConnectBefore(fd, dst, dst_len, deadline_ns);
    if (rc) break;
    req.conn_index = i;
    if (auth && !core::RandomBytes(req.client_nonce, sizeof(req.client_nonce))) {
      rc = -EAGAIN;
      break;
    }
    sent[i].resize(HandshakeReqLen(req));
    size_t len = EncodeHandshakeReq(req, sent[i].data());
    rc = SendAllBefore(fd, sent[i].data(), len, deadline_ns);
  }
  // each connection's AUTH_CHALLENGE answered before any response is awaited: the server may
  // hold a path's responses until all its connections have handshaken (client_auth.cc)
  for (uint16_t i = 0; auth && i < conn_count && rc == 0; i++)
    rc = AnswerChallenge(fds[i], sent[i], deadline_ns);
  for (uint16_t i = 0; i < conn_count && rc == 0; i++) {
    uint8_t buf[kHandshakeRspSize];
    rc = RecvAllBefore(fds[i], buf, sizeof(buf), deadline_ns);
    if (rc) break;
    HandshakeRsp rsp;
    rc = DecodeHandshakeRsp(buf, &rsp);
    if (rc == 0 && rsp.err != 0) rc = rsp.err;
    if (rc == 0 && (rsp.queue_depth == 0 || rsp.queue_depth > req.queue_depth ||
                    rsp.max_io_size < kMinMaxIoSize || rsp.max_io_size > req.max_io_size))
      rc = -EPROTO;
    if (rc == 0 && i > 0 &&
        (rsp.queue_depth != first.queue_depth || rsp.max_io_size != first.max_io_size))
      rc = -EPROTO;
    if (i == 0) first = rsp;
  }
  if (rc == 0) rc = FenceBeforeUp(p, fds[0], deadline_ns);
  if (rc) {
    close_all();
    return rc;
  }
  undial();
  // Held until the connections are installed: Close() then either sees them or runs first.
  std::unique_lock<std::mutex> close_lk(close_mu_);
  {
    if (closed_.load()) {
      close_all();
      return -ECONNABORTED;
    }
    if (qd_.load() == 0) {
      qd_.store(first.queue_depth);
      max_io_.store(first.max_io_size);
      permits_.InitOnce(first.queue_depth);
    } else if (first.queue_depth != qd_.load()) {
      close_all();  // RTRS refuses a path whose queue depth changed: permits are shared
      return -EPROTO;
    } else if (first.max_io_size < max_io_.load()) {
      max_io_.store(first.max_io_size);
    }
  }
  sockaddr_storage local{};
  socklen_t ll = sizeof(local);
  getsockname(fds[0], reinterpret_cast<sockaddr*>(&local), &ll);
  {
    std::lock_guard<std::mutex> lk(p->mu);
    p->src_str = FormatSockaddr(local);
  }
  for (int fd : fds) SetNonBlocking(fd, true);

  uint64_t gen = next_gen.fetch_add(1);
  p->gen.store(gen);
  p->hb.Reset();
  p->state.store(PathState::kConnecting);
  uint32_t qd = qd_.load();
  int reg_rc = 0;
  for (unsigned i = 0; i < n; i++) {
    EventLoop& l = pool.loop(i);
    int fd = fds[i + 1];
    l.RunSync([&, fd, i] {
      auto* c = new IoConn(this, p, gen, fd, &l, qd);
      p->loop_conn[i] = c;
      int r = c->Register();
      if (r) reg_rc = r;
    });
  }
  EventLoop& sl = pool.loop(p->service_loop);
  sl.RunSync([&] {
    auto* s = new ServiceConn();
    s->sess = this;
    s->path = p;
    s->gen = gen;
    s->fd = fds[0];
    s->loop = &sl;
    p->service = s;
    int r = s->Register(opt_.heartbeat_interval_ms);
    if (r) reg_rc = r;
  });
  if (reg_rc != 0 || p->failed_gen.load() == gen) {
    TeardownPath(p, gen, true);
    return reg_rc ? reg_rc : -ECONNRESET;
  }
  PathUp(p);
  close_lk.unlock();
  return 0;
}

void TcpClientSession::PathUp(ClientPath* p) {
  p->progress.Reset(NowNs());
  p->state.store(PathState::kConnected);
  if (connected_paths_.fetch_add(1) == 0) {
    RaiseLink(ever_connected_.exchange(true) ? LinkEvent::kReconnected : LinkEvent::kConnected);
  }
  // a failure that raced with the state change above
  if (p->failed_gen.load() == p->gen.load()) PathFailed(p, p->gen.load(), "failed while connecting");
}

void TcpClientSession::TeardownPath(ClientPath* p, uint64_t gen, bool sync) {
  IoThreads& pool = IoThreads::Get();
  for (unsigned i = 0; i < pool.size(); i++) {
    auto fn = [p, gen, i] {
      IoConn* c = p->loop_conn[i];
      if (c && c->gen == gen) {
        p->loop_conn[i] = nullptr;
        c->Teardown();
        delete c;
      }
    };
    if (sync)
      pool.loop(i).RunSync(fn);
    else
      pool.loop(i).Post(fn);
  }
  auto sfn = [p, gen] {
    ServiceConn* s = p->service;
    if (s && s->gen == gen) {
      p->service = nullptr;
      s->Teardown();
      delete s;
    }
  };
  if (sync)
    pool.loop(p->service_loop).RunSync(sfn);
  else
    pool.loop(p->service_loop).Post(sfn);
}

void TcpClientSession::PathFailed(ClientPath* p, uint64_t gen, const char* why) {
  if (p->gen.load() != gen) return;
  p->failed_gen.store(gen);
  PathState expect = PathState::kConnected;
  PathState next = closed_.load() ? PathState::kClosed : PathState::kReconnecting;
  if (!p->state.compare_exchange_strong(expect, next)) return;  // not up yet, or already down
  // one line a second per path at most: a server that breaks every connection it is given
  // must not flood the log (the next line counts what was left out)
  const uint64_t now = NowNs();
  if (now - p->fail_log_ns.load() >= 1000000000ull) {
    p->fail_log_ns.store(now);
    const uint32_t more = p->fail_unlogged.exchange(0);
    LogMsg(LogLevel::kWarn, {.component = "tcp-session", .session = opt_.sessname.c_str(), .path = p->dst_str.c_str()},
           "session %s path %s: %s%s", opt_.sessname.c_str(), p->dst_str.c_str(), why,
           more ? (" (and " + std::to_string(more) + " failures of this path not logged since the last line)").c_str() : "");
  } else {
    p->fail_unlogged.fetch_add(1);
  }
  // before the teardown hands its requests to Reissue: they are sent again only once the server
  // has fenced this incarnation (client_fence.cc)
  NoteLost(p);
  TeardownPath(p, gen, false);
  if (connected_paths_.fetch_sub(1) == 1 && !closed_.load()) RaiseLink(LinkEvent::kDisconnected);
  reconnector_.Lost(p->index);
}

// --------------------------------------------------------------------------------------------
// First connect and reconnection.

int TcpClientSession::Connect(int timeout_ms) {
  if (connect_called_.exchange(true)) return connected() ? 0 : -EALREADY;
  uint64_t deadline = NowNs() + static_cast<uint64_t>(std::max(timeout_ms, 1)) * 1000000ull;
  int last = -ENOTCONN;
  std::vector<ClientPath*> down;
  for (auto& p : paths_) {
    int rc = ConnectPath(p.get(), deadline);
    if (rc != 0) {
      last = rc;
      down.push_back(p.get());
    }
  }
  if (down.size() == paths_.size()) {
    for (auto& p : paths_) p->state.store(PathState::kClosed);
    return last;
  }
  core::Reconnector::Hooks hooks;
  hooks.dial = [this](size_t i) { return Redial(paths_[i].get()); };
  hooks.any_path_up = [this] { return connected_paths_.load() > 0; };
  hooks.gave_up = [this](size_t i) { paths_[i]->state.store(PathState::kClosed); };
  reconnector_.Start(paths_.size(), opt_.reconnect_delay_ms, opt_.max_reconnect_attempts,
                     std::move(hooks));
  // as RTRS: once the session is open, paths that could not connect keep trying
  for (ClientPath* p : down) {
    p->state.store(PathState::kReconnecting);
    reconnector_.Lost(p->index);
  }
  return 0;
}

int TcpClientSession::Redial(ClientPath* p) {
  if (closed_.load() || p->state.load() != PathState::kReconnecting) return 0;
  p->reconnects.fetch_add(1);
  int rc = ConnectPath(p, NowNs() + 5000000000ull);
  if (rc != 0 && p->state.load() != PathState::kClosed) p->state.store(PathState::kReconnecting);
  return rc;
}

}  // namespace ibnbd::transport::tcp::client
