// One path of the RDMA client session, as the path half of Linux
// drivers/infiniband/ulp/rtrs/rtrs-clt.c: its rdma_cm connections (conn_req / conn_rsp; cid 0 the
// service connection, cid 1.. one IO connection per IO thread), the info exchange on cid 0 that
// learns the server's chunks, the completions of every connection, heartbeats, cm events, and the
// path's teardown and reconnect.
//
// Threads: ConnectPath() runs on Connect()'s caller or on the session's reconnect thread
// (Redial(), the dial hook of core::Reconnector, started by Connect()); it waits for the cm events and for the info
// exchange's completions itself, with timeouts, before any loop watches them. TeardownPath() runs
// on those two threads (after a failed attempt, before a rebuild) and in Close(). Once the path
// is up (StartPathLoops()), a connection's completions run on its IoThreads loop (cid 0: loop 0,
// cid c: loop c - 1); loop 0 also reads the path's cm events and runs its heartbeat timer, and
// what fails the path there goes to FailPath() (client_session.cc). cm ids, QPs and event
// channels are destroyed on the reaper (rdma/reaper.h): rdma_destroy_id can block.
// Locks: the reconnect schedule is core::Reconnector's (its own lock); mem_mu_ is held while the regions are registered on / deregistered from the path's PD; permit_mu_ while
// the permits are sized (first connect); the path's info_mu guards src/dst.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/log.h"
#include "transport/core/auth.h"
#include "transport/core/fault.h"
#include "transport/core/policy.h"
#include "transport/rdma/auth_proof.h"
#include "transport/rdma/client_internal.h"
#include "transport/rdma/reaper.h"

namespace ibnbd::rdma::client {
namespace {

constexpr int kStepTimeoutMs = 5000;

constexpr auto NowNs = transport::core::MonotonicNs;

struct ConnRspOut {
  wire::ConnRsp rsp = {};
  bool have = false;
};

}  // namespace

// ------------------------------------------------------------------------------------------
// Connection establishment, teardown and reconnect

// The map fails with EACCES and "authentication failed" alone (session.ts); the reason goes to
// this daemon's log, once per attempt.
void RdmaClientSession::AuthFailed(Path* p, const char* why) {
  LogMsg(LogLevel::kError, {.component = "rdma-session", .session = opts_.sessname.c_str(), .path = p->spec.dst.addr.c_str()},
         "session %s path %s: authentication failed: %s", opts_.sessname.c_str(), p->spec.dst.addr.c_str(), why);
  SetLastError(std::string("authentication failed: ") + why);
}

int RdmaClientSession::ConnectConn(Path* p, uint16_t cid, uint16_t cid_num, int timeout_ms) {
  sockaddr_storage dst, src;
  socklen_t dlen, slen;
  // resolved again at every (re)connect: a gid: address follows the GID tables as they are now
  if (int rc = ParseEndpoint(p->spec.dst, &dst, &dlen)) return rc;
  if (p->spec.src) {
    if (int rc = ParseEndpoint(*p->spec.src, &src, &slen)) return rc;
  }
  if (p->spec.src) {
    // the source port is not ours to pick
    if (src.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&src)->sin_port = 0;
    if (src.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&src)->sin6_port = 0;
  }
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(p->ch, &id, nullptr, PortSpaceFor(dst))) return -errno;
  auto conn = std::make_unique<Conn>(id);
  conn->cid = cid;
  conn->owner = p;
  // an attempt that fails leaves its id to the reaper (see TeardownPath); one that succeeds
  // has moved it into the path
  struct ReapOnFailure {
    std::unique_ptr<Conn>& c;
    ~ReapOnFailure() { Reaper::Get().Delete(std::move(c)); }
  } reap_on_failure{conn};

