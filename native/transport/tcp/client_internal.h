// Private to the TCP client (docs/tcp-transport.md): the classes its three files share.
//   client_session.cc  the session: permits, path choice (mp_policy), submit / complete /
//                      fail over, Close(), Paths(), the factory CreateClientSession
//   client_path.cc     one path: connect + handshake, its service connection (heartbeats),
//                      failure and teardown, reconnect (Connect(), the reconnector thread)
//   client_io_conn.cc  one IO connection of a path: requests out, responses in
//   client_fence.cc    requests lost with a path: held until the server has fenced the lost
//                      connections, then sent again (failover) or handed back (no path left)
// The model (session, paths, shared permits, failover) is RTRS's (docs/protocol.md, "RTRS
// transport"); the split follows Linux drivers/infiniband/ulp/rtrs/rtrs-clt.c (session vs path).
// All of it is in namespace tcp::client; the factory is declared in tcp.h.
//
// Threads:
//   * IO thread i: IO connection i of every path (ClientPath::loop_conn[i], handshake index
//     i + 1); a request submitted on thread i is sent, received and completed there.
//   * A path's service_loop (an IO thread): its ServiceConn, which runs the heartbeats.
//   * Connect() and Close() block on the caller's thread (never an IO thread); Connect() and
//     the reconnector thread ("ibnbd-reconn") run ConnectPath.
//   * IO thread 0: link events (Options::on_link_event).
// Ownership and locks:
//   * A connection object is touched only on its own loop: created there (RunSync from
//     ConnectPath), destroyed there by TeardownPath (posted when the path fails; RunSync from
//     Close() or from a connect that failed after installing it).
//   * ClientPath::mu guards src_str. The reconnect schedule is core::Reconnector's
//     (core/reconnector.h): its own thread and lock.
//     TcpClientSession::close_mu_ orders Close() against ConnectPath installing connections.
//     The permit pool has its own mutex (free ids, FIFO of waiters; core/permits.h).
//   * Everything else shared between threads (path state, generation, inflight, heartbeat misses
//     and round trip, counters, qd_, max_io_, connected_paths_, closed_) is atomic.
#pragma once
#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/event_loop.h"
#include "transport/core/liveness.h"
#include "transport/core/path_choice.h"
#include "transport/core/permits.h"
#include "transport/core/reconnector.h"
#include "transport/tcp/frames.h"
#include "transport/transport.h"
#include "transport/uuid.h"

namespace ibnbd::transport::tcp::client {

// ClientIo::transport_private slots
constexpr int kTpPermit = 0;
constexpr int kTpLoop = 1;

class TcpClientSession;
struct IoConn;
struct ServiceConn;  // defined in client_path.cc, the only file that touches it

struct ClientPath {
  size_t index = 0;
  uint8_t uuid[16];                       // the server's name for this path, kept on reconnect
  std::atomic<uint32_t> incarnation{0};  // connect attempts so far (the handshake's incarnation)
  PathSpec spec;
  std::string dst_str;
  mutable std::mutex mu;  // src_str
  std::string src_str;
  std::atomic<PathState> state{PathState::kConnecting};
  std::atomic<uint64_t> gen{0};
  std::atomic<uint64_t> failed_gen{0};
  std::atomic<int64_t> inflight{0};
  core::Heartbeat hb;                   // misses, round trip (core/liveness.h)
  std::atomic<uint64_t> fail_log_ns{0};  // PathFailed's log: one line a second, the rest counted
  std::atomic<uint32_t> fail_unlogged{0};
  std::atomic<uint32_t> reconnects{0};
  std::atomic<uint64_t> requests{0};   // completed here (PathInfo::requests)
  std::atomic<uint64_t> failovers{0};  // moved away from here when it died
  core::ProgressClock progress;         // io_timeout (core/liveness.h)
  std::vector<IoConn*> loop_conn;  // slot i only touched on IO thread i
  ServiceConn* service = nullptr;  // only touched on service_loop
  unsigned service_loop = 0;
};

class TcpClientSession : public ClientSession {
 public:
  explicit TcpClientSession(Options opt);
  ~TcpClientSession() override { Close(); }

  int Connect(int timeout_ms) override;
  void Submit(ClientIo* io) override;
  uint32_t queue_depth() const override { return qd_.load(); }
  uint32_t max_io_size() const override { return max_io_.load(); }
  bool connected() const override { return connected_paths_.load() > 0; }
  std::vector<PathInfo> Paths() const override;
  std::string uuid() const override { return UuidString(uuid_); }
  void Close() override;

  // Called by connections (on their loop).
  void PathFailed(ClientPath* p, uint64_t gen, const char* why);
  void Finish(ClientIo* io, int err);
  // client_fence.cc: a request lost with `failed` (on its loop), a FENCE_ACK (on `via`'s
  // service loop)
  void Reissue(ClientIo* io, ClientPath* failed);
  void OnFenceAck(ClientPath* via, uint64_t gen, uint64_t cookie);
  // client_path.cc, on via's service loop: one FENCE frame, if generation gen is still up
  void SendFence(ClientPath* via, uint64_t gen, const uint8_t* uuid, uint32_t incarnation,
                 uint64_t cookie);
  bool closing() const { return closed_.load(); }
  const Options& opt() const { return opt_; }

