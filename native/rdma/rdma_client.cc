// RTRS client (PROTOCOL.md §2) in user space: a session of paths, each path = one service
// connection (cid 0: info exchange, heartbeats) + one IO connection per IO thread, so that a
// request is posted and completed on the thread that submitted it.
//
// No fast-reg MRs in user space: data is described by plain MRs — guest memory regions the vhost
// layer registered (RegisterMemory), or the per-permit bounce buffers otherwise. See
// docs/rdma-transport.md.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <thread>
#include <map>
#include <mutex>
#include <shared_mutex>

#include "rdma/bounce_slots.h"
#include "rdma/rdma_common.h"
#include "rdma/reaper.h"
#include "rdma/rdma_transport.h"
#include "rdma/rtrs_wire.h"

namespace ibnbd::rdma {
namespace {

using transport::ClientIo;
using transport::Dir;
using transport::PathState;

constexpr uint32_t kIuSize = 1024;  // usr msg (≤ 512) + rtrs read msg with one descriptor
constexpr int kStepTimeoutMs = 5000;
constexpr uint32_t kMaxWrsPerRequest = 2;  // beyond that the data goes through the bounce buffer

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
}

struct RemoteBuf {
  uint64_t addr = 0;
  uint32_t rkey = 0;
};

class RdmaClientSession;

struct Path {
  transport::PathSpec spec;
  size_t index = 0;
  uint8_t sess_uuid[16];
  uint16_t recon_cnt = 0;
  rdma_event_channel* ch = nullptr;
  std::vector<std::unique_ptr<Conn>> conns;  // [0] service, [1..] IO
  std::vector<RemoteBuf> rbufs;              // by buf_id; rkey rotated by RKEY_RSP
  RegisteredBuffer iu;                       // per buf_id: usr msg + rtrs msg
  BounceSlots bounce;                        // per buf_id: max_io_size bytes, registered on use
  RegisteredBuffer info;                     // info_req / info_rsp
  std::atomic<PathState> state{PathState::kConnecting};
  std::atomic<uint64_t> inflight{0};
  std::atomic<uint64_t> hb_rtt_ns{0};
  std::atomic<uint64_t> requests{0};   // completed here (PathInfo::requests)
  std::atomic<uint64_t> failovers{0};  // moved away from here when it died
  std::atomic<int> hb_missed{0};
  uint64_t hb_sent_ns = 0;
  int hb_timer = -1;
  mutable std::mutex info_mu;  // src/dst, rewritten on reconnect
  std::string src, dst;
  bool reconnect_wanted = false;  // under the session's reconnect_mu_
  int reconnect_attempts = 0;
};

struct ConnRspOut {
  wire::ConnRsp rsp = {};
  bool have = false;
};

struct Req {
  ClientIo* io = nullptr;
  Path* path = nullptr;
  EventLoop* loop = nullptr;
  bool bounce = false;
};

struct Region {
  uintptr_t addr = 0;
  size_t len = 0;
  uint64_t handle = 0;
  std::vector<ibv_mr*> mrs;  // by path index (nullptr when that path is not set up)
};

// One scatter element resolved to a local key.
struct LocalSeg {
  uint64_t addr;
  uint32_t len;
  uint32_t lkey;
  uint32_t rkey;
};

class RdmaClientSession final : public transport::ClientSession,
                                public std::enable_shared_from_this<RdmaClientSession> {
 public:
  explicit RdmaClientSession(Options o) : opts_(std::move(o)) { RandomUuid(paths_uuid_); }
  ~RdmaClientSession() override { Close(); }

  int Connect(int timeout_ms) override;
  void Submit(ClientIo* io) override;
  uint32_t queue_depth() const override { return qd_; }
  uint32_t max_io_size() const override { return max_io_; }
  bool connected() const override {
    for (auto& p : paths_)
      if (p->state == PathState::kConnected) return true;
    return false;
  }
  std::vector<transport::PathInfo> Paths() const override;
  std::string uuid() const override { return UuidString(paths_uuid_); }
  void Close() override;
  int RegisterMemory(void* addr, size_t len, uint64_t* handle) override;
  void UnregisterMemory(uint64_t handle) override;
  uint64_t bounce_count() const override { return bounce_count_; }

 private:
  int ConnectPath(Path* p, int timeout_ms);
  int ConnectConn(Path* p, uint16_t cid, uint16_t cid_num, int timeout_ms);
  int InfoExchange(Path* p, int timeout_ms);
  int StartPathLoops(Path* p);
  void TeardownPath(Path* p);
  void ReconnectThread();
  // moved_from: the dead path the request was in flight on (failover), else nullptr
  void StartIo(ClientIo* io, uint32_t buf_id, EventLoop* loop, Path* moved_from = nullptr);
  int PostRequest(Path* p, Conn* c, ClientIo* io, uint32_t buf_id, bool* bounced);
  bool Resolve(Path* p, const ClientIo* io, std::vector<LocalSeg>* segs);
  Path* ChoosePath();
  void OnCompletion(Path* p, Conn* c, const ibv_wc& wc);
  void Complete(Path* p, uint32_t buf_id, int err);
  void ReleasePermit(uint32_t buf_id);
  void FailPath(Path* p, const char* why);
  void OnHeartbeatTimer(Path* p);
  void SendHeartbeat(Conn* c, wire::ImmType type);
  void OnCmEvent(Path* p);
  void Finish(ClientIo* io, int err, EventLoop* loop);

  Options opts_;
  uint8_t paths_uuid_[16];
  uint32_t qd_ = 0, max_io_ = 0, chunk_size_ = 0, mem_bits_ = 0, server_qd_ = 0;
  bool new_rkey_ = false;
  std::vector<std::unique_ptr<Path>> paths_;
  std::atomic<bool> closed_{false};
  std::atomic<uint32_t> rr_{0};

  std::mutex permit_mu_;
  std::vector<uint32_t> free_;
  std::deque<std::pair<ClientIo*, EventLoop*>> waiters_;
  std::vector<Req> reqs_;

  mutable std::shared_mutex mem_mu_;
  std::map<uintptr_t, Region> regions_;  // by start address
  uint64_t next_handle_ = 1;
  std::atomic<uint64_t> bounce_count_{0};

  // RTRS error recovery: a failed path is rebuilt after reconnect_delay_ms, up to
  // max_reconnect_attempts times (-1 = forever, 0 = never), by this thread.
  std::mutex reconnect_mu_;
  std::condition_variable reconnect_cv_;
  std::thread reconnect_thread_;
};

// ------------------------------------------------------------------------------------------
// Connection establishment

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
  if (connected() && opts_.max_reconnect_attempts != 0) {
    // as RTRS: once the session is open, paths that could not connect keep trying
    std::lock_guard lock(reconnect_mu_);
    for (auto& p : paths_) {
      if (p->state != PathState::kClosed) continue;
      p->state = PathState::kReconnecting;
      p->reconnect_wanted = true;
    }
  }
  reconnect_thread_ = std::thread([this] { ReconnectThread(); });
  return connected() ? 0 : last;
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
  cfg.send_depth = qd * kMaxWrsPerRequest + 16;
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
  size_t rsp_len = sizeof(wire::InfoRspHdr) + sizeof(wire::SgDesc) * size_t(server_qd_);
  int rc = p->info.Allocate(c0->pd(), std::max(rsp_len, sizeof(wire::InfoReq)) + sizeof(wire::InfoReq),
                            IBV_ACCESS_LOCAL_WRITE);
  if (rc) return rc;
  uint8_t* rsp_buf = p->info.data;
  uint8_t* req_buf = p->info.data + p->info.len - sizeof(wire::InfoReq);
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
  ibv_sge ssge = {reinterpret_cast<uintptr_t>(req_buf), sizeof(*req), p->info.mr->lkey};
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
  // process_info_rsp's rules: descriptors covering exactly queue_depth chunks
  wire::InfoRspHdr hdr;
  if (got_len < sizeof(hdr)) return -EPROTO;
  memcpy(&hdr, rsp_buf, sizeof(hdr));
  uint32_t sg_cnt = le16toh(hdr.sg_cnt);
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
      for (uint32_t i = qd_; i-- > 0;) free_.push_back(i);
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
  p->hb_missed = 0;
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

void RdmaClientSession::ReconnectThread() {
  std::unique_lock lock(reconnect_mu_);
  for (;;) {
    reconnect_cv_.wait(lock, [&] {
      if (closed_) return true;
      for (auto& p : paths_)
        if (p->reconnect_wanted) return true;
      return false;
    });
    if (closed_) return;
    // RTRS waits reconnect_delay before each attempt
    reconnect_cv_.wait_for(lock, std::chrono::milliseconds(opts_.reconnect_delay_ms), [&] { return closed_.load(); });
    if (closed_) return;
    for (auto& up : paths_) {
      Path* p = up.get();
      if (!p->reconnect_wanted || closed_) continue;
      lock.unlock();
      // every IO thread past any request that picked this path before it failed
      IoThreads& pool = IoThreads::Get();
      for (unsigned i = 0; i < pool.size(); i++) pool.loop(i).RunSync([] {});
      TeardownPath(p);
      p->state = PathState::kReconnecting;
      int rc = ConnectPath(p, 5000);
      lock.lock();
      DebugLog("client: reconnect attempt (recon_cnt " + std::to_string(p->recon_cnt) + ") of path " +
               p->spec.dst.addr + (rc ? std::string(": ") + strerror(-rc) : std::string(": connected")));
      if (rc == 0) {
        p->reconnect_wanted = false;
        p->reconnect_attempts = 0;
      } else {
        p->state = PathState::kReconnecting;
        if (opts_.max_reconnect_attempts >= 0 && ++p->reconnect_attempts >= opts_.max_reconnect_attempts) {
          p->reconnect_wanted = false;  // given up: the path stays closed
          p->state = PathState::kClosed;
        }
      }
    }
  }
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
// Memory registration (zero copy)

int RdmaClientSession::RegisterMemory(void* addr, size_t len, uint64_t* handle) {
  if (!addr || !len) return -EINVAL;
  std::unique_lock lock(mem_mu_);
  Region r;
  r.addr = reinterpret_cast<uintptr_t>(addr);
  r.len = len;
  r.handle = next_handle_++;
  r.mrs.resize(paths_.size(), nullptr);
  for (auto& p : paths_) {
    if (p->conns.empty()) continue;
    r.mrs[p->index] = ibv_reg_mr(p->conns[0]->pd(), addr, len,
                                 IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (!r.mrs[p->index]) {
      int e = errno ? -errno : -ENOMEM;
      for (auto* mr : r.mrs)
        if (mr) ibv_dereg_mr(mr);
      return e;
    }
  }
  *handle = r.handle;
  regions_[r.addr] = std::move(r);
  return 0;
}

void RdmaClientSession::UnregisterMemory(uint64_t handle) {
  std::unique_lock lock(mem_mu_);
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    if (it->second.handle != handle) continue;
    for (auto* mr : it->second.mrs)
      if (mr) ibv_dereg_mr(mr);
    regions_.erase(it);
    return;
  }
}

// Resolves the request's data to registered segments (adjacent iovecs merged). False when some
// byte lies outside every registered region: then the bounce buffer carries it.
bool RdmaClientSession::Resolve(Path* p, const ClientIo* io, std::vector<LocalSeg>* segs) {
  segs->clear();
  std::shared_lock lock(mem_mu_);
  if (regions_.empty()) return io->data_len == 0;
  for (uint32_t i = 0; i < io->iov_cnt; i++) {
    uintptr_t a = reinterpret_cast<uintptr_t>(io->iov[i].iov_base);
    size_t n = io->iov[i].iov_len;
    if (n == 0) continue;
    auto it = regions_.upper_bound(a);
    if (it == regions_.begin()) return false;
    --it;
    const Region& r = it->second;
    ibv_mr* mr = p->index < r.mrs.size() ? r.mrs[p->index] : nullptr;
    if (!mr || a + n > r.addr + r.len) return false;
    if (!segs->empty() && segs->back().addr + segs->back().len == a &&
        segs->back().lkey == mr->lkey) {
      segs->back().len += static_cast<uint32_t>(n);
    } else {
      segs->push_back({a, static_cast<uint32_t>(n), mr->lkey, mr->rkey});
    }
  }
  return true;
}

// ------------------------------------------------------------------------------------------
// The IO path

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
  {
    std::lock_guard lock(permit_mu_);
    if (free_.empty()) {
      waiters_.emplace_back(io, loop);
      return;
    }
    buf_id = free_.back();
    free_.pop_back();
  }
  StartIo(io, buf_id, loop);
}

Path* RdmaClientSession::ChoosePath() {
  Path* best = nullptr;
  size_t n = paths_.size();
  if (opts_.mp_policy == "round-robin") {
    uint32_t start = rr_++;
    for (size_t i = 0; i < n; i++) {
      Path* p = paths_[(start + i) % n].get();
      if (p->state == PathState::kConnected) return p;
    }
    return nullptr;
  }
  for (auto& up : paths_) {
    Path* p = up.get();
    if (p->state != PathState::kConnected) continue;
    if (!best) {
      best = p;
    } else if (opts_.mp_policy == "min-latency" ? p->hb_rtt_ns < best->hb_rtt_ns
                                                : p->inflight < best->inflight) {
      best = p;
    }
  }
  return best;
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
    p->inflight++;
    bool bounced = false;
    int rc = PostRequest(p, c, io, buf_id, &bounced);
    r.bounce = bounced;
    if (rc == 0) return;
    r.io = nullptr;
    p->inflight--;
    FailPath(p, "post_send failed");
  }
}

