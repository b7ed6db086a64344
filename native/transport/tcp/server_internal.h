// Private to the TCP server (docs/tcp-transport.md, "Handshake", "Server side"): the classes its
// two files share.
//   server.cc       listening, handshakes, grouping connections into paths and sessions,
//                   session up / down, Stop(), the factory CreateServer
//   server_conn.cc  one accepted connection on its IO thread: requests in, responses out,
//                   heartbeats
//   server_fence.cc retiring a path's old connections (a newer incarnation of the path, or a
//                   FENCE from another path) and holding answers until their requests are done
// The model is RTRS's (docs/protocol.md, "RTRS transport"), as in Linux
// drivers/infiniband/ulp/rtrs/rtrs-srv.c. All of it is in namespace tcp::server; the factory is
// declared in tcp.h.
//
// Threads:
//   * IO thread 0: the listeners, accept, reading handshakes (TcpServer::pending_), the sweep of
//     handshakes that took too long, and TcpServer::Handshake, which calls OnSessionUp.
//   * A connection's IO thread (SrvConn::loop; the service connection: its path's service_loop,
//     IO connection k: thread k-1 modulo the pool): the connection from Register() to Close();
//     OnRequest runs there, Respond() hops there from any thread, and the close of a session's
//     last connection raises OnSessionDown there (on IO thread 0 instead when it came while
//     OnSessionUp was running).
//   * Start() and Stop() run on the caller's thread; Stop() waits (up to 30 s) for every
//     connection to close on its loop. KillPath and SrvSession::Close may run on any thread.
// Locks: TcpServer::mu_ guards the session table (sessions_, live_sessions_, next_sid_), every
// SrvSession's paths, open_conns and up / down flags, every SrvPath's conns, accepted and up,
// and bound_; started_ and stopped_ are set under it (KillPath reads stopped_ without it, only to
// keep its log line quiet). pending_ and the sweep timer are IO thread 0's. SrvPath's dead flag,
// heartbeat and inflight counters are atomic; a SrvConn's own state is its loop's.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/event_loop.h"
#include "transport/core/liveness.h"
#include "transport/tcp/data_buffers.h"
#include "transport/tcp/frames.h"
#include "transport/transport.h"
#include "transport/uuid.h"

namespace ibnbd::transport::tcp::server {

class TcpServer;
struct SrvSession;
struct SrvPath;
struct SrvConn;

struct SrvReq {
  ServerIo io;  // first member: Respond() gets &io back
  std::shared_ptr<SrvConn> conn;
  uint32_t id = 0;
  uint8_t usr[kMaxUsrLen];
  uint8_t* buf = nullptr;
  uint32_t buf_len = 0;
  ~SrvReq() { GiveDataBuffer(buf, buf_len); }
};

struct OutItem {
  uint8_t hdr[kFrameHeaderSize];
  const uint8_t* data = nullptr;
  uint32_t data_len = 0;
  SrvReq* req = nullptr;  // freed once sent
};

struct SrvPath {
  uint8_t uuid[16];
  uint32_t incarnation = 0;  // the handshake's; a higher one retires this path
  std::string sess_key;      // the session's uuid bytes and name (outlive the session: the drain
  std::string sess_name;     // holds a new session of the name too, e.g. of a restarted client)
  uint16_t conn_count = 0;
  std::vector<std::shared_ptr<SrvConn>> conns;  // server mutex
  uint16_t accepted = 0;
  bool up = false;
  std::atomic<bool> dead{false};
  core::Heartbeat hb;  // misses and round trip (core/liveness.h)
  std::atomic<int64_t> inflight{0};
  std::atomic<uint64_t> requests{0};  // received on this path (PathInfo::requests, the metrics)
  std::string client_addr, local_addr;
  unsigned service_loop = 0;
};

struct SrvSession : ServerSession {
  TcpServer* srv = nullptr;
  std::string name;
  uint8_t uuid_bytes[16];
  uint64_t sid = 0;
  uint32_t qd = 0, max_io = 0;
  // server mutex
  std::vector<std::shared_ptr<SrvPath>> paths;
  int open_conns = 0;
  bool up = false;
  bool down_pending = false;
  // OnSessionUp is called outside the mutex; a down that comes meanwhile is reported by the
  // thread that reported up, once up has returned (never down before up, never both at once).
  bool up_reporting = false;
  bool down_after_up = false;

  const std::string& sessname() const override { return name; }
  std::string uuid() const override { return UuidString(uuid_bytes); }
  uint64_t id() const override { return sid; }
  std::vector<PathInfo> Paths() const override;
  void Complete(ServerIo* io, int err) override;
  void Close() override;
};

class TcpServer : public Server {
 public:
  TcpServer(Options opt, ServerHandler* h) : opt_(std::move(opt)), handler_(h) {}
  ~TcpServer() override { Stop(); }
  int Start() override;
  void Stop() override;
  std::vector<Endpoint> Bound() const override {
    std::lock_guard<std::mutex> lk(mu_);
    return bound_;
  }

  void KillPath(const std::shared_ptr<SrvPath>& p, const char* why);
  // server_fence.cc. On `from`'s loop: a FENCE frame arrived on it.
  void Fence(const std::shared_ptr<SrvConn>& from, const uint8_t* path_uuid, uint32_t incarnation,
             uint64_t cookie);
  void ConnClosed(SrvSession* s);
  void ReportDown(SrvSession* s);
  const Options& opt() const { return opt_; }
  ServerHandler* handler() const { return handler_; }
  mutable std::mutex mu_;

