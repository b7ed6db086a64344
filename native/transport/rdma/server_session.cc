// The RDMA server's control side, as Linux drivers/infiniband/ulp/rtrs/rtrs-srv.c: listening, the
// cm thread, and the grouping of connections into paths and of paths into sessions. A connect
// request is checked (conn_req) and accepted into its session (by paths_uuid, created only by a
// first_conn request) and its path (by sess_uuid), whose chunk memory and MR are made with its
// first connection; a path is closed on a cm event or on a loop's request, and a session goes
// down with its last path; closed paths and dead sessions are freed once the handler has answered
// all their requests (Stop() waits up to 5 s for that). The factory CreateRdmaServer is here too.
// A path's traffic (info exchange, heartbeats, requests, responses) is in server_path.cc; the
// data both share, and the locking, in server_internal.h.
//
// Threads: Start() and Stop() run on the caller's thread. The cm thread (CmThread(), the only
// reader of the cm event channel) accepts and rejects connections, closes paths (on cm events and
// on the close requests the loops and SrvSession::Close() queue through RequestClose() /
// CloseSession() and wake_fd_), reports OnSessionDown() outside mu_ (NotifyDown()) and frees
// (SweepZombies()); Stop() joins it and then closes, reports and frees on its own thread.
// SrvSession::Paths() and Close() may be called on any thread. Dead paths' cm ids, QPs and
// chunks, and rejected connections' ids, are destroyed on the reaper (rdma/reaper.h).
// Locks: mu_, taken by all of the above (server_internal.h says what it guards).
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/log.h"
#include "transport/core/allow.h"
#include "transport/core/auth.h"
#include "transport/core/fault.h"
#include "transport/rdma/rdma.h"
#include "transport/rdma/reaper.h"
#include "transport/rdma/server_internal.h"