int RdmaClientSession::PostRequest(Path* p, Conn* c, ClientIo* io, uint32_t buf_id, bool* bounced) {
  uint8_t* iu = p->iu.data + size_t(buf_id) * kIuSize;
  uint32_t lkey_iu = p->iu.mr->lkey;
  thread_local std::vector<LocalSeg> segs;  // per IO thread: no allocation per request
  bool zero_copy = Resolve(p, io, &segs);
  uint8_t* bounce = p->bounce.slot(buf_id);
  auto use_bounce = [&] {
    ibv_mr* mr = p->bounce.mr(buf_id);
    if (!mr) return false;
    *bounced = true;
    bounce_count_++;
    segs.assign(1, {reinterpret_cast<uintptr_t>(bounce), io->data_len, mr->lkey, mr->rkey});
    return true;
  };
  memcpy(iu, io->usr, io->usr_len);
  uint32_t iu_len = io->usr_len;
  uint32_t remote_off = 0;
  if (io->dir == Dir::kWrite) {
    // the data SGEs then the IU fill the chunk from offset 0: [data][usr][rtrs write msg]
    if (io->data_len && (!zero_copy || (segs.size() + 1 + c->max_send_sge() - 1) / c->max_send_sge() >
                                            kMaxWrsPerRequest)) {
      size_t off = 0;
      for (uint32_t i = 0; i < io->iov_cnt; i++) {
        memcpy(bounce + off, io->iov[i].iov_base, io->iov[i].iov_len);
        off += io->iov[i].iov_len;
      }
      if (!use_bounce()) return -ENOMEM;
    }
    wire::MsgWrite m = {htole16(wire::kMsgWrite), htole16(io->usr_len)};
    memcpy(iu + iu_len, &m, sizeof(m));
    iu_len += sizeof(m);
  } else {
    // the server RDMA-writes into one client buffer: contiguous registered memory or bounce
    if (io->data_len && (!zero_copy || segs.size() != 1) && !use_bounce()) return -ENOMEM;
    wire::MsgReadHdr m = {htole16(wire::kMsgRead), htole16(io->usr_len), 0,
                          htole16(io->data_len ? 1 : 0)};
    memcpy(iu + iu_len, &m, sizeof(m));
    iu_len += sizeof(m);
    if (io->data_len) {
      wire::SgDesc d = {htole64(segs[0].addr), htole32(segs[0].rkey), htole32(io->data_len)};
      memcpy(iu + iu_len, &d, sizeof(d));
      iu_len += sizeof(d);
    }
    remote_off = io->data_len;  // the chunk's first data_len bytes are the server's to fill
    segs.clear();
  }
  if (io->data_len + iu_len > chunk_size_) return -EMSGSIZE;
  segs.push_back({reinterpret_cast<uintptr_t>(iu), iu_len, lkey_iu, 0});

  uint32_t max_sge = c->max_send_sge();
  ibv_sge sges[kMaxWrsPerRequest * 32];
  ibv_send_wr wrs[kMaxWrsPerRequest];
  size_t nwr = (segs.size() + max_sge - 1) / max_sge;
  if (nwr > kMaxWrsPerRequest || segs.size() > sizeof(sges) / sizeof(sges[0])) return -EMSGSIZE;
  const RemoteBuf& rb = p->rbufs[buf_id];
  uint64_t raddr = rb.addr + remote_off;
  size_t s = 0;
  for (size_t w = 0; w < nwr; w++) {
    ibv_send_wr& wr = wrs[w];
    memset(&wr, 0, sizeof(wr));
    wr.sg_list = &sges[s];
    uint32_t bytes = 0;
    for (uint32_t k = 0; k < max_sge && s < segs.size(); k++, s++) {
      sges[s] = {segs[s].addr, segs[s].len, segs[s].lkey};
      bytes += segs[s].len;
      wr.num_sge++;
    }
    wr.wr.rdma.remote_addr = raddr;
    wr.wr.rdma.rkey = rb.rkey;
    raddr += bytes;
    wr.next = w + 1 < nwr ? &wrs[w + 1] : nullptr;
    if (w + 1 < nwr) {
      wr.opcode = IBV_WR_RDMA_WRITE;
      wr.wr_id = WrId(kWrReq, buf_id);
    } else {
      // the immediate points at the rtrs message: buf_id above mem_bits, its chunk offset below
      wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
      wr.imm_data = htobe32(wire::MakeImm(
          wire::kIoReqImm, (buf_id << mem_bits_) | (io->data_len + io->usr_len)));
      wr.send_flags = IBV_SEND_SIGNALED;
      wr.wr_id = WrId(kWrReq, buf_id);
    }
  }
  return c->PostSend(&wrs[0]);
}

