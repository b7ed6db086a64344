// Private to the RDMA server (server_session.cc, server_path.cc): the server, its sessions, their
// paths and the per-buffer-id request state. The RTRS server of Linux
// drivers/infiniband/ulp/rtrs/rtrs-srv.c is the model, in the kernel's always_invalidate=N mode:
// one MR over the path's chunks, no rkey rotation (user verbs have no fast-reg), which the
// kernel's rtrs-client accepts (conn_rsp.flags without NEW_RKEY).
//
// Chunks are per path, not per session as in rtrs-srv: a request failed over to another path
// keeps its buffer id, and the path it left may still be reading file data into that buffer id's
// chunk; with one chunk per session that read overwrote the re-issued request's message (the
// guest saw EIO) or a later request's write data. The BufferFence orders the two copies.
// docs/rdma-transport.md, "Failover on the server", has the story.
//
// Locks: RdmaServer::mu_ guards the server's sessions, paths, close requests and pending down
// reports, each session's path list, name and up flag, each path's connection slots and
// `established` count, and a path's state changes (the state is read without it, an atomic). The
// cm thread, Stop() and the IoThreads loops (OnInfoReq(), RequestClose()) take it. SweepZombies()
// and AcceptConn() wait for the loops (RunSync) only without it: a loop may be
// waiting for it. The request state (Slot) has no lock: a slot belongs to its
// request, on the loop of its connection, and the session's BufferFence lets one request per
// buffer id run at a time.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "transport/core/liveness.h"
#include "transport/rdma/buffer_fence.h"
#include "transport/rdma/common.h"
#include "transport/rdma/rtrs_wire.h"

namespace ibnbd::rdma::server {

using transport::Dir;
using transport::PathState;
using transport::ServerIo;

class RdmaServer;
struct SrvSession;
// server_path.cc: sends the response on the loop of the connection the request came in on.
void RespondOnLoop(ServerIo* io, int err);

struct Slot;

struct SrvPath {
  SrvSession* sess = nullptr;
  // request state by buffer id, per path as in rtrs-srv (ops_ids): a request failed over to
  // another path keeps its buffer id while the old path may still hold it
  std::unique_ptr<Slot[]> slots;
  uint8_t sess_uuid[16];
  uint16_t cid_num = 0;
  std::vector<std::unique_ptr<Conn>> conns;  // by cid (empty slots until connected), under mu_
  unsigned established = 0;                  // under mu_
  uint8_t* chunks = nullptr;  // queue_depth x chunk_size, this path's alone
  size_t chunks_len = 0;
  ibv_mr* chunk_mr = nullptr;
  RegisteredBuffer tx;  // info response
  // set with cid 0's accept when the client asked to authenticate and this server has keys
  uint64_t born_ns = 0;  // made (AdmitConn): a path still connecting past the handshake timeout closes
  bool auth = false;
  bool knows_refusal = false;  // cid 0's conn_req had kKnowsRefusal (rtrs_wire.h)
  uint8_t auth_nonce[32] = {};
  std::atomic<PathState> state{PathState::kConnecting};
  std::atomic<uint64_t> inflight{0};
  std::atomic<uint64_t> requests{0};  // received on this path (PathInfo::requests, the metrics)
  transport::core::Heartbeat hb;  // misses and round trip (core/liveness.h)
  int hb_timer = -1;        // set by the info exchange, on loop 0
  std::string src, dst;
  // on the reaper, with the connections (SweepZombies())
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
  std::string name;  // set under mu_ by the first info request
  uint64_t sid = 0;
  uint32_t qd = 0, chunk_size = 0, mem_bits = 0;
  std::unique_ptr<BufferFence> fence;  // one request per buffer id across the paths
  std::vector<SrvPath*> paths;  // live paths (owned by the server), under mu_
  bool up = false;              // under mu_
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

  mutable std::mutex mu_;  // sessions and paths (see the top of this file)

 private:
  // server_session.cc: the cm thread, accepting connections, closing paths and sessions
  void CmThread();
  void OnConnectRequest(rdma_cm_event* ev, std::unique_ptr<Conn>* reject_conn);
  int AcceptConn(rdma_cm_id* id, const wire::ConnReq& req, std::unique_ptr<Conn>* reject_conn);
  int AdmitConn(rdma_cm_id* id, const wire::ConnReq& req, SrvPath** out);
  void ClosePathLocked(SrvPath* p);
  void NotifyDown();
  void RequestClose(SrvPath* p, const char* why);
  void CloseSession(SrvSession* s);
  void SweepZombies(bool force);
  void ExpireHandshakesLocked();
  uint64_t handshake_expired_ = 0, handshake_evicted_ = 0, handshake_logged_ns_ = 0;
  // server_path.cc: a path's traffic on the loops
  void OnCompletion(SrvPath* p, Conn* c, const ibv_wc& wc);
  void OnInfoReq(SrvPath* p, Conn* c, const uint8_t* buf, uint32_t len);
  bool ProofHolds(const SrvPath* p, const wire::InfoReq& req, const uint8_t* tail_buf, const std::string& name,
                  std::string* secret) const;
  void RefuseAuth(SrvPath* p, Conn* c);
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
  uint64_t reserved_bytes_ = 0;  // chunks_len of every path in paths_ (mu_): --max-buffer-memory
  std::vector<SrvSession*> pending_down_;  // OnSessionDown to call outside mu_
  uint64_t next_sid_ = 1;
};

}  // namespace ibnbd::rdma::server
