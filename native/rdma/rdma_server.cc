// RTRS server (PROTOCOL.md §2) in user space, in the kernel's always_invalidate=N mode: one MR
// over the path's chunks, no rkey rotation (user verbs have no fast-reg), which the kernel's
// rtrs-client accepts (conn_rsp.flags without NEW_RKEY).
//
// Chunks are per path, not per session as in rtrs-srv: a request failed over to another path
// keeps its buffer id, and the path it left may still be reading file data into that buffer
// id's chunk; with one chunk per session that read overwrote the re-issued request's message
// (the guest saw EIO) or a later request's write data. The BufferFence orders the two copies.
//
// Threads: one cm thread (listener, connection set-up and tear-down; the only thread that
// reads cm events), the reaper (rdma/reaper.h: destroys dead paths' cm ids and QPs, which can
// block in the kernel), and the IoThreads loops, which receive requests, hand them to the handler
// and post the responses.
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "rdma/buffer_fence.h"
#include "rdma/rdma_common.h"
#include "rdma/reaper.h"
#include "rdma/rdma_transport.h"
#include "rdma/rtrs_wire.h"
#include "transport/fault.h"

namespace ibnbd::rdma {
namespace {

using transport::Dir;
using transport::PathState;
using transport::ServerIo;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
}

class RdmaServer;
struct SrvSession;
void RespondOnLoop(ServerIo* io, int err);

struct SrvPath;
struct Slot;

struct SrvPath {
  SrvSession* sess = nullptr;
  // request state by buffer id, per path as in rtrs-srv (ops_ids): a request failed over to
  // another path keeps its buffer id while the old path may still hold it
  std::unique_ptr<Slot[]> slots;
  uint8_t sess_uuid[16];
  uint16_t cid_num = 0;
  std::vector<std::unique_ptr<Conn>> conns;  // by cid (empty slots until connected)
  unsigned established = 0;
  uint8_t* chunks = nullptr;  // queue_depth x chunk_size, this path's alone
  size_t chunks_len = 0;
  ibv_mr* chunk_mr = nullptr;
  RegisteredBuffer tx;  // info response
  std::atomic<PathState> state{PathState::kConnecting};
  std::atomic<uint64_t> inflight{0};
  std::atomic<int> hb_missed{0};
  std::atomic<uint64_t> hb_rtt_ns{0};
  uint64_t hb_sent_ns = 0;
  int hb_timer = -1;
  std::string src, dst;
  ~SrvPath() {
    if (chunk_mr) ibv_dereg_mr(chunk_mr);
    if (chunks) munmap(chunks, chunks_len);
    if (hb_timer >= 0) close(hb_timer);
  }
};

struct Slot {
  ServerIo io;
  SrvPath* path = nullptr;
  Conn* conn = nullptr;
  wire::SgDesc desc = {};
  uint16_t flags = 0;
  uint16_t sg_cnt = 0;
  std::atomic<bool> busy{false};
};

struct SrvSession final : transport::ServerSession {
  RdmaServer* srv = nullptr;
  uint8_t paths_uuid[16];
  std::string name;
  uint64_t sid = 0;
  uint32_t qd = 0, chunk_size = 0, mem_bits = 0;
  std::unique_ptr<BufferFence> fence;  // one request per buffer id across the paths
  std::vector<SrvPath*> paths;  // live paths (owned by the server)
  bool up = false;
  std::atomic<uint64_t> inflight{0};
  const std::string& sessname() const override { return name; }
  std::string uuid() const override { return UuidString(paths_uuid); }
  std::vector<transport::PathInfo> Paths() const override;
  uint64_t id() const override { return sid; }
  void Complete(ServerIo* io, int err) override { RespondOnLoop(io, err); }
  void Close() override;
};

class RdmaServer final : public transport::Server {
 public:
  RdmaServer(Options o, transport::ServerHandler* h) : opts_(std::move(o)), handler_(h) {}
  ~RdmaServer() override { Stop(); }
  int Start() override;
  void Stop() override;
  std::vector<transport::Endpoint> Bound() const override { return bound_; }
  void SetChunk(uint32_t chunk) {
    chunk_size_ = chunk;
    max_io_ = chunk - wire::kMaxHdrSize;
  }

  mutable std::mutex mu_;  // sessions and paths