  auto wait_for = [&](rdma_cm_event_type want, ConnRspOut* rsp) -> int {
    rdma_cm_event* ev = nullptr;
    int rc = WaitCmEvent(p->ch, timeout_ms, &ev);
    if (rc) return rc;
    rdma_cm_event_type got = ev->event;
    int status = ev->status;
    if (rsp && ev->param.conn.private_data && ev->param.conn.private_data_len >= sizeof(wire::ConnRsp)) {
      memcpy(&rsp->rsp, ev->param.conn.private_data, sizeof(wire::ConnRsp));
      rsp->have = true;
    }
    rdma_ack_cm_event(ev);
    if (got == want) return 0;
    switch (got) {
      case RDMA_CM_EVENT_ADDR_ERROR: return -EHOSTUNREACH;
      case RDMA_CM_EVENT_ROUTE_ERROR: return -ENETUNREACH;
      case RDMA_CM_EVENT_REJECTED:
        if (rsp && rsp->have && le16toh(rsp->rsp.magic) == wire::kMagic) {
          int e = static_cast<int16_t>(le16toh(rsp->rsp.errno_));
          return e < 0 ? e : -ECONNREFUSED;
        }
        return -ECONNREFUSED;
      case RDMA_CM_EVENT_UNREACHABLE: return -EHOSTUNREACH;
      default: return status < 0 ? status : -ECONNREFUSED;
    }
  };

