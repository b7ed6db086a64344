// Private to the RDMA client (client_session.cc, client_path.cc, client_io.cc): the session class
// and the state of its paths and requests. The RTRS client of Linux
// drivers/infiniband/ulp/rtrs/rtrs-clt.c is the model: a session of paths, each path = one
// service connection (cid 0: info exchange, heartbeats) + one IO connection per IO thread, so
// that a request is posted and completed on the thread that submitted it.
//
// Which thread touches what, and under which lock (the members below say the same):
// - paths_ is appended to only by Connect() (under mem_mu_, which RegisterMemory() holds while it
//   walks the paths) and read without a lock.
// - A Path's connections and buffers are built by the thread connecting it (Connect()'s caller or
//   the reconnect thread) and torn down by that thread or by Close(), without a lock: the loops
//   use them while the path is kConnected, and before a rebuild every loop is let finish what it
//   had started (Redial(), on the core::Reconnector's thread). Its counters are atomics; src/dst
//   are under its info_mu; the reconnect schedule is the reconnector's (its own lock); hb is
//   atomic (core::Heartbeat).
// - Permits: the pool's own mutex (core/permits.h); reqs_ is sized once (under permit_mu_) by the
//   first path to connect, then an entry is touched only on its request's loop (Req::loop).
// - Registered regions: regions_, their MRs and next_handle_ under mem_mu_ (shared for lookups).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "transport/core/liveness.h"
#include "transport/core/path_choice.h"
#include "transport/core/permits.h"
#include "transport/core/reconnector.h"
#include "transport/rdma/bounce_slots.h"
#include "transport/rdma/common.h"
#include "transport/rdma/rtrs_wire.h"

namespace ibnbd::rdma::client {

using transport::ClientIo;
using transport::Dir;
using transport::PathState;

constexpr uint32_t kIuSize = 1024;  // usr msg (≤ 512) + rtrs read msg with one descriptor
constexpr uint32_t kMaxWrsPerRequest = 2;  // beyond that the data goes through the bounce buffer

// One of the server's chunks, as its info response described it.
struct RemoteBuf {
  uint64_t addr = 0;
  uint32_t rkey = 0;
};

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
  uint8_t server_nonce[32] = {};             // from cid 0's conn_rsp when the path authenticates
  std::atomic<PathState> state{PathState::kConnecting};
  std::atomic<uint64_t> inflight{0};
  transport::core::ProgressClock progress;  // io_timeout (core/liveness.h)
  std::atomic<uint64_t> requests{0};   // completed here (PathInfo::requests)
  std::atomic<uint64_t> failovers{0};  // moved away from here when it died
  transport::core::Heartbeat hb;  // misses, round trip (core/liveness.h)
  int hb_timer = -1;
  mutable std::mutex info_mu;  // src/dst, rewritten on reconnect
  std::string src, dst;
};

// A permit (buffer id) in use: the request holding it and where it runs. Only on `loop`.
struct Req {
  ClientIo* io = nullptr;
  Path* path = nullptr;
  EventLoop* loop = nullptr;
  bool bounce = false;
};

// A memory region registered through RegisterMemory(), under mem_mu_.
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
  explicit RdmaClientSession(Options o) : opts_(std::move(o)) {
    transport::core::ParseMpPolicy(opts_.mp_policy, &policy_);  // checked by the factory
    RandomUuid(paths_uuid_);
  }
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
  // client_session.cc: path choice, permits, failover
  Path* ChoosePath();
  // moved_from: the dead path the request was in flight on (failover), else nullptr
  void StartIo(ClientIo* io, uint32_t buf_id, EventLoop* loop, Path* moved_from = nullptr);
  void ReleasePermit(uint32_t buf_id);
  void FailPath(Path* p, const char* why);
  void Finish(ClientIo* io, int err, EventLoop* loop);

  // client_path.cc: one path's connections, info exchange, completions, heartbeats, cm events,
  // teardown and reconnect
  int ConnectPath(Path* p, int timeout_ms);
  int ConnectConn(Path* p, uint16_t cid, uint16_t cid_num, int timeout_ms);
  void AuthFailed(Path* p, const char* why);
  int InfoExchange(Path* p, int timeout_ms);
  int StartPathLoops(Path* p);
  void TeardownPath(Path* p);
  int Redial(Path* p);  // the reconnector's dial hook, on its thread
  void OnCompletion(Path* p, Conn* c, const ibv_wc& wc);
  void OnHeartbeatTimer(Path* p);
  void SendHeartbeat(Conn* c, wire::ImmType type);
  void OnCmEvent(Path* p);

  // client_io.cc: a request's data (registered memory or bounce), its post, its completion
  int PostRequest(Path* p, Conn* c, ClientIo* io, uint32_t buf_id, bool* bounced);
  bool Resolve(Path* p, const ClientIo* io, std::vector<LocalSeg>* segs);
  void Complete(Path* p, uint32_t buf_id, int err);

  Options opts_;
  uint8_t paths_uuid_[16];
  // from the server's conn_rsp on cid 0, set by the thread connecting a path (qd_ and max_io_
  // by the first one only)
  uint32_t qd_ = 0, max_io_ = 0, chunk_size_ = 0, mem_bits_ = 0, server_qd_ = 0;
  bool new_rkey_ = false;
  std::vector<std::unique_ptr<Path>> paths_;  // appended by Connect() under mem_mu_ only
  std::atomic<bool> closed_{false};
  std::atomic<uint32_t> rr_{0};  // round-robin cursor
  transport::core::MpPolicy policy_ = transport::core::MpPolicy::kMinInflight;

  // buffer ids, shared by the paths (core/permits.h); a waiter starts on its own loop
  transport::core::PermitPool<std::pair<ClientIo*, EventLoop*>> permits_;
  std::mutex permit_mu_;   // the sizing of reqs_ (with the pool's)
  std::vector<Req> reqs_;  // by buf_id; an entry only on its request's loop

  mutable std::shared_mutex mem_mu_;  // regions_, next_handle_, the growth of paths_
  std::map<uintptr_t, Region> regions_;  // by start address
  uint64_t next_handle_ = 1;
  std::atomic<uint64_t> bounce_count_{0};

  // RTRS error recovery: a failed path is rebuilt on the shared back-off, up to
  // max_reconnect_attempts times in a row (-1 = forever, 0 = never; core/reconnector.h).
  transport::core::Reconnector reconnector_;
};

}  // namespace ibnbd::rdma::client