 private:
  // client_path.cc: a path's lifecycle
  int ConnectPath(ClientPath* p, uint64_t deadline_ns);
  void TeardownPath(ClientPath* p, uint64_t gen, bool sync);
  void PathUp(ClientPath* p);
  int Redial(ClientPath* p);  // on the reconnect thread (core::Reconnector's dial hook)
  // client_fence.cc: the lost paths' fences
  struct Lost {
    ClientPath* path;
    uint32_t incarnation;
  };
  struct Parked {
    ClientIo* io;
    ClientPath* failed;
  };
  void NoteLost(ClientPath* p);
  void StartFenceRoundLocked();
  void Resend(ClientIo* io, ClientPath* failed);
  int FenceBeforeUp(ClientPath* p, int service_fd, uint64_t deadline_ns);
  // client_auth.cc: on the connecting thread, one connection's challenge checked and answered
  int AnswerChallenge(int fd, const std::vector<uint8_t>& request, uint64_t deadline_ns);
  std::vector<Parked> TakeParked();
  // client_session.cc: requests and session-wide state
  ClientPath* Choose(unsigned loop, ClientPath* exclude);
  void Start(ClientIo* io);  // has a permit, on its loop
  void PostDone(ClientIo* io, int err);
  void RaiseLink(LinkEvent ev);

  Options opt_;
  uint8_t uuid_[16];
  std::vector<std::unique_ptr<ClientPath>> paths_;
  std::atomic<uint32_t> qd_{0};
  std::atomic<uint32_t> max_io_{0};
  core::MpPolicy policy_ = core::MpPolicy::kMinInflight;
  core::PermitPool<ClientIo*> permits_;  // request ids, shared by the paths (core/permits.h)
  std::atomic<int> connected_paths_{0};
  std::atomic<bool> ever_connected_{false};
  std::atomic<bool> closed_{false};
  std::atomic<bool> connect_called_{false};
  std::atomic<uint32_t> rr_{0};
  core::Reconnector reconnector_;  // lost paths dialled again (core/reconnector.h)
  std::mutex close_mu_;
  std::mutex dial_mu_;        // with closed_: the sockets of handshakes in progress
  std::vector<int> dialing_;
  // fence_mu_: incarnations lost and not yet fenced on the server, the requests they lost while
  // another path was up, and the fence round in flight (its path, generation and cookie, the
  // acks still due and what it covers)
  std::mutex fence_mu_;
  std::vector<Lost> unfenced_;
  std::vector<Parked> parked_;
  ClientPath* fence_via_ = nullptr;
  uint64_t fence_gen_ = 0;
  uint64_t fence_cookie_ = 0;
  uint32_t fence_acks_left_ = 0;
  std::vector<Lost> fence_round_;
};

// IO connection: requests out, responses in; lives on IO thread `loop_index` (client_io_conn.cc).
// The path creates it, Register()s it and Teardown()s it; the session Send()s on it while it is
// not dead.
struct IoConn final : BatchEndTask {
  TcpClientSession* sess;
  ClientPath* path;
  uint64_t gen;
  int fd;
  EventLoop* loop;
  unsigned loop_index;
  uint32_t qd;
  std::vector<ClientIo*> inflight;
  std::vector<uint8_t> hdrs;
  std::deque<ClientIo*> sendq;
  size_t head_off = 0;
  bool want_out = false;
  bool dead = false;
  // READ responses with at most this much data come through rx with the headers around them
  // (one receive call for a whole batch of them, then a copy into guest memory); larger ones
  // are read in place (docs/tcp-transport.md, "Receiving responses").
  static constexpr uint32_t kCopyReadMax = 8192;
  static constexpr size_t kRxBytes = 64 * 1024;
  std::vector<uint8_t> rx;
  size_t rx_have = 0;
  ClientIo* cur = nullptr;  // response whose data is being received
  uint32_t cur_off = 0;
  int cur_err = 0;
  // READs in flight whose data is read in place: while there are any, rx takes one header at a
  // time, so that such data never lands in rx
  uint32_t inplace_reads_pending = 0;

  IoConn(TcpClientSession* s, ClientPath* p, uint64_t g, int f, EventLoop* l, uint32_t q)
      : sess(s), path(p), gen(g), fd(f), loop(l), loop_index(l->index()), qd(q), inflight(q),
        hdrs(static_cast<size_t>(q) * kFrameHeaderSize), rx(kRxBytes) {}

  int Register();
  void Fail(const char* why);
  void Send(ClientIo* io);
  void RunBatchEnd() override;
  size_t FrameLen(const ClientIo* io) const;
  void Flush();
  void OnEvent(uint32_t ev);
  void CompleteCur();
  void CopyIntoCur(const uint8_t* src, size_t len);
  int OnHeader(const uint8_t* p);
  bool CurReceived() const;
  static bool ReadInPlace(const ClientIo* io) {
    return io->dir == Dir::kRead && io->data_len > kCopyReadMax;
  }
  size_t RxRoom() const;
  void OnReadable();
  void Teardown();
};

}  // namespace ibnbd::transport::tcp::client