  int rc;
  if (rdma_resolve_addr(id, p->spec.src ? reinterpret_cast<sockaddr*>(&src) : nullptr,
                        reinterpret_cast<sockaddr*>(&dst), kStepTimeoutMs)) {
    rc = -errno;
    SetLastError(std::string("rdma_resolve_addr: ") + strerror(-rc));
    return rc;
  }
  if ((rc = wait_for(RDMA_CM_EVENT_ADDR_RESOLVED, nullptr))) {
    SetLastError("cannot resolve " + p->spec.dst.addr + ": " + strerror(-rc));
    return rc;
  }
  if (rdma_resolve_route(id, kStepTimeoutMs)) return -errno;
  if ((rc = wait_for(RDMA_CM_EVENT_ROUTE_RESOLVED, nullptr))) {
    SetLastError("no route to " + p->spec.dst.addr + ": " + strerror(-rc));
    return rc;
  }
  DebugLog("client: connection " + std::to_string(cid) + " to " + p->spec.dst.addr + " resolved: device " +
           (id->verbs ? ibv_get_device_name(id->verbs->device) : "?") + " port " + std::to_string(id->port_num) +
           " src " + FormatSockaddr(rdma_get_local_addr(id)) + " dst " + FormatSockaddr(rdma_get_peer_addr(id)));
  auto pd = PdFor(id->verbs);
  if (!pd) return -ENOMEM;
  Conn::Config cfg;
  uint32_t qd = opts_.queue_depth;
  // twice a full queue's work requests: sends are signalled selectively and posted a batch at a
  // time (Conn::PostSend, QueueSend), so a whole batch may be posted while the work requests of
  // the one before still wait for the completion that retires them
  cfg.send_depth = 2 * qd * kMaxWrsPerRequest + 16;
  cfg.recv_depth = qd + 16 + 1;  // +1: the info response on cid 0
  cfg.recv_slots = qd + 16;
  cfg.recv_buf_size = 64;  // RKEY_RSP (8 bytes) arrives in a receive buffer
  cfg.max_send_sge = 32;
  cfg.defer_recvs = (cid == 0);  // nothing may consume receives before the info response
  if ((rc = conn->Setup(pd, cfg))) {
    SetLastError(std::string("QP setup: ") + strerror(-rc));
    return rc;
  }
  wire::ConnReq req = {};
  req.magic = htole16(wire::kMagic);
  req.version = htole16(wire::kVersion);
  req.cid = htole16(cid);
  req.cid_num = htole16(cid_num);
  req.recon_cnt = htole16(p->recon_cnt);
  memcpy(req.sess_uuid, p->sess_uuid, 16);
  memcpy(req.paths_uuid, paths_uuid_, 16);
  // first_conn: this path may create the server session (no other path of ours is up)
  req.flags = connected() ? 0 : wire::kFirstConn;
  req.flags |= wire::kKnowsRefusal;  // tell us why, if refused (rtrs_wire.h)
  if (!opts_.auth_secret.empty()) req.flags |= wire::kAuthConn;  // a proof follows
  rdma_conn_param param = {};
  param.private_data = &req;
  param.private_data_len = sizeof(req);
  param.retry_count = 7;
  param.rnr_retry_count = 7;
  param.responder_resources = 1;
  param.initiator_depth = 1;
  if (rdma_connect(id, &param)) {
    rc = -errno;
    SetLastError(std::string("rdma_connect: ") + strerror(-rc));
    return rc;
  }
  ConnRspOut rsp;
  if ((rc = wait_for(RDMA_CM_EVENT_ESTABLISHED, &rsp))) {
    SetLastError("connection " + std::to_string(cid) + " to " + p->spec.dst.addr + " refused: " +
                 strerror(-rc));
    return rc;
  }
  if (cid == 0) {
    if (!rsp.have || le16toh(rsp.rsp.magic) != wire::kMagic ||
        (le16toh(rsp.rsp.version) >> 8) != (wire::kVersion >> 8)) {
      SetLastError("server answered without a valid RTRS conn_rsp");
      return -EPROTO;
    }
    uint32_t sqd = le16toh(rsp.rsp.queue_depth);
    uint32_t max_io = le32toh(rsp.rsp.max_io_size);
    uint32_t max_hdr = le32toh(rsp.rsp.max_hdr_size);
    if (sqd == 0 || max_io == 0 || max_hdr < sizeof(wire::MsgReadHdr) + sizeof(wire::SgDesc) ||
        max_io > (1u << 28)) {
      SetLastError("server conn_rsp has an invalid queue depth / sizes");
      return -EPROTO;
    }
    if (server_qd_ && server_qd_ != sqd) {
      SetLastError("paths of one session answered with different queue depths");
      return -EPROTO;
    }
    server_qd_ = sqd;
    chunk_size_ = max_io + max_hdr;
    mem_bits_ = wire::MemBits(sqd);
    new_rkey_ = le32toh(rsp.rsp.flags) & wire::kFlagNewRkey;
    // mutual: a session with a secret talks only to a server that proves it has it too
    if (!opts_.auth_secret.empty()) {
      if (!(le32toh(rsp.rsp.flags) & wire::kFlagAuth)) {
        AuthFailed(p, "the server did not authenticate itself (it has no --auth-keys, or it is not an ibnbd "
                      "server: the kernel's rnbd_server cannot)");
        return -EACCES;
      }
      memcpy(p->server_nonce, rsp.rsp.reserved, sizeof(p->server_nonce));
    }
    uint32_t qd_now = std::min(opts_.queue_depth, sqd);
    uint32_t max_io_now = std::min(opts_.max_io_size, max_io);
    if (!qd_) {
      qd_ = qd_now;
      max_io_ = max_io_now;
    }
  }
  p->conns.push_back(std::move(conn));
  return 0;
}