void RdmaClientSession::OnCompletion(Path* p, Conn* c, const ibv_wc& wc) {
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status != IBV_WC_WR_FLUSH_ERR) FailPath(p, ibv_wc_status_str(wc.status));
    return;
  }
  if (WrKindOf(wc.wr_id) != kWrRecv) return;  // send completions carry no state
  uint32_t slot = static_cast<uint32_t>(WrValue(wc.wr_id));
  p->hb_missed = 0;
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
      if (p->hb_sent_ns) p->hb_rtt_ns = NowNs() - p->hb_sent_ns;
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

void RdmaClientSession::Complete(Path* p, uint32_t buf_id, int err) {
  if (buf_id >= reqs_.size()) {
    FailPath(p, "response for an unknown buffer id");
    return;
  }
  Req& r = reqs_[buf_id];
  ClientIo* io = r.io;
  if (!io || r.path != p) return;  // a late answer on a path we already gave up
  if (io->dir == Dir::kRead && r.bounce && err == 0) {
    const uint8_t* src = p->bounce.slot(buf_id);
    size_t off = 0;
    for (uint32_t i = 0; i < io->iov_cnt; i++) {
      memcpy(io->iov[i].iov_base, src + off, io->iov[i].iov_len);
      off += io->iov[i].iov_len;
    }
  }
  r.io = nullptr;
  p->inflight--;
  p->requests.fetch_add(1, std::memory_order_relaxed);
  ReleasePermit(buf_id);
  io->done(io, err);
}

