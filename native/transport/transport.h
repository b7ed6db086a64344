// The transport between an IBNBD client and server, in RTRS's model (docs/protocol.md, "RTRS transport"):
//   session (sessname + random uuid, shared queue depth and max IO size)
//     └ path (one per "path=", service connection + one IO connection per IO thread)
// A request is READ (data server → client) or WRITE (client → server), carries a user message
// (the IBNBD message) and a data scatter/gather list, and completes with an errno.
// Implementations ("wires"): tcp/ (our framing, docs/tcp-transport.md) and rdma/ (RTRS on the
// wire); each registers itself (wire.h), so this interface names none of them.
#pragma once
#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ibnbd::transport {
namespace core {
class AllowList;
class AuthKeys;
}

enum class Dir : uint8_t { kRead = 0, kWrite = 1 };

constexpr uint32_t kDefaultQueueDepth = 512;
constexpr uint32_t kDefaultMaxIoSize = 128 * 1024;
constexpr uint16_t kDefaultPort = 1234;
constexpr uint32_t kMaxUsrLen = 512;        // an IBNBD message is at most 264 bytes (OPEN)
constexpr uint32_t kHeartbeatIntervalMs = 5000;
constexpr uint32_t kHeartbeatMissedMax = 5;

// "ip:<v4>", "ip:<v6>" or "gid:<gid>" plus a port.
struct Endpoint {
  std::string kind;  // "ip" | "gid"
  std::string addr;
  uint16_t port = kDefaultPort;
};

struct PathSpec {
  std::optional<Endpoint> src;
  Endpoint dst;
};

enum class PathState { kConnecting, kConnected, kReconnecting, kClosed };

struct PathInfo {
  std::string src;  // local address as connected, "" before
  std::string dst;
  PathState state = PathState::kConnecting;
  uint64_t inflight = 0;
  uint32_t reconnects = 0;
  uint64_t hb_rtt_ns = 0;  // last heartbeat round trip
  // Cumulative over reconnects: requests completed on this path (any result; a server path:
  // received on it), and, client paths only, requests that were in flight on it when it died
  // and were re-issued on another path. Relaxed atomics on the IO threads; read here, never
  // pushed to JS per IO.
  uint64_t requests = 0;
  uint64_t failovers = 0;
};

enum class LinkEvent { kConnected, kDisconnected, kReconnected };

// ---------------------------------------------------------------------------------------------
// Client side

// One request, owned by the caller until done() runs.
struct ClientIo {
  Dir dir = Dir::kRead;
  const void* usr = nullptr;    // user message (IBNBD), usr_len ≤ kMaxUsrLen
  uint16_t usr_len = 0;
  const struct iovec* iov = nullptr;  // data: WRITE source / READ destination (guest memory)
  uint32_t iov_cnt = 0;
  uint32_t data_len = 0;        // sum of iov lengths, ≤ max_io_size()
  // Called exactly once, on the IO thread that submitted the request: err = 0 or -errno
  // (-ENOTCONN when no path is connected or the request was lost with its path and could not be
  // re-issued on another: core::kLostWithPath, safe to send again once the session is back;
  // -ECONNABORTED when the session was closed; or the server's errno).
  void (*done)(ClientIo* io, int err) = nullptr;
  void* ctx = nullptr;
  uintptr_t transport_private[4] = {};  // the transport's bookkeeping; callers leave it alone
};

class ClientSession {
 public:
  struct Options {
    std::string sessname;
    std::vector<PathSpec> paths;
    uint32_t queue_depth = kDefaultQueueDepth;
    uint32_t max_io_size = kDefaultMaxIoSize;
    std::string mp_policy = "min-inflight";  // "round-robin" | "min-inflight" | "min-latency"
    // Path liveness (RTRS defaults); shorter values are for tests.
    uint32_t heartbeat_interval_ms = kHeartbeatIntervalMs;
    uint32_t heartbeat_missed_max = kHeartbeatMissedMax;
    // A lost path is dialled again at once, then with a back-off doubling from 100 ms up to this
    // (core/policy.h); attempts stop after max_reconnect_attempts (-1: never).
    uint32_t reconnect_delay_ms = 2000;
    // A path with requests outstanding that completes none for this long is dead (failover,
    // reconnect): core/liveness.h. 0: no timeout, heartbeats alone decide.
    uint32_t io_timeout_ms = 30000;
    int32_t max_reconnect_attempts = -1;
    // The session's secret (core/auth.h): non-empty = authenticate every connection and require
    // the server to prove it holds the same secret (-EACCES otherwise).
    std::string auth_secret;
    // Link events (first path up / last path down / back up); called on an IO thread.
    std::function<void(LinkEvent)> on_link_event;
  };

  // transport: "tcp" or "rdma". Returns nullptr with *err set (-EINVAL, -ENODEV, ...;
  // -EPROTONOSUPPORT for an unknown name) and, where the wire knows it, LastCreateError().
  static std::shared_ptr<ClientSession> Create(const std::string& transport, Options options,
                                               int* err);
  virtual ~ClientSession() = default;

  // Blocking: establishes every path (handshake included). Call from a worker thread, never an
  // IO thread. 0 once at least one path is connected, else -errno of the last failure.
  virtual int Connect(int timeout_ms) = 0;

  // From an IO thread (EventLoop::Current() != nullptr): the request goes out on that thread's
  // IO connection of the chosen path and completes on the same thread. When all permits
  // (queue_depth) are taken it waits in FIFO order.
  virtual void Submit(ClientIo* io) = 0;