int RdmaClientSession::InfoExchange(Path* p, int timeout_ms) {
  Conn* c0 = p->conns[0].get();
  const bool auth = !opts_.auth_secret.empty();
  const size_t req_len = sizeof(wire::InfoReq) + (auth ? sizeof(wire::AuthTail) : 0);
  const size_t rsp_len =
      sizeof(wire::InfoRspHdr) + sizeof(wire::SgDesc) * size_t(server_qd_) + (auth ? wire::kServerProofSize : 0);
  int rc = p->info.Allocate(c0->pd(), std::max(rsp_len, req_len) + req_len, IBV_ACCESS_LOCAL_WRITE);
  if (rc) return rc;
  uint8_t* rsp_buf = p->info.data;
  uint8_t* req_buf = p->info.data + p->info.len - req_len;
  ibv_sge rsge = {reinterpret_cast<uintptr_t>(rsp_buf), static_cast<uint32_t>(rsp_len), p->info.mr->lkey};
  ibv_recv_wr rwr = {};
  rwr.wr_id = WrId(kWrInfo, 0);
  rwr.sg_list = &rsge;
  rwr.num_sge = 1;
  if ((rc = c0->PostRecvWr(&rwr))) return rc;

  auto* req = reinterpret_cast<wire::InfoReq*>(req_buf);
  memset(req, 0, sizeof(*req));
  req->type = htole16(wire::kInfoReq);
  snprintf(req->pathname, sizeof(req->pathname), "%s", opts_.sessname.c_str());
  wire::AuthTail tail = {};
  if (auth) {  // the client's proof over this path's nonces (rtrs_wire.h)
    if (!transport::core::RandomBytes(tail.client_nonce, sizeof(tail.client_nonce)) ||
        !PathProof(opts_.auth_secret, transport::core::AuthRole::kClient, tail.client_nonce, p->server_nonce,
                   paths_uuid_, p->sess_uuid, req->pathname, tail.proof))
      return -EIO;
    transport::FaultReplayAuth(reinterpret_cast<uint8_t*>(&tail), sizeof(tail));  // tests only
    memcpy(req_buf + sizeof(*req), &tail, sizeof(tail));
  }
  ibv_sge ssge = {reinterpret_cast<uintptr_t>(req_buf), static_cast<uint32_t>(req_len), p->info.mr->lkey};
  ibv_send_wr swr = {};
  swr.wr_id = WrId(kWrInfo, 1);
  swr.sg_list = &ssge;
  swr.num_sge = 1;
  swr.opcode = IBV_WR_SEND;
  swr.send_flags = IBV_SEND_SIGNALED;
  if ((rc = c0->PostSend(&swr))) return rc;

  bool sent = false, received = false;
  uint32_t got_len = 0;
  while (!sent || !received) {
    ibv_wc wc;
    if ((rc = c0->WaitOne(&wc, timeout_ms))) {
      SetLastError("no RTRS info response from the server");
      return rc;
    }
    if (wc.status != IBV_WC_SUCCESS) {
      SetLastError(std::string("info exchange failed: ") + ibv_wc_status_str(wc.status));
      return -ECONNRESET;
    }
    if (wc.wr_id == WrId(kWrInfo, 1)) sent = true;
    if (wc.wr_id == WrId(kWrInfo, 0)) {
      received = true;
      got_len = wc.byte_len;
    }
  }
  wire::InfoRspHdr hdr;
  if (got_len < sizeof(hdr)) return -EPROTO;
  memcpy(&hdr, rsp_buf, sizeof(hdr));
  uint32_t sg_cnt = le16toh(hdr.sg_cnt);
  if (le16toh(hdr.type) == wire::kInfoRsp && sg_cnt == 0 && hdr.reserved[0] == wire::kInfoRspAuthFailed) {
    AuthFailed(p, auth ? "the server refused our proof (a wrong secret, or none for this name there)"
                       : "the server requires a proof for this session name, and this daemon has no secret for it");
    return -EACCES;
  }
  // process_info_rsp's rules: descriptors covering exactly queue_depth chunks
  if (le16toh(hdr.type) != wire::kInfoRsp || sg_cnt == 0 || server_qd_ % sg_cnt ||
      got_len < sizeof(hdr) + sg_cnt * sizeof(wire::SgDesc)) {
    SetLastError("malformed RTRS info response");
    return -EPROTO;
  }
  p->rbufs.assign(server_qd_, RemoteBuf{});
  uint64_t total = 0;
  uint32_t buf = 0;
  for (uint32_t i = 0; i < sg_cnt; i++) {
    wire::SgDesc d;
    memcpy(&d, rsp_buf + sizeof(hdr) + i * sizeof(d), sizeof(d));
    uint32_t len = le32toh(d.len);
    if (len == 0 || len % chunk_size_) return -EPROTO;
    total += len;
    if (total > uint64_t(chunk_size_) * server_qd_) return -EPROTO;
    for (uint32_t k = 0; k < len / chunk_size_; k++, buf++) {
      p->rbufs[buf].addr = le64toh(d.addr) + uint64_t(k) * chunk_size_;
      p->rbufs[buf].rkey = le32toh(d.key);
    }
  }
  if (total != uint64_t(chunk_size_) * server_qd_) return -EPROTO;
  if (auth) {  // the server's proof after the descriptors: it holds the same secret
    const size_t at = sizeof(hdr) + sg_cnt * sizeof(wire::SgDesc);
    uint8_t expect[transport::core::kAuthProofSize];
    if (got_len < at + wire::kServerProofSize ||
        !PathProof(opts_.auth_secret, transport::core::AuthRole::kServer, tail.client_nonce, p->server_nonce,
                   paths_uuid_, p->sess_uuid, req->pathname, expect) ||
        !transport::core::ProofsEqual(expect, rsp_buf + at)) {
      AuthFailed(p, "the server's proof does not hold: it does not have this session's secret");
      return -EACCES;
    }
  }
  return 0;
}