namespace ibnbd::rdma::server {

std::vector<transport::PathInfo> SrvSession::Paths() const {
  std::lock_guard lock(srv->mu_);
  std::vector<transport::PathInfo> out;
  for (auto* p : paths) {
    transport::PathInfo i;
    i.src = p->src;
    i.dst = p->dst;
    i.state = p->state;
    i.inflight = p->inflight;
    i.hb_rtt_ns = p->hb.rtt_ns();
    i.requests = p->requests.load(std::memory_order_relaxed);
    out.push_back(i);
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Listening (Start()) and connection set-up (cm thread)

int RdmaServer::Start() {
  if (started_) return -EALREADY;
  if (int rc = CheckRdmaDevice()) return rc;
  ch_ = rdma_create_event_channel();
  if (!ch_) return -errno;
  std::vector<transport::Endpoint> eps = opts_.listen;
  if (eps.empty()) eps.push_back({"ip", "::", transport::kDefaultPort});
  // rdma_cm's [::] listener also takes IPv4 (as the kernel's rtrs-server relies on): an extra
  // 0.0.0.0 on the same port would only collide with it, so it is reported, not bound.
  auto is_any = [](const transport::Endpoint& e, const char* a) {
    return e.kind == "ip" && (e.addr == a || e.addr == std::string("[") + a + "]");
  };
  std::vector<transport::Endpoint> covered;
  for (auto it = eps.begin(); it != eps.end();) {
    bool v6_same_port = false;
    for (auto& o : eps) v6_same_port = v6_same_port || (is_any(o, "::") && o.port == it->port);
    if (is_any(*it, "0.0.0.0") && v6_same_port) {
      covered.push_back(*it);
      it = eps.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& ep : eps) {
    sockaddr_storage ss;
    socklen_t len;
    if (int rc = ParseEndpoint(ep, &ss, &len)) return rc;
    rdma_cm_id* id = nullptr;
    if (rdma_create_id(ch_, &id, nullptr, PortSpaceFor(ss))) return -errno;
    listeners_.push_back(id);
    if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&ss)) || rdma_listen(id, 64)) {
      int rc = -errno;
      SetLastError("cannot listen on " + ep.kind + ":" + ep.addr + " port " +
                   std::to_string(ep.port) + ": " + strerror(-rc));
      return rc;
    }
    transport::Endpoint b = ep;
    if (ss.ss_family != AF_IB) b.port = be16toh(rdma_get_src_port(id));
    bound_.push_back(b);
  }
  for (auto c : covered) {
    for (auto& b : bound_)
      if (b.addr == "::" || b.addr == "[::]") c.port = b.port;
    bound_.push_back(c);
  }
  int fl = fcntl(ch_->fd, F_GETFL);
  fcntl(ch_->fd, F_SETFL, fl | O_NONBLOCK);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return -errno;
  IoThreads::Get();  // start the loops before the first connection needs them
  started_ = true;
  thread_ = std::thread([this] { CmThread(); });
  return 0;
}

void RdmaServer::CmThread() {
  for (;;) {
    pollfd fds[2] = {{ch_->fd, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    poll(fds, 2, 1000);
    uint64_t v;
    if (read(wake_fd_, &v, sizeof(v)) < 0) {
    }
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      for (auto* p : close_requests_) ClosePathLocked(p);
      close_requests_.clear();
      ExpireHandshakesLocked();
    }
    NotifyDown();
    rdma_cm_event* ev;
    while (rdma_get_cm_event(ch_, &ev) == 0) {
      std::unique_ptr<Conn> to_destroy;
      rdma_cm_event_type t = ev->event;
      if (t == RDMA_CM_EVENT_CONNECT_REQUEST) {
        OnConnectRequest(ev, &to_destroy);
      } else if (ev->id && ev->id->context) {
        Conn* c = static_cast<Conn*>(ev->id->context);
        auto* p = static_cast<SrvPath*>(c->owner);
        std::lock_guard lock(mu_);
        DebugLog("server: " + std::string(rdma_event_str(t)) + " on connection " + std::to_string(c->cid) +
                 " of the path from " + p->src);
        if (t == RDMA_CM_EVENT_ESTABLISHED) {
          p->established++;
        } else if (t == RDMA_CM_EVENT_DISCONNECTED || t == RDMA_CM_EVENT_CONNECT_ERROR ||
                   t == RDMA_CM_EVENT_UNREACHABLE || t == RDMA_CM_EVENT_REJECTED ||
                   t == RDMA_CM_EVENT_DEVICE_REMOVAL || t == RDMA_CM_EVENT_ADDR_CHANGE ||
                   t == RDMA_CM_EVENT_TIMEWAIT_EXIT) {
          ClosePathLocked(p);
        }
      }
      rdma_ack_cm_event(ev);
      Reaper::Get().Delete(std::move(to_destroy));  // a rejected connection's id, after its event is acked
      NotifyDown();
    }
    SweepZombies(false);
  }
}

void RdmaServer::OnConnectRequest(rdma_cm_event* ev, std::unique_ptr<Conn>* reject_conn) {
  wire::ConnReq req = {};
  wire::ConnRsp rsp = {};
  rsp.magic = htole16(wire::kMagic);
  rsp.version = htole16(wire::kVersion);
  int err = 0;
  const auto& pc = ev->param.conn;
  if (opts_.allow && !opts_.allow->Allows(rdma_get_peer_addr(ev->id))) {
    const std::string peer = FormatSockaddr(rdma_get_peer_addr(ev->id));
    LogMsg(LogLevel::kWarn, {.component = "rdma-server", .path = peer.c_str()},
           "connection from %s refused (EACCES): not in --allow", peer.c_str());
    err = -EACCES;
  } else if (!pc.private_data || pc.private_data_len < sizeof(req)) {
    err = -EINVAL;
  } else {
    memcpy(&req, pc.private_data, sizeof(req));
    if (le16toh(req.magic) != wire::kMagic) {
      err = -ECONNRESET;  // what the kernel answers to a foreign magic
    } else if ((le16toh(req.version) >> 8) != (wire::kVersion >> 8)) {
      err = -EPROTONOSUPPORT;
    } else if (le16toh(req.cid_num) > wire::kMaxConnsPerPath || le16toh(req.cid) >= le16toh(req.cid_num)) {
      err = -EINVAL;
    }
  }
  if (!err) err = AcceptConn(ev->id, req, reject_conn);
  if (err) {
    DebugLog("server: connection request from " + FormatSockaddr(rdma_get_peer_addr(ev->id)) + " rejected: " +
             strerror(-err));
    rsp.errno_ = htole16(static_cast<uint16_t>(static_cast<int16_t>(err)));
    rdma_reject(ev->id, &rsp, sizeof(rsp));
    if (!*reject_conn) reject_conn->reset(new Conn(ev->id));  // destroys the id after the ack
  }
}

// In three steps, so that no loop is waited for under mu_: creating the connection's QP and
// watching its completion channel waits for an IO loop (RunSync), and the loops take mu_
// themselves (OnInfoReq(), RequestClose()). Holding it across that deadlocked the cm thread
// against a loop closing a path, for good: a server thawed after a freeze under load took
// the new path's connect request while its loops were closing the old path, and accepted
// nothing again. Between the steps the path cannot close or go: only this thread closes
// and frees paths.
int RdmaServer::AcceptConn(rdma_cm_id* id, const wire::ConnReq& req,
                           std::unique_ptr<Conn>* reject_conn) {
  const uint16_t cid = le16toh(req.cid);
  SrvPath* p = nullptr;
  if (int rc = AdmitConn(id, req, &p)) return rc;
  // 2. the connection's verbs objects, and with the path's first connection its chunk MR and
  // transmit buffer: written only here, on the cm thread, until step 3 publishes them
  auto conn = std::make_unique<Conn>(id);
  conn->cid = cid;
  conn->owner = p;
  auto pd = PdFor(id->verbs);
  if (!pd) {
    *reject_conn = std::move(conn);
    return -ENOMEM;
  }
  SrvSession* s = p->sess;
  Conn::Config cfg;
  // per connection: at most queue_depth responses of ≤ 3 WRs (WRITE, SEND_WITH_INV, imm) + HB,
  // twice: signalled selectively and posted a batch at a time, a batch may go out while the one
  // before still waits for the completion that retires it (Conn::PostSend, QueueSend)
  cfg.send_depth = 2 * s->qd * 3 + 16;
  cfg.recv_depth = s->qd + 16;
  cfg.recv_buf_size = cid == 0 ? 512 : 64;  // cid 0 receives the 272-byte info request
  int rc = conn->Setup(pd, cfg);
  if (rc == 0 && !p->chunk_mr) {
    p->chunk_mr = ibv_reg_mr(pd.get(), p->chunks, p->chunks_len,
                             IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (!p->chunk_mr) rc = -ENOMEM;
    if (rc == 0) rc = p->tx.Allocate(pd.get(), 4096, IBV_ACCESS_LOCAL_WRITE);
  }
  Conn* raw = conn.get();
  if (rc == 0) {
    EventLoop* loop = &IoThreads::Get().loop(cid == 0 ? 0 : cid - 1);
    rc = conn->Attach(loop, [this, p, raw](const ibv_wc& wc) { OnCompletion(p, raw, wc); });
  }
  if (rc) {
    raw->Detach();
    *reject_conn = std::move(conn);
    return rc;
  }
  // 3. accepted and published under mu_; the client's info request can only follow the accept
  wire::ConnRsp rsp = {};
  rsp.magic = htole16(wire::kMagic);
  rsp.version = htole16(wire::kVersion);
  rsp.queue_depth = htole16(static_cast<uint16_t>(s->qd));
  rsp.max_io_size = htole32(max_io_);
  rsp.max_hdr_size = htole32(wire::kMaxHdrSize);
  rsp.flags = 0;  // always_invalidate=N: no NEW_RKEY
  // a client that will prove its secret gets this path's nonce with cid 0's answer (rtrs_wire.h)
  const bool auth = cid == 0 && (req.flags & wire::kAuthConn) && opts_.auth && opts_.auth->required();
  uint8_t nonce[transport::core::kAuthNonceSize];
  if (auth) {
    if (!transport::core::RandomBytes(nonce, sizeof(nonce))) {
      raw->Detach();
      *reject_conn = std::move(conn);
      return -EIO;
    }
    rsp.flags = htole32(wire::kFlagAuth);
    memcpy(rsp.reserved, nonce, sizeof(nonce));
  }
  rdma_conn_param param = {};
  param.private_data = &rsp;
  param.private_data_len = sizeof(rsp);
  param.rnr_retry_count = 7;
  param.responder_resources = 1;
  param.initiator_depth = 1;
  {
    std::lock_guard lock(mu_);
    id->context = raw;
    if (cid == 0) {  // before the accept: the info request can follow it at once
      p->auth = auth;
      p->knows_refusal = req.flags & wire::kKnowsRefusal;
    }
    if (auth) memcpy(p->auth_nonce, nonce, sizeof(nonce));
    if (rdma_accept(id, &param) == 0) {
      p->conns[cid] = std::move(conn);
      return 0;
    }
    rc = -errno;
    if (cid == 0) p->auth = false;
    id->context = nullptr;
  }
  raw->Detach();
  *reject_conn = std::move(conn);
  return rc;
}

// 1. Under mu_: whether the connection may join, and into which session and path (made here
// for a new session or path, with the path's chunk memory); the slot p->conns[cid] stays empty
// until AcceptConn() fills it.
int RdmaServer::AdmitConn(rdma_cm_id* id, const wire::ConnReq& req, SrvPath** out) {
  std::lock_guard lock(mu_);
  std::string key(reinterpret_cast<const char*>(req.paths_uuid), 16);
  uint16_t cid = le16toh(req.cid), cid_num = le16toh(req.cid_num);
  // A new path of a session (or of its previous life, the same paths uuid) waits while a path of
  // it that closed still has requests running here: the client sends what that path lost again
  // on the new one, and a stale copy must not land after it. Refused, the client dials again
  // after its back-off, as after any refusal; a failover to a path that stayed up is the buffer
  // fence's (buffer_fence.h). docs/rdma-transport.md, "Fencing a lost path".
  bool known_path = false;
  if (auto it = sessions_.find(key); it != sessions_.end())
    for (auto* cand : it->second->paths) known_path = known_path || !memcmp(cand->sess_uuid, req.sess_uuid, 16);
  if (!known_path) {
    for (auto& old : paths_)
      if (old->state == PathState::kClosed && old->inflight > 0 && !memcmp(old->sess->paths_uuid, req.paths_uuid, 16)) {
        DebugLog("server: new path from " + FormatSockaddr(rdma_get_peer_addr(id)) +
                 " refused for now: a closed path of its session still has requests running");
        return -EBUSY;
      }
  }
  auto it = sessions_.find(key);
  SrvSession* s;
  if (it == sessions_.end()) {
    if (!(req.flags & wire::kFirstConn)) return -ENXIO;
    if (sessions_.size() >= opts_.limits->Get().max_sessions) {
      const std::string peer = FormatSockaddr(rdma_get_peer_addr(id));
      LogMsg(LogLevel::kWarn, {.component = "rdma-server", .path = peer.c_str()},
             "new session from %s refused (EBUSY): --max-sessions %u reached", peer.c_str(), opts_.limits->Get().max_sessions);
      return -EBUSY;
    }
    auto ns = std::make_unique<SrvSession>();
    ns->srv = this;
    memcpy(ns->paths_uuid, req.paths_uuid, 16);
    ns->sid = next_sid_++;
    ns->qd = opts_.queue_depth;
    ns->chunk_size = chunk_size_;
    ns->mem_bits = wire::MemBits(ns->qd);
    ns->fence = std::make_unique<BufferFence>(ns->qd);
    s = ns.get();
    sessions_[key] = std::move(ns);
  } else {
    s = it->second.get();
  }
  SrvPath* p = nullptr;
  for (auto* cand : s->paths)
    if (!memcmp(cand->sess_uuid, req.sess_uuid, 16)) p = cand;
  if (p) {
    if (p->state != PathState::kConnecting || p->cid_num != cid_num || p->conns[cid]) {
      DebugLog("server: connection " + std::to_string(cid) + "/" + std::to_string(cid_num) + " from " +
               p->src + " refused: its path is " + (p->state == PathState::kConnecting ? "connecting" : "up") +
               (p->conns[cid] ? " and has this connection" : "") + " (cid_num " + std::to_string(p->cid_num) + ")");
      return -ECONNRESET;
    }
  } else {
    if (s->paths.size() >= wire::kMaxPathsPerSession) return -ECONNRESET;
    // --max-pending-handshakes: the oldest path still connecting makes room (as over TCP)
    SrvPath* oldest = nullptr;
    size_t pending = 0;
    for (auto& q : paths_)
      if (q->state == PathState::kConnecting) {
        pending++;
        if (!oldest || q->born_ns < oldest->born_ns) oldest = q.get();
      }
    if (pending >= opts_.limits->Get().max_pending && oldest) {
      if (handshake_evicted_++ % 1000 == 0)
        LogMsg(LogLevel::kWarn, {"rdma-server"},
               "%u paths still connecting (--max-pending-handshakes): the oldest is closed for the newest (%llu so far)",
               opts_.limits->Get().max_pending, (unsigned long long)handshake_evicted_);
      ClosePathLocked(oldest);
    }
    const size_t chunks_len = size_t(s->qd) * s->chunk_size;
    if (reserved_bytes_ + chunks_len > opts_.limits->Get().max_buffer_bytes) {
      const std::string peer = FormatSockaddr(rdma_get_peer_addr(id));
      LogMsg(LogLevel::kWarn, {.component = "rdma-server", .path = peer.c_str()},
             "path from %s refused (ENOMEM): its chunks would pass --max-buffer-memory", peer.c_str());
      return -ENOMEM;
    }
    auto np = std::make_unique<SrvPath>();
    np->chunks_len = chunks_len;
    void* m = mmap(nullptr, np->chunks_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -ENOMEM;
    np->chunks = static_cast<uint8_t*>(m);
    reserved_bytes_ += np->chunks_len;
    np->sess = s;
    memcpy(np->sess_uuid, req.sess_uuid, 16);
    np->cid_num = cid_num;
    np->conns.resize(cid_num);
    np->slots.reset(new Slot[s->qd]);
    np->src = FormatSockaddr(rdma_get_peer_addr(id));
    np->dst = FormatSockaddr(rdma_get_local_addr(id));
    np->born_ns = transport::core::MonotonicNs();
    p = np.get();
    s->paths.push_back(p);
    paths_.push_back(std::move(np));
  }
  size_t conns = 0;
  for (auto* sp : s->paths)
    for (auto& c : sp->conns) conns += c ? 1 : 0;
  if (conns >= opts_.limits->Get().max_conns_per_session) {
    LogMsg(LogLevel::kWarn, {.component = "rdma-server", .session = s->name.c_str(), .path = p->src.c_str()},
           "connection of session %s refused (EBUSY): --max-conns-per-session %u reached", p->src.c_str(),
           opts_.limits->Get().max_conns_per_session);
    return -EBUSY;
  }
  *out = p;
  return 0;
}

// ------------------------------------------------------------------------------------------
// Closing and freeing paths and sessions (on the cm thread, asked for from any), Stop()

// Under mu_, on the cm thread (or in Stop(), once that thread has ended).
void RdmaServer::ClosePathLocked(SrvPath* p) {
  if (p->state == PathState::kClosed) return;
  bool was_connected = p->state == PathState::kConnected;
  p->state = PathState::kClosed;
  for (auto& c : p->conns) {
    if (!c) continue;
    c->dead = true;
    rdma_disconnect(c->id());  // completions now flush; SweepZombies detaches and frees
  }
  SrvSession* s = p->sess;
  auto& v = s->paths;
  v.erase(std::remove(v.begin(), v.end(), p), v.end());
  (void)was_connected;
  if (v.empty()) {
    if (s->up) {
      s->up = false;
      pending_down_.push_back(s);
    }
    auto it = sessions_.find(std::string(reinterpret_cast<const char*>(s->paths_uuid), 16));
    if (it != sessions_.end()) {
      dead_sessions_.push_back(std::move(it->second));
      sessions_.erase(it);
    }
  }
}

// Under mu_, on the cm thread, at least once a second: a path that has not finished its set-up
// (every connection, the info exchange) within --handshake-timeout-ms is closed, its chunks
// freed; one log line a second however many.
void RdmaServer::ExpireHandshakesLocked() {
  const uint64_t now = transport::core::MonotonicNs();
  const uint64_t limit = uint64_t(opts_.limits->Get().handshake_timeout_ms) * 1000000ull;
  std::vector<SrvPath*> late;
  for (auto& p : paths_)
    if (p->state == PathState::kConnecting && now - p->born_ns > limit) late.push_back(p.get());
  for (auto* p : late) ClosePathLocked(p);
  handshake_expired_ += late.size();
  if (!late.empty() && now - handshake_logged_ns_ >= 1000000000ull) {
    handshake_logged_ns_ = now;
    LogMsg(LogLevel::kWarn, {.component = "rdma-server", .path = late.front()->src.c_str()},
           "path from %s closed: its set-up did not finish within %u ms (--handshake-timeout-ms; %llu so far)",
           late.front()->src.c_str(), opts_.limits->Get().handshake_timeout_ms, (unsigned long long)handshake_expired_);
  }
}

void RdmaServer::RequestClose(SrvPath* p, const char* why) {
  DebugLog("server: closing path from " + p->src + ": " + why);
  {
    std::lock_guard lock(mu_);
    close_requests_.push_back(p);
  }
  uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
  }
}

void RdmaServer::NotifyDown() {
  std::vector<SrvSession*> down;
  {
    std::lock_guard lock(mu_);
    down.swap(pending_down_);
  }
  // the same window as the TCP server's (tests/native/server-stop.test.ts): a report in progress
  // that Stop() must wait for; here Stop() joins the CM thread that reports
  if (!down.empty()) transport::FaultDelay("IBNBD_FAULT_SESSION_DOWN_DELAY_MS");
  for (auto* s : down) handler_->OnSessionDown(s);
}

void RdmaServer::CloseSession(SrvSession* s) {
  {
    std::lock_guard lock(mu_);
    for (auto* p : s->paths) close_requests_.push_back(p);
  }
  uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
  }
}

void SrvSession::Close() { srv->CloseSession(this); }

// Frees closed paths and dead sessions once no request of theirs is with the handler. The
// loops are waited for (RunSync) without holding mu_: loop threads take mu_ themselves.
void RdmaServer::SweepZombies(bool force) {
  std::vector<std::unique_ptr<SrvPath>> gone;
  std::vector<std::unique_ptr<SrvSession>> gone_sessions;
  {
    std::lock_guard lock(mu_);
    for (auto it = paths_.begin(); it != paths_.end();) {
      SrvPath* p = it->get();
      bool queued = std::find(close_requests_.begin(), close_requests_.end(), p) != close_requests_.end();
      if (p->state == PathState::kClosed && (force || (p->inflight == 0 && !queued))) {
        reserved_bytes_ -= p->chunks_len;
        gone.push_back(std::move(*it));
        it = paths_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = dead_sessions_.begin(); it != dead_sessions_.end();) {
      SrvSession* s = it->get();
      bool referenced = false;
      for (auto& p : paths_) referenced = referenced || p->sess == s;
      if (!referenced && (force || s->inflight == 0)) {
        gone_sessions.push_back(std::move(*it));
        it = dead_sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& p : gone) {
    for (auto& c : p->conns)
      if (c) c->Detach();
    if (p->hb_timer >= 0) {
      EventLoop* l0 = &IoThreads::Get().loop(0);
      l0->RunSync([&] { l0->Remove(p->hb_timer); });
    }
  }
  // responses posted before the detach may still be queued on the loops
  if (!gone.empty()) {
    IoThreads& pool = IoThreads::Get();
    for (unsigned i = 0; i < pool.size(); i++) pool.loop(i).RunSync([] {});
  }
  gone_sessions.clear();
  if (gone.empty()) return;
  // QPs, cm ids and chunks go on the reaper: rdma_destroy_id may block while the kernel's CM
  // holds the id, and this thread accepts every client's connections. Their later cm events
  // find no context and are only acked (here, the one thread reading the channel).
  for (auto& p : gone)
    for (auto& c : p->conns)
      if (c) c->id()->context = nullptr;
  auto job = std::make_shared<std::vector<std::unique_ptr<SrvPath>>>(std::move(gone));
  Reaper::Get().Post([job] { job->clear(); });
}

void RdmaServer::Stop() {
  if (!started_) {
    for (auto* id : listeners_) rdma_destroy_id(id);
    listeners_.clear();
    if (ch_) rdma_destroy_event_channel(ch_);
    ch_ = nullptr;
    return;
  }
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
  }
  thread_.join();
  started_ = false;
  {
    std::lock_guard lock(mu_);
    close_requests_.clear();
    std::vector<SrvPath*> all;
    for (auto& p : paths_) all.push_back(p.get());
    for (auto* p : all) ClosePathLocked(p);
  }
  NotifyDown();
  // responses still owed by the handler: give them a bounded time
  for (int i = 0; i < 500; i++) {
    bool busy = false;
    {
      std::lock_guard lock(mu_);
      for (auto& p : paths_) busy = busy || p->inflight;
    }
    if (!busy) break;
    usleep(10000);
  }
  SweepZombies(true);
  for (auto* id : listeners_) rdma_destroy_id(id);
  listeners_.clear();
  // the channel outlives every id on it: a teardown stuck in the kernel keeps it (leaked)
  if (Reaper::Get().Drain(10000)) {
    rdma_destroy_event_channel(ch_);
  } else {
    LogMsg(LogLevel::kError, {"rdma-server"}, "a connection teardown is stuck in the kernel after 10 s; stopping anyway");
  }
  ch_ = nullptr;
  close(wake_fd_);
  wake_fd_ = -1;
}

}  // namespace ibnbd::rdma::server

namespace ibnbd::rdma {

std::unique_ptr<transport::Server> CreateRdmaServer(transport::Server::Options options,
                                                    transport::ServerHandler* handler, int* err) {
  *err = 0;
  if (!handler || options.queue_depth == 0 || options.queue_depth > wire::kMaxQueueDepth ||
      options.max_io_size == 0 || options.max_io_size > (1u << 24)) {
    SetLastError("invalid RDMA server options (queue_depth 1..65535, max_io_size)");
    *err = -EINVAL;
    return nullptr;
  }
  for (auto& ep : options.listen) {
    sockaddr_storage ss;
    socklen_t len;
    if ((*err = ParseEndpoint(ep, &ss, &len))) {
      SetLastError("invalid RDMA listen address " + ep.kind + ":" + ep.addr + ": " + LastRdmaError());
      return nullptr;
    }
  }
  // chunk = a power of two ≥ 8 KiB holding the IO; the kernel's max_io_size = chunk - 4 KiB
  uint32_t chunk = wire::kMinChunkSize;
  while (chunk < options.max_io_size) chunk <<= 1;
  if (wire::ChunkBits(options.queue_depth) + __builtin_ctz(chunk) > 28) {
    SetLastError("queue_depth x chunk size do not fit the 28-bit RTRS immediate");
    *err = -EINVAL;
    return nullptr;
  }
  if ((*err = CheckRdmaDevice())) return nullptr;
  auto srv = std::make_unique<server::RdmaServer>(std::move(options), handler);
  srv->SetChunk(chunk);
  return srv;
}

}  // namespace ibnbd::rdma