  virtual uint32_t queue_depth() const = 0;  // negotiated
  virtual uint32_t max_io_size() const = 0;  // negotiated data bytes per request
  virtual bool connected() const = 0;        // at least one path connected
  virtual std::vector<PathInfo> Paths() const = 0;
  virtual std::string uuid() const = 0;

  // Zero copy for transports that need registered memory (RDMA). The vhost layer registers each
  // guest memory region once (before or after Connect); a request whose data lies inside
  // registered regions goes to the wire straight from/to guest memory, any other through the
  // transport's registered bounce buffers, counted by bounce_count(). Unregister a region only
  // when no request uses it any more. TCP needs none of this: the defaults do nothing.
  virtual int RegisterMemory(void* addr, size_t len, uint64_t* handle) {
    (void)addr;
    (void)len;
    *handle = 0;
    return 0;
  }
  virtual void UnregisterMemory(uint64_t handle) { (void)handle; }
  virtual uint64_t bounce_count() const { return 0; }

  // Closes every path; in-flight requests complete with -ECONNABORTED. Blocking, not from an
  // IO thread. Idempotent.
  virtual void Close() = 0;
};

// ---------------------------------------------------------------------------------------------
// Server side

class ServerSession;

// One incoming request; owned by the transport until Respond().
struct ServerIo {
  Dir dir = Dir::kRead;
  const uint8_t* usr = nullptr;  // user message as received
  uint16_t usr_len = 0;
  // WRITE: the payload received (data_len bytes). READ: a buffer of data_len bytes (the length
  // the client asked for) that the handler fills before Respond(io, 0).
  uint8_t* data = nullptr;
  uint32_t data_len = 0;
  ServerSession* session = nullptr;
  unsigned loop = 0;  // IoThreads index of the thread that received it
  uintptr_t transport_private[4] = {};  // the transport's bookkeeping; handlers leave it alone
};

// Answer a request exactly once, from any thread (the transport hops to io->loop). err = 0 or
// -errno; for a READ with err == 0 the data buffer is sent back.
void Respond(ServerIo* io, int err);

class ServerSession {
 public:
  virtual ~ServerSession() = default;
  virtual const std::string& sessname() const = 0;
  virtual std::string uuid() const = 0;
  virtual std::vector<PathInfo> Paths() const = 0;  // src = client address
  virtual uint64_t id() const = 0;                  // unique per server process
  void* upper = nullptr;                            // the IBNBD server layer's state

  // The implementation behind Respond(): io->session->Complete(io, err).
  virtual void Complete(ServerIo* io, int err) = 0;
  // Closes every path of the session (OnSessionDown follows). Any thread.
  virtual void Close() = 0;
};

class ServerHandler {
 public:
  virtual ~ServerHandler() = default;
  virtual void OnSessionUp(ServerSession* s) = 0;    // first path connected
  virtual void OnSessionDown(ServerSession* s) = 0;  // last path gone; no requests after this
  virtual void OnRequest(ServerIo* io) = 0;          // on an IO thread
};

class Server {
 public:
  struct Options {
    std::vector<Endpoint> listen;  // default: ip:0.0.0.0 and ip:[::] on kDefaultPort
    uint32_t queue_depth = kDefaultQueueDepth;
    uint32_t max_io_size = kDefaultMaxIoSize;
    uint32_t heartbeat_interval_ms = kHeartbeatIntervalMs;
    uint32_t heartbeat_missed_max = kHeartbeatMissedMax;
    // Session secrets (core/auth.h), replaced on a reload; null or not required(): sessions
    // are not authenticated. Wires that cannot check them refuse every session when required.
    std::shared_ptr<core::AuthKeys> auth;
    // --allow: the peer addresses that may connect at all; null or empty: any
    std::shared_ptr<const core::AllowList> allow;
    // Bounds a flood of connections or sessions cannot pass (docs/security.md): refused with
    // -EBUSY (sessions, connections) or -ENOMEM (buffer memory), and logged.
    struct LimitValues {
      uint32_t max_sessions = 1024;
      uint32_t max_conns_per_session = 256;  // over all its paths
      uint32_t max_pending = 512;            // handshakes in progress; the oldest goes first
      uint32_t handshake_timeout_ms = 5000;
      // request buffers a session may pin: queue depth × max IO size, summed over sessions
      // (TCP) or paths (RDMA, whose chunks are per path)
      uint64_t max_buffer_bytes = 8ull << 30;
    };
    // Shared with the daemon, which changes them while the server runs (SIGHUP). Each is read
    // where it is checked — an accept, a handshake, the pending sweep, never an IO — so a new
    // value holds from the next check on; what was admitted before stays.
    class Limits {
     public:
      LimitValues Get() const {
        std::lock_guard<std::mutex> lock(mu_);
        return v_;
      }
      void Set(const LimitValues& v) {
        std::lock_guard<std::mutex> lock(mu_);
        v_ = v;
      }

     private:
      mutable std::mutex mu_;
      LimitValues v_;
    };
    std::shared_ptr<Limits> limits = std::make_shared<Limits>();
  };
  static std::unique_ptr<Server> Create(const std::string& transport, Options options,
                                        ServerHandler* handler, int* err);
  virtual ~Server() = default;
  virtual int Start() = 0;  // 0 or -errno (EADDRINUSE, ...)
  // Closes every session and returns once every OnSessionDown call has returned: no handler
  // call is running or will come afterwards.
  virtual void Stop() = 0;
  virtual std::vector<Endpoint> Bound() const = 0;  // actual ports (listen port 0 → ephemeral)
};

// Why the last ClientSession::Create / Server::Create on this thread failed, in words ("no RDMA
// device ..."), for the error the JS caller sees; "" when the wire gave no reason.
const char* LastCreateError();

}  // namespace ibnbd::transport