void RdmaClientSession::ReleasePermit(uint32_t buf_id) {
  ClientIo* next = nullptr;
  EventLoop* loop = nullptr;
  {
    std::lock_guard lock(permit_mu_);
    if (waiters_.empty()) {
      free_.push_back(buf_id);
      return;
    }
    std::tie(next, loop) = waiters_.front();
    waiters_.pop_front();
  }
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

// A path is lost: its QPs go to the error state; every request on it is re-issued on another
// connected path with the same buffer id (RTRS failover) or fails with -EIO.
void RdmaClientSession::FailPath(Path* p, const char* why) {
  PathState expected = PathState::kConnected;
  if (!p->state.compare_exchange_strong(expected, PathState::kClosed)) return;
  {
    std::lock_guard lock(p->info_mu);
    SetLastError(std::string("path ") + p->dst + " failed: " + why);
  }
  for (auto& c : p->conns) rdma_disconnect(c->id());
  if (!connected() && opts_.on_link_event) opts_.on_link_event(transport::LinkEvent::kDisconnected);
  if (!closed_ && opts_.max_reconnect_attempts != 0) {
    std::lock_guard lock(reconnect_mu_);
    p->reconnect_wanted = true;
    p->state = PathState::kReconnecting;
    reconnect_cv_.notify_all();
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
        if (!self->closed_ && self->connected()) {
          self->StartIo(io, b, loop, p);  // failover, same permit
        } else {
          self->ReleasePermit(b);
          io->done(io, self->closed_ ? -ECONNABORTED : -EIO);
        }
      }
    });
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
  // RTRS: more than 5 intervals without any receive = the peer is dead
  if (p->hb_missed > static_cast<int>(opts_.heartbeat_missed_max)) {
    FailPath(p, "heartbeat timeout");
    return;
  }
  if (p->hb_missed++ != 0) return;  // one heartbeat outstanding at a time
  p->hb_sent_ns = NowNs();
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
    i.hb_rtt_ns = p->hb_rtt_ns;
    i.requests = p->requests.load(std::memory_order_relaxed);
    i.failovers = p->failovers.load(std::memory_order_relaxed);
    out.push_back(i);
  }
  return out;
}

void RdmaClientSession::Close() {
  if (closed_.exchange(true)) return;
  {
    std::lock_guard lock(reconnect_mu_);
    reconnect_cv_.notify_all();
  }
  if (reconnect_thread_.joinable()) reconnect_thread_.join();
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
  {
    std::lock_guard lock(permit_mu_);
    for (auto& [io, loop] : waiters_) {
      ClientIo* w = io;
      loop->Post([w] { w->done(w, -ECONNABORTED); });
    }
    waiters_.clear();
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

}  // namespace

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
  for (auto& p : options.paths) {
    sockaddr_storage ss;
    socklen_t len;
    if ((*err = ParseEndpoint(p.dst, &ss, &len)) || (p.src && (*err = ParseEndpoint(*p.src, &ss, &len)))) {
      SetLastError("invalid RDMA address " + p.dst.kind + ":" + p.dst.addr + ": " + LastRdmaError());
      return nullptr;
    }
  }
  if ((*err = CheckRdmaDevice())) return nullptr;
  return std::make_shared<RdmaClientSession>(std::move(options));
}

}  // namespace ibnbd::rdma