int RdmaClientSession::ConnectPath(Path* p, int timeout_ms) {
  p->ch = rdma_create_event_channel();
  if (!p->ch) return -errno;
  {
    std::lock_guard lock(p->info_mu);
    p->dst = p->spec.dst.kind + ":" + p->spec.dst.addr;
  }
  uint16_t cid_num = static_cast<uint16_t>(1 + IoThreads::Get().size());
  p->recon_cnt++;
  int rc = 0;
  for (uint16_t cid = 0; cid < cid_num && !rc; cid++) rc = ConnectConn(p, cid, cid_num, timeout_ms);
  // a client that connects and then says nothing (tests: the server's handshake timeout)
  if (!rc) transport::FaultDelay("IBNBD_FAULT_RDMA_INFO_DELAY_MS");
  if (!rc) rc = InfoExchange(p, timeout_ms);
  if (!rc) rc = p->conns[0]->PostAllRecvs();
  if (!rc) {
    ibv_pd* pd = p->conns[0]->pd();
    int acc = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    rc = p->iu.Allocate(pd, size_t(qd_) * kIuSize, IBV_ACCESS_LOCAL_WRITE);
    if (!rc) rc = p->bounce.Reserve(pd, qd_, max_io_, acc);
  }
  if (!rc) {
    std::unique_lock lock(mem_mu_);
    for (auto& [a, r] : regions_) {
      r.mrs[p->index] = ibv_reg_mr(p->conns[0]->pd(), reinterpret_cast<void*>(r.addr), r.len,
                                   IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
      if (!r.mrs[p->index]) rc = -ENOMEM;
    }
  }
  if (!rc) {
    std::lock_guard lock(permit_mu_);
    if (reqs_.empty()) {
      reqs_.resize(qd_);
      permits_.InitOnce(qd_);
    }
  }
  if (!rc) {
    std::lock_guard lock(p->info_mu);
    p->src = FormatSockaddr(rdma_get_local_addr(p->conns[0]->id()));
  }
  if (!rc) rc = StartPathLoops(p);
  if (rc) {
    TeardownPath(p);
    if (!*LastRdmaError()) SetLastError(std::string("path setup failed: ") + strerror(-rc));
    return rc;
  }
  bool first = !connected();
  p->hb.Reset();
  p->progress.Reset(NowNs());
  p->state = PathState::kConnected;
  if (first && opts_.on_link_event)
    opts_.on_link_event(p->recon_cnt > 1 ? transport::LinkEvent::kReconnected : transport::LinkEvent::kConnected);
  return 0;
}

// Releases everything a path holds (not connected any more, no IO thread using it).
void RdmaClientSession::TeardownPath(Path* p) {
  if (!p->conns.empty() && p->ch) {
    EventLoop* l0 = &IoThreads::Get().loop(0);
    l0->RunSync([&] {
      l0->Remove(p->ch->fd);
      if (p->hb_timer >= 0) l0->Remove(p->hb_timer);
    });
  }
  for (auto& c : p->conns) rdma_disconnect(c->id());
  for (auto& c : p->conns) c->Detach();
  {
    std::unique_lock lock(mem_mu_);
    for (auto& [a, r] : regions_) {
      if (p->index < r.mrs.size() && r.mrs[p->index]) {
        ibv_dereg_mr(r.mrs[p->index]);
        r.mrs[p->index] = nullptr;
      }
    }
  }
  p->iu.Reset();
  p->bounce.Reset();
  p->info.Reset();
  if (p->hb_timer >= 0) close(p->hb_timer);
  p->hb_timer = -1;
  // QPs, cm ids (their PD goes with the last one) and then their channel, on the reaper:
  // rdma_destroy_id may block while the kernel's CM holds an id, and this thread is the one
  // that brings the path back
  auto conns = std::make_shared<std::vector<std::unique_ptr<Conn>>>(std::move(p->conns));
  p->conns.clear();
  rdma_event_channel* ch = p->ch;
  p->ch = nullptr;
  if (!conns->empty() || ch) {
    Reaper::Get().Post([conns, ch] {
      conns->clear();
      if (ch) rdma_destroy_event_channel(ch);
    });
  }
}

// The reconnector's dial hook (core/reconnector.h), on its thread.
int RdmaClientSession::Redial(Path* p) {
  if (closed_ || p->state != PathState::kReconnecting) return 0;
  // every IO thread past any request that picked this path before it failed
  IoThreads& pool = IoThreads::Get();
  for (unsigned i = 0; i < pool.size(); i++) pool.loop(i).RunSync([] {});
  TeardownPath(p);
  p->state = PathState::kReconnecting;
  int rc = ConnectPath(p, 5000);
  DebugLog("client: reconnect attempt (recon_cnt " + std::to_string(p->recon_cnt) + ") of path " +
           p->spec.dst.addr + (rc ? std::string(": ") + strerror(-rc) : std::string(": connected")));
  if (rc != 0 && p->state != PathState::kClosed) p->state = PathState::kReconnecting;
  return rc;
}

int RdmaClientSession::StartPathLoops(Path* p) {
  IoThreads& io = IoThreads::Get();
  for (auto& c : p->conns) {
    Conn* raw = c.get();
    EventLoop* loop = &io.loop(raw->cid == 0 ? 0 : raw->cid - 1);
    int rc = raw->Attach(loop, [this, p, raw](const ibv_wc& wc) { OnCompletion(p, raw, wc); });
    if (rc) return rc;
  }
  // cm events (DISCONNECTED, ...) and heartbeats on the service connection's loop
  EventLoop* l0 = p->conns[0]->loop();
  int fl = fcntl(p->ch->fd, F_GETFL);
  fcntl(p->ch->fd, F_SETFL, fl | O_NONBLOCK);
  p->hb_timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (p->hb_timer < 0) return -errno;
  uint32_t ms = std::max<uint32_t>(opts_.heartbeat_interval_ms, 10);
  itimerspec its = {{ms / 1000, (ms % 1000) * 1000000L}, {ms / 1000, (ms % 1000) * 1000000L}};
  timerfd_settime(p->hb_timer, 0, &its, nullptr);
  int rc = 0;
  l0->RunSync([&] {
    rc = l0->Add(p->ch->fd, EPOLLIN, [this, p](uint32_t) { OnCmEvent(p); });
    if (!rc) rc = l0->Add(p->hb_timer, EPOLLIN, [this, p](uint32_t) { OnHeartbeatTimer(p); });
  });
  return rc;
}

// ------------------------------------------------------------------------------------------
// Completions, heartbeats and cm events (IO threads)

void RdmaClientSession::OnCompletion(Path* p, Conn* c, const ibv_wc& wc) {
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status != IBV_WC_WR_FLUSH_ERR) FailPath(p, ibv_wc_status_str(wc.status));
    return;
  }
  if (WrKindOf(wc.wr_id) != kWrRecv) return;  // send completions carry no state
  uint32_t slot = static_cast<uint32_t>(WrValue(wc.wr_id));
  p->hb.OnReceive();
  bool with_imm = wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM || (wc.wc_flags & IBV_WC_WITH_IMM);
  wire::RkeyRsp rk = {};
  bool have_rkey = false;
  if (wc.opcode == IBV_WC_RECV && wc.byte_len >= sizeof(rk)) {
    memcpy(&rk, c->RecvBuf(slot), sizeof(rk));
    have_rkey = le16toh(rk.type) == wire::kRkeyRsp;
  }
  if (c->PostRecv(slot)) {
    FailPath(p, "post_recv failed");
    return;
  }
  if (!with_imm) return;  // e.g. SEND_WITH_INV (we never ask for it)
  uint32_t imm = be32toh(wc.imm_data);
  switch (wire::ImmTypeOf(imm)) {
    case wire::kHbMsgImm:
      SendHeartbeat(c, wire::kHbAckImm);
      return;
    case wire::kHbAckImm:
      p->hb.OnAck(NowNs());
      return;
    case wire::kIoRspImm:
    case wire::kIoRspWInvImm: {
      uint32_t payload = wire::ImmPayload(imm);
      uint32_t buf_id = wire::RspBufId(payload);
      if (have_rkey) {
        uint32_t rb = le16toh(rk.buf_id);
        if (rb < p->rbufs.size()) p->rbufs[rb].rkey = le32toh(rk.rkey);
      }
      Complete(p, buf_id, wire::RspErrno(payload));
      return;
    }
    default:
      FailPath(p, "unknown immediate type");
  }
}