 private:
  struct Pending {
    int fd;
    uint64_t since_ns;
    uint8_t buf[kHandshakeReqSize + kMaxSessnameLen + kAuthNonceLen];
    size_t have = 0;
    size_t need = kHandshakeReqSize;
    std::string peer, local;
    // after an AUTH_CHALLENGE: the request it answered and the proof the client must send
    bool awaiting_proof = false;
    HandshakeReq req;
    uint8_t expect[kAuthProofLen];
  };
  // server_auth.cc: the challenge (or a refusal) after a complete request; the proof's check
  void Authenticate(Pending* p, HandshakeReq& req, uint16_t sessname_len);
  void CheckProof(Pending* p);
  void OnAccept(int lfd);
  void OnPendingReadable(int fd);
  void Reject(Pending* p, int err, const std::string& why);
  void LogRefusal(const std::string& peer, int err, const std::string& why);
  void ClosePending(int fd);
  void EvictOldestPending();
  void Handshake(Pending* p, HandshakeReq& req);
  void Sweep();
  // server_fence.cc, all but the tick under mu_
  void RetireLocked(SrvSession* s, const std::shared_ptr<SrvPath>& p,
                    std::vector<std::shared_ptr<SrvConn>>* to_close);
  bool StaleLocked(const std::string& key, const HandshakeReq& req) const;
  bool DrainingLocked(const SrvSession* s);
  void PruneRetiredLocked();  // drops the retired paths with nothing running any more
  void HoldAnswerLocked(const std::shared_ptr<SrvConn>& c, const uint8_t* rsp);
  void HoldFenceAckLocked(const std::shared_ptr<SrvConn>& c, uint64_t cookie);
  void OnDrainTick();

  struct HeldAnswer {
    std::shared_ptr<SrvConn> conn;
    std::vector<uint8_t> rsp;  // a handshake response; empty: a FENCE_ACK of `cookie`
    uint64_t cookie = 0;
  };

  Options opt_;
  ServerHandler* handler_;
  std::vector<int> listen_fds_;
  int sweep_fd_ = -1;
  std::vector<Endpoint> bound_;
  std::map<int, std::unique_ptr<Pending>> pending_;  // loop 0 only
  std::map<std::string, std::shared_ptr<SrvSession>> sessions_;  // by uuid bytes; mu_
  // mu_: paths closed or retired whose requests may still run, and the answers that wait for
  // them (server_fence.cc); drain_fd_ (loop 0) ticks while any answer waits
  std::vector<std::shared_ptr<SrvPath>> retired_;
  std::vector<HeldAnswer> held_;
  int drain_fd_ = -1;
  std::condition_variable cv_;
  // mu_: sessions created and whose OnSessionDown has not yet *returned*. Stop() waits for 0,
  // so once it returns no handler call is running or will come: the upper layer may free what
  // its callbacks use (the IBNBD server releases its thread-safe function right after).
  int live_sessions_ = 0;
  uint64_t reserved_bytes_ = 0;  // SessionBytes() of every session in sessions_ (mu_)
  // loop 0's: listeners not watched until the next sweep (EMFILE at accept); evictions so far
  std::vector<int> paused_;
  uint64_t evictions_ = 0;
  uint64_t last_accept_error_log_ns_ = 0;
  uint32_t refusals_logged_ = 0;     // refusals logged since the last sweep, and not logged
  uint64_t refusals_unlogged_ = 0;
  uint64_t next_sid_ = 1;
  bool started_ = false;
  bool stopped_ = false;
};

// One accepted connection (server_conn.cc). TcpServer::Handshake creates it and posts its
// Register() to its loop; TcpServer::KillPath posts its Close() there.
struct SrvConn final : BatchEndTask, std::enable_shared_from_this<SrvConn> {
  TcpServer* srv;
  std::shared_ptr<SrvSession> sess;
  std::shared_ptr<SrvPath> path;
  uint16_t index;
  int fd;
  EventLoop* loop;
  int tfd = -1;
  bool registered = false;
  bool closed = false;
  std::vector<uint8_t> busy;  // request ids in flight on this connection
  std::vector<uint8_t> rx;
  size_t rx_have = 0, rx_pos = 0;
  SrvReq* cur = nullptr;  // WRITE whose payload is still arriving
  uint32_t cur_off = 0;
  std::deque<OutItem> out;
  size_t head_off = 0;
  bool want_out = false;

  SrvConn(TcpServer* s, std::shared_ptr<SrvSession> se, std::shared_ptr<SrvPath> p, uint16_t i,
          int f, EventLoop* l)
      : srv(s), sess(std::move(se)), path(std::move(p)), index(i), fd(f), loop(l),
        busy(sess->qd, 0), rx(64 * 1024) {}

  void Register();
  void Fail(const char* why);
  void OnTick();
  void Queue(FrameKind kind, uint32_t id, int32_t err, uint64_t cookie, SrvReq* req);
  void RunBatchEnd() override;
  void Flush();
  void OnEvent(uint32_t ev);
  void Dispatch(SrvReq* r);
  void BadFrame(const char* what);
  bool ParseFrames();
  void OnReadable();
  void Respond(SrvReq* r, int err);
  void Close();
};

}  // namespace ibnbd::transport::tcp::server