 private:
  void CmThread();
  void OnConnectRequest(rdma_cm_event* ev, std::unique_ptr<Conn>* reject_conn);
  int AcceptConn(rdma_cm_id* id, const wire::ConnReq& req, std::unique_ptr<Conn>* reject_conn);
  void ClosePathLocked(SrvPath* p);
  void NotifyDown();
  void RequestClose(SrvPath* p, const char* why);
  void CloseSession(SrvSession* s);
  void SweepZombies(bool force);
  void OnCompletion(SrvPath* p, Conn* c, const ibv_wc& wc);
  void OnInfoReq(SrvPath* p, Conn* c, const uint8_t* buf, uint32_t len);
  void OnIoReq(SrvPath* p, Conn* c, uint32_t payload);
  void StartIo(Slot* slot, uint32_t off);
  void OnHeartbeatTimer(SrvPath* p);
  static void SendImm(Conn* c, uint32_t imm);
  friend void RespondOnLoop(ServerIo* io, int err);
  friend struct SrvSession;
  static void SendResponse(Slot* s, int err);

  Options opts_;
  transport::ServerHandler* handler_;
  uint32_t chunk_size_ = 0, max_io_ = 0;
  std::vector<transport::Endpoint> bound_;
  rdma_event_channel* ch_ = nullptr;
  std::vector<rdma_cm_id*> listeners_;
  int wake_fd_ = -1;
  std::thread thread_;
  bool started_ = false, stopping_ = false;
  std::vector<SrvPath*> close_requests_;  // from loop threads, under mu_
  std::map<std::string, std::unique_ptr<SrvSession>> sessions_;  // by paths uuid (binary)
  std::vector<std::unique_ptr<SrvPath>> paths_;  // every path not yet freed
  std::vector<std::unique_ptr<SrvSession>> dead_sessions_;
  std::vector<SrvSession*> pending_down_;  // OnSessionDown to call outside mu_
  uint64_t next_sid_ = 1;
};

std::vector<transport::PathInfo> SrvSession::Paths() const {
  std::lock_guard lock(srv->mu_);
  std::vector<transport::PathInfo> out;
  for (auto* p : paths) {
    transport::PathInfo i;
    i.src = p->src;
    i.dst = p->dst;
    i.state = p->state;
    i.inflight = p->inflight;
    i.hb_rtt_ns = p->hb_rtt_ns;
    out.push_back(i);
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Listening and connection set-up (cm thread)

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
  if (!pc.private_data || pc.private_data_len < sizeof(req)) {
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

int RdmaServer::AcceptConn(rdma_cm_id* id, const wire::ConnReq& req,
                           std::unique_ptr<Conn>* reject_conn) {
  std::lock_guard lock(mu_);
  std::string key(reinterpret_cast<const char*>(req.paths_uuid), 16);
  uint16_t cid = le16toh(req.cid), cid_num = le16toh(req.cid_num);
  auto it = sessions_.find(key);
  SrvSession* s;
  if (it == sessions_.end()) {
    if (!(req.flags & wire::kFirstConn)) return -ENXIO;
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
    auto np = std::make_unique<SrvPath>();
    np->chunks_len = size_t(s->qd) * s->chunk_size;
    void* m = mmap(nullptr, np->chunks_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -ENOMEM;
    np->chunks = static_cast<uint8_t*>(m);
    np->sess = s;
    memcpy(np->sess_uuid, req.sess_uuid, 16);
    np->cid_num = cid_num;
    np->conns.resize(cid_num);
    np->slots.reset(new Slot[s->qd]);
    np->src = FormatSockaddr(rdma_get_peer_addr(id));
    np->dst = FormatSockaddr(rdma_get_local_addr(id));
    p = np.get();
    s->paths.push_back(p);
    paths_.push_back(std::move(np));
  }
  auto conn = std::make_unique<Conn>(id);
  conn->cid = cid;
  conn->owner = p;
  auto pd = PdFor(id->verbs);
  if (!pd) {
    *reject_conn = std::move(conn);
    return -ENOMEM;
  }
  Conn::Config cfg;
  // per connection: at most queue_depth responses of ≤ 3 WRs (WRITE, SEND_WITH_INV, imm) + HB
  cfg.send_depth = s->qd * 3 + 16;
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
  wire::ConnRsp rsp = {};
  rsp.magic = htole16(wire::kMagic);
  rsp.version = htole16(wire::kVersion);
  rsp.queue_depth = htole16(static_cast<uint16_t>(s->qd));
  rsp.max_io_size = htole32(max_io_);
  rsp.max_hdr_size = htole32(wire::kMaxHdrSize);
  rsp.flags = 0;  // always_invalidate=N: no NEW_RKEY
  rdma_conn_param param = {};
  param.private_data = &rsp;
  param.private_data_len = sizeof(rsp);
  param.rnr_retry_count = 7;
  param.responder_resources = 1;
  param.initiator_depth = 1;
  id->context = raw;
  if (rdma_accept(id, &param)) {
    rc = -errno;
    id->context = nullptr;
    raw->Detach();
    *reject_conn = std::move(conn);
    return rc;
  }
  p->conns[cid] = std::move(conn);
  return 0;
}

// Under mu_, on the cm thread.
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
  // the same window as the TCP server's (tests/server-stop.test.ts): a report in progress that
  // Stop() must wait for; here Stop() joins the CM thread that reports
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
    fprintf(stderr, "ibnbd: rdma server: a connection teardown is stuck in the kernel after 10 s; stopping anyway\n");
  }
  ch_ = nullptr;
  close(wake_fd_);
  wake_fd_ = -1;
}

// ------------------------------------------------------------------------------------------
// The IO path (loop threads)

void RdmaServer::SendImm(Conn* c, uint32_t imm) {
  ibv_send_wr wr = {};
  wr.wr_id = WrId(kWrHb, 0);
  wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
  wr.imm_data = htobe32(imm);
  wr.send_flags = IBV_SEND_SIGNALED;
  c->PostSend(&wr);
}

void RdmaServer::OnCompletion(SrvPath* p, Conn* c, const ibv_wc& wc) {
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status != IBV_WC_WR_FLUSH_ERR) RequestClose(p, ibv_wc_status_str(wc.status));
    return;
  }
  if (WrKindOf(wc.wr_id) != kWrRecv) return;
  uint32_t slot = static_cast<uint32_t>(WrValue(wc.wr_id));
  p->hb_missed = 0;
  if (wc.opcode == IBV_WC_RECV && !(wc.wc_flags & IBV_WC_WITH_IMM)) {
    if (c->cid == 0) OnInfoReq(p, c, c->RecvBuf(slot), wc.byte_len);
    if (c->PostRecv(slot)) RequestClose(p, "cannot post a receive");
    return;
  }
  if (c->PostRecv(slot)) {
    RequestClose(p, "cannot post a receive");
    return;
  }
  uint32_t imm = be32toh(wc.imm_data);
  switch (wire::ImmTypeOf(imm)) {
    case wire::kHbMsgImm:
      SendImm(c, wire::MakeImm(wire::kHbAckImm, 0));
      return;
    case wire::kHbAckImm:
      if (p->hb_sent_ns) p->hb_rtt_ns = NowNs() - p->hb_sent_ns;
      return;
    case wire::kIoReqImm:
      OnIoReq(p, c, wire::ImmPayload(imm));
      return;
    default:
      RequestClose(p, "unknown immediate type");
  }
}

void RdmaServer::OnInfoReq(SrvPath* p, Conn* c, const uint8_t* buf, uint32_t len) {
  wire::InfoReq req;
  if (len < sizeof(req)) return RequestClose(p, "short info request");
  memcpy(&req, buf, sizeof(req));
  if (le16toh(req.type) != wire::kInfoReq) return RequestClose(p, "not an info request");
  std::string name(req.pathname, strnlen(req.pathname, sizeof(req.pathname)));
  SrvSession* s = p->sess;
  bool first_up = false;
  {
    std::lock_guard lock(mu_);
    // every connection of the path accepted (its ESTABLISHED event may still be on its way to
    // the cm thread: the client sends the info request as soon as its own side is up)
    bool bad = p->state != PathState::kConnecting;
    for (auto& pc : p->conns) bad = bad || !pc;
    bad = bad || name.empty() || name.find('/') != std::string::npos || name.find('.') != std::string::npos;
    for (auto& [k, other] : sessions_)
      if (other.get() != s && other->name == name) bad = true;  // the kernel's -EPERM
    if (!s->name.empty() && s->name != name) bad = true;
    if (bad) {
      close_requests_.push_back(p);
      uint64_t one = 1;
      if (write(wake_fd_, &one, sizeof(one)) < 0) {
      }
      return;
    }
    s->name = name;
    p->state = PathState::kConnected;
    first_up = !s->up;
    s->up = true;
  }
  // one descriptor per ≤ 2 GiB of chunks, dividing queue_depth (the client checks qd % sg_cnt)
  uint32_t sg_cnt = 1;
  while (uint64_t(s->qd / sg_cnt) * s->chunk_size >= (1ull << 31) || s->qd % sg_cnt) sg_cnt++;
  size_t rsp_len = sizeof(wire::InfoRspHdr) + sg_cnt * sizeof(wire::SgDesc);
  if (rsp_len > p->tx.len) return RequestClose(p, "info response too large");
  wire::InfoRspHdr hdr = {htole16(wire::kInfoRsp), htole16(static_cast<uint16_t>(sg_cnt)), {}};
  memcpy(p->tx.data, &hdr, sizeof(hdr));
  uint64_t per = uint64_t(s->qd / sg_cnt) * s->chunk_size;
  for (uint32_t i = 0; i < sg_cnt; i++) {
    wire::SgDesc d = {htole64(reinterpret_cast<uintptr_t>(p->chunks) + i * per),
                      htole32(p->chunk_mr->rkey), htole32(static_cast<uint32_t>(per))};
    memcpy(p->tx.data + sizeof(hdr) + i * sizeof(d), &d, sizeof(d));
  }
  ibv_sge sge = {reinterpret_cast<uintptr_t>(p->tx.data), static_cast<uint32_t>(rsp_len), p->tx.mr->lkey};
  ibv_send_wr wr = {};
  wr.wr_id = WrId(kWrInfo, 0);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  if (c->PostSend(&wr)) return RequestClose(p, "cannot send the info response");
  // heartbeats on the service connection's loop (this one)
  p->hb_timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (p->hb_timer >= 0) {
    uint32_t ms = std::max<uint32_t>(opts_.heartbeat_interval_ms, 10);
    itimerspec its = {{ms / 1000, (ms % 1000) * 1000000L}, {ms / 1000, (ms % 1000) * 1000000L}};
    timerfd_settime(p->hb_timer, 0, &its, nullptr);
    c->loop()->Add(p->hb_timer, EPOLLIN, [this, p](uint32_t) { OnHeartbeatTimer(p); });
  }
  if (first_up) handler_->OnSessionUp(s);
}

void RdmaServer::OnHeartbeatTimer(SrvPath* p) {
  uint64_t ticks;
  if (read(p->hb_timer, &ticks, sizeof(ticks)) < 0) return;
  if (p->state != PathState::kConnected) return;
  if (p->hb_missed > static_cast<int>(opts_.heartbeat_missed_max)) return RequestClose(p, "heartbeat timeout");
  if (p->hb_missed++ != 0) return;
  p->hb_sent_ns = NowNs();
  SendImm(p->conns[0].get(), wire::MakeImm(wire::kHbMsgImm, 0));
}

void RdmaServer::OnIoReq(SrvPath* p, Conn* c, uint32_t payload) {
  SrvSession* s = p->sess;
  if (p->state != PathState::kConnected) return RequestClose(p, "IO request on a path not connected");
  uint32_t buf_id = payload >> s->mem_bits;
  uint32_t off = payload & ((1u << s->mem_bits) - 1);
  // the rtrs message must lie inside the chunk; anything else is a broken peer
  if (buf_id >= s->qd || off + sizeof(wire::MsgWrite) > s->chunk_size)
    return RequestClose(p, "IO request outside the chunks");
  Slot& slot = p->slots[buf_id];
  if (slot.busy.exchange(true)) return RequestClose(p, "buffer reused before its response");
  ServerIo& io = slot.io;
  io = ServerIo{};
  slot.path = p;
  slot.conn = c;
  slot.flags = 0;
  slot.sg_cnt = 0;
  io.session = s;
  io.loop = c->loop()->index();
  io.transport_private[0] = reinterpret_cast<uintptr_t>(&slot);
  io.transport_private[1] = buf_id;
  p->inflight++;  // keeps the path and session while the request waits or runs
  s->inflight++;
  EventLoop* loop = c->loop();
  Slot* sp = &slot;
  if (!s->fence->Enter(buf_id) &&
      !s->fence->Wait(buf_id, [this, loop, sp, off] { loop->Post([this, sp, off] { StartIo(sp, off); }); })) {
    DebugLog("server: request with buffer id " + std::to_string(buf_id) + " on the path from " + p->src +
             " waits for the same buffer id's request on another path");
    return;
  }
  StartIo(sp, off);
}

// On the loop of the request's connection, with the request holding its buffer id.
void RdmaServer::StartIo(Slot* sp, uint32_t off) {
  Slot& slot = *sp;
  SrvPath* p = slot.path;
  SrvSession* s = p->sess;
  ServerIo& io = slot.io;
  // waited for another path and this one died meanwhile: the client re-issues it elsewhere
  if (p->state != PathState::kConnected || slot.conn->dead) return SendResponse(sp, -ENOTCONN);
  uint8_t* chunk = p->chunks + size_t(io.transport_private[1]) * s->chunk_size;
  uint16_t type, usr_len;
  memcpy(&type, chunk + off, 2);
  memcpy(&usr_len, chunk + off + 2, 2);
  type = le16toh(type);
  usr_len = le16toh(usr_len);
  int err = 0;
  if (usr_len > off) {
    err = -EINVAL;
  } else if (type == wire::kMsgWrite) {
    io.dir = Dir::kWrite;
  } else if (type == wire::kMsgRead) {
    io.dir = Dir::kRead;
    wire::MsgReadHdr h;
    if (off + sizeof(h) > s->chunk_size) {
      err = -EINVAL;
    } else {
      memcpy(&h, chunk + off, sizeof(h));
      slot.flags = le16toh(h.flags);
      slot.sg_cnt = le16toh(h.sg_cnt);
      if (slot.sg_cnt > 1 || off + sizeof(h) + slot.sg_cnt * sizeof(wire::SgDesc) > s->chunk_size) {
        err = -EINVAL;
      } else if (slot.sg_cnt == 1) {
        memcpy(&slot.desc, chunk + off + sizeof(h), sizeof(slot.desc));
        // the answer is the data area the handler fills: exactly the length the client asked
        if (le32toh(slot.desc.len) != off - usr_len) err = -EINVAL;
      }
    }
  } else {
    err = -EINVAL;
  }
  if (!err && usr_len > transport::kMaxUsrLen) err = -EMSGSIZE;
  if (err) {
    slot.sg_cnt = 0;
    SendResponse(sp, err);
    return;
  }
  io.usr_len = usr_len;
  io.data_len = off - usr_len;
  io.usr = chunk + io.data_len;
  io.data = chunk;
  handler_->OnRequest(&io);
}

void RespondOnLoop(ServerIo* io, int err) {
  Slot* s = reinterpret_cast<Slot*>(io->transport_private[0]);
  EventLoop& loop = IoThreads::Get().loop(io->loop);
  if (loop.InLoop()) {
    RdmaServer::SendResponse(s, err);
  } else {
    loop.Post([s, err] { RdmaServer::SendResponse(s, err); });
  }
}

// On the loop of the connection the request came in on.
void RdmaServer::SendResponse(Slot* s, int err) {
  SrvPath* p = s->path;
  Conn* c = s->conn;
  SrvSession* sess = p->sess;
  uint32_t buf_id = static_cast<uint32_t>(s->io.transport_private[1]);
  bool read_data = s->io.dir == Dir::kRead && err == 0 && s->sg_cnt == 1;
  // As rtrs-srv: the client's buffer is invalidated whatever the errno. The kernel client, given
  // a plain IO_RSP for a NEED_INVAL read (an EPERM'd OPEN), invalidates locally with a WARN and
  // its map_device write never returned.
  bool need_inv = s->io.dir == Dir::kRead && s->sg_cnt == 1 && (s->flags & wire::kFlagNeedInval);
  wire::SgDesc desc = s->desc;
  uint8_t* chunk = p->chunks + size_t(buf_id) * sess->chunk_size;
  // the slot may be reused as soon as the client sees the immediate: release it first; the
  // request's file IO is over, so a copy of it waiting on another path may run
  s->busy.store(false);
  sess->fence->Release(buf_id);
  if (!c->dead && p->state == PathState::kConnected) {
    ibv_sge sge = {reinterpret_cast<uintptr_t>(chunk), le32toh(desc.len), p->chunk_mr->lkey};
    ibv_send_wr wrs[3] = {};
    int n = 0;
    if (read_data && sge.length) {
      wrs[n].opcode = IBV_WR_RDMA_WRITE;
      wrs[n].sg_list = &sge;
      wrs[n].num_sge = 1;
      wrs[n].wr.rdma.remote_addr = le64toh(desc.addr);
      wrs[n].wr.rdma.rkey = le32toh(desc.key);
      n++;
    }
    if (need_inv) {
      wrs[n].opcode = IBV_WR_SEND_WITH_INV;
      wrs[n].invalidate_rkey = le32toh(desc.key);
      n++;
    }
    wrs[n].opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wrs[n].imm_data = htobe32(wire::MakeImm(need_inv ? wire::kIoRspWInvImm : wire::kIoRspImm,
                                            wire::RspPayload(err, buf_id)));
    wrs[n].send_flags = IBV_SEND_SIGNALED;
    n++;
    for (int i = 0; i < n; i++) {
      wrs[i].wr_id = WrId(kWrRsp, buf_id);
      wrs[i].next = i + 1 < n ? &wrs[i + 1] : nullptr;
    }
    if (c->PostSend(&wrs[0])) {
      // the cm thread tears the path down; nothing else to do here
      rdma_disconnect(c->id());
    }
  }
  p->inflight--;
  sess->inflight--;
}

}  // namespace

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
  auto srv = std::make_unique<RdmaServer>(std::move(options), handler);
  srv->SetChunk(chunk);
  return srv;
}

}  // namespace ibnbd::rdma