void RdmaClientSession::SendHeartbeat(Conn* c, wire::ImmType type) {
  ibv_send_wr wr = {};
  wr.wr_id = WrId(kWrHb, 0);
  wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;  // zero length, no remote address: only the imm
  wr.imm_data = htobe32(wire::MakeImm(type, 0));
  wr.send_flags = IBV_SEND_SIGNALED;
  c->PostSend(&wr);
}

void RdmaClientSession::OnHeartbeatTimer(Path* p) {
  uint64_t ticks;
  if (read(p->hb_timer, &ticks, sizeof(ticks)) < 0) return;
  if (p->state != PathState::kConnected) return;
  using V = transport::core::Heartbeat::Verdict;
  const V v = p->hb.OnTick(NowNs(), opts_.heartbeat_missed_max, &p->progress, p->inflight,
                           opts_.io_timeout_ms);
  if (v == V::kDeadMissed || v == V::kDeadStalled)
    return FailPath(p, transport::core::Heartbeat::Why(v));
  if (v != V::kSend) return;  // one heartbeat outstanding at a time
  SendHeartbeat(p->conns[0].get(), wire::kHbMsgImm);
}

void RdmaClientSession::OnCmEvent(Path* p) {
  rdma_cm_event* ev;
  while (rdma_get_cm_event(p->ch, &ev) == 0) {
    rdma_cm_event_type t = ev->event;
    rdma_ack_cm_event(ev);
    if (t == RDMA_CM_EVENT_DISCONNECTED || t == RDMA_CM_EVENT_DEVICE_REMOVAL ||
        t == RDMA_CM_EVENT_ADDR_CHANGE || t == RDMA_CM_EVENT_TIMEWAIT_EXIT ||
        t == RDMA_CM_EVENT_CONNECT_ERROR) {
      FailPath(p, rdma_event_str(t));
    }
  }
}

}  // namespace ibnbd::rdma::client
