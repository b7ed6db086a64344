// TCP server (docs/tcp-transport.md). Listeners and handshakes run on IO thread 0; once a
// connection's handshake is accepted it moves to its IO thread (service connection: one per
// path, spread over the threads; IO connection k: thread k-1) and stays there. Requests are
// handed to the ServerHandler on that thread; Respond() hops back to it from anywhere.
//
// A malformed handshake closes that socket only; a malformed frame closes that connection's
// path (its other connections are useless without it). Other paths and sessions are untouched.
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "common/event_loop.h"
#include "transport/fault.h"
#include "transport/tcp/data_buffers.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"
#include "transport/tcp/tcp.h"

namespace ibnbd::transport::tcp {
namespace {

class TcpServer;
struct SrvSession;
struct SrvPath;
struct SrvConn;

constexpr uint64_t kHandshakeTimeoutNs = 10ull * 1000000000ull;

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
  uint16_t conn_count = 0;
  std::vector<std::shared_ptr<SrvConn>> conns;  // server mutex
  uint16_t accepted = 0;
  bool up = false;
  std::atomic<bool> dead{false};
  std::atomic<uint32_t> hb_missed{0};
  std::atomic<uint64_t> hb_rtt_ns{0};
  std::atomic<int64_t> inflight{0};
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
  void ConnClosed(SrvSession* s);
  void ReportDown(SrvSession* s);
  const Options& opt() const { return opt_; }
  ServerHandler* handler() const { return handler_; }
  mutable std::mutex mu_;

 private:
  struct Pending {
    int fd;
    uint64_t since_ns;
    uint8_t buf[kHandshakeReqSize + kMaxSessnameLen];
    size_t have = 0;
    size_t need = kHandshakeReqSize;
    std::string peer, local;
  };
  void OnAccept(int lfd);
  void OnPendingReadable(int fd);
  void Reject(Pending* p, int err, const std::string& why);
  void ClosePending(int fd);
  void Handshake(Pending* p, HandshakeReq& req);
  void Sweep();

  Options opt_;
  ServerHandler* handler_;
  std::vector<int> listen_fds_;
  int sweep_fd_ = -1;
  std::vector<Endpoint> bound_;
  std::map<int, std::unique_ptr<Pending>> pending_;  // loop 0 only
  std::map<std::string, std::shared_ptr<SrvSession>> sessions_;  // by uuid bytes; mu_
  std::condition_variable cv_;
  // mu_: sessions created and whose OnSessionDown has not yet *returned*. Stop() waits for 0,
  // so once it returns no handler call is running or will come: the upper layer may free what
  // its callbacks use (the IBNBD server releases its thread-safe function right after).
  int live_sessions_ = 0;
  uint64_t next_sid_ = 1;
  bool started_ = false;
  bool stopped_ = false;
};

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

  void Register() {
    if (closed) return;  // the path died before we got here
    auto self = shared_from_this();
    if (loop->Add(fd, EPOLLIN, [self](uint32_t ev) { self->OnEvent(ev); }) != 0) {
      srv->KillPath(path, "cannot register connection");
      return;
    }
    registered = true;
    if (index == 0) {
      tfd = PeriodicTimer(srv->opt().heartbeat_interval_ms);
      loop->Add(tfd, EPOLLIN, [self](uint32_t) { self->OnTick(); });
    }
  }

  void Fail(const char* why) {
    if (closed) return;
    srv->KillPath(path, why);
  }

  void OnTick() {
    uint64_t t;
    ssize_t n = read(tfd, &t, sizeof(t));
    (void)n;
    if (closed) return;
    uint32_t missed = path->hb_missed.load();
    if (missed > srv->opt().heartbeat_missed_max) return Fail("heartbeat missed");
    path->hb_missed.fetch_add(1);
    if (missed == 0) Queue(FrameKind::kHeartbeat, 0, 0, NowNs(), nullptr);
  }

  void Queue(FrameKind kind, uint32_t id, int32_t err, uint64_t cookie, SrvReq* req) {
    OutItem it;
    FrameHeader h;
    h.kind = kind;
    h.id = id;
    h.err = err;
    h.cookie = cookie;
    if (req && req->io.dir == Dir::kRead && err == 0) {
      h.data_len = req->io.data_len;
      it.data = req->buf;
      it.data_len = req->io.data_len;
    }
    EncodeFrameHeader(h, it.hdr);
    it.req = req;
    out.push_back(it);
    // Sent at the end of this loop batch: every response the batch produced goes out with one
    // sendmsg (while EPOLLOUT is armed, the socket is full and OnEvent flushes).
    if (!closed && !want_out) loop->AtBatchEnd(this);
  }

  void RunBatchEnd() override {
    if (!closed) Flush();
  }

  void Flush() {
    while (!out.empty() && !closed) {
      iovec iov[128];
      int n = 0;
      size_t skip = head_off;
      for (size_t i = 0; i < out.size() && n < 126; i++) {
        OutItem& it = out[i];
        if (skip < kFrameHeaderSize) {
          iov[n++] = {it.hdr + skip, kFrameHeaderSize - skip};
          skip = 0;
        } else {
          skip -= kFrameHeaderSize;
        }
        if (it.data_len) {
          iov[n++] = {const_cast<uint8_t*>(it.data) + skip, it.data_len - skip};
          skip = 0;
        }
      }
      ssize_t w = SendvSome(fd, iov, static_cast<size_t>(n));
      if (w == -EAGAIN) break;
      if (w < 0) return Fail("send failed");
      size_t left = static_cast<size_t>(w);
      while (left > 0 && !out.empty()) {
        size_t rem = kFrameHeaderSize + out.front().data_len - head_off;
        if (left >= rem) {
          left -= rem;
          head_off = 0;
          delete out.front().req;
          out.pop_front();
        } else {
          head_off += left;
          left = 0;
        }
      }
    }
    bool need = !out.empty() && !closed;
    if (need != want_out && registered) {
      want_out = need;
      loop->Modify(fd, need ? (EPOLLIN | EPOLLOUT) : EPOLLIN);
    }
  }

  void OnEvent(uint32_t ev) {
    if (closed) return;
    if (ev & EPOLLOUT) Flush();
    if (!closed && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) OnReadable();
  }

  void Dispatch(SrvReq* r) {
    busy[r->id] = 1;
    path->inflight.fetch_add(1, std::memory_order_relaxed);
    srv->handler()->OnRequest(&r->io);
  }

  void BadFrame(const char* what) {
    fprintf(stderr, "ibnbd: tcp server: session '%s' from %s: %s; closing the path\n",
            sess->name.c_str(), path->client_addr.c_str(), what);
    Fail(what);
  }

  // false when the connection failed.
  bool ParseFrames() {
    while (rx_have - rx_pos >= kFrameHeaderSize && !closed) {
      const uint8_t* p = rx.data() + rx_pos;
      FrameHeader h;
      if (DecodeFrameHeader(p, &h) != 0) return BadFrame("malformed frame header"), false;
      if (h.kind == FrameKind::kHeartbeat || h.kind == FrameKind::kHeartbeatAck) {
        if (h.usr_len || h.data_len || h.err || h.id)
          return BadFrame("malformed heartbeat"), false;
        rx_pos += kFrameHeaderSize;
        if (h.kind == FrameKind::kHeartbeat) {
          Queue(FrameKind::kHeartbeatAck, 0, 0, h.cookie, nullptr);
        } else {
          uint64_t now = NowNs();
          if (h.cookie <= now) path->hb_rtt_ns.store(now - h.cookie);
        }
        continue;
      }
      if (h.kind == FrameKind::kResponse) return BadFrame("response frame from a client"), false;
      if (h.usr_len > kMaxUsrLen) return BadFrame("user message too long"), false;
      if (h.data_len > sess->max_io) return BadFrame("data longer than max_io_size"), false;
      if (h.id >= sess->qd) return BadFrame("request id beyond queue depth"), false;
      if (busy[h.id]) return BadFrame("request id already in flight"), false;
      if (h.err != 0 || h.cookie != 0) return BadFrame("non-zero errno/cookie in a request"), false;
      if (rx_have - rx_pos < kFrameHeaderSize + h.usr_len) break;  // wait for the user message
      auto* r = new SrvReq();
      r->conn = shared_from_this();
      r->id = h.id;
      r->io.dir = h.kind == FrameKind::kReadReq ? Dir::kRead : Dir::kWrite;
      memcpy(r->usr, p + kFrameHeaderSize, h.usr_len);
      r->io.usr = r->usr;
      r->io.usr_len = h.usr_len;
      r->io.data_len = h.data_len;
      r->io.session = sess.get();
      r->io.loop = loop->index();
      if (h.data_len) {
        // Recycled, not zeroed: a READ is answered with its buffer only on success, and both
        // fillers (io_path: all data_len bytes or an error; the JS handler: zeroes, then
        // copies) write every byte first.
        r->buf = TakeDataBuffer(h.data_len);
        r->buf_len = h.data_len;
        if (!r->buf) {
          delete r;
          return BadFrame("out of memory"), false;
        }
      }
      r->io.data = r->buf;
      rx_pos += kFrameHeaderSize + h.usr_len;
      if (r->io.dir == Dir::kWrite && h.data_len) {
        size_t avail = std::min<size_t>(rx_have - rx_pos, h.data_len);
        memcpy(r->buf, rx.data() + rx_pos, avail);
        rx_pos += avail;
        if (avail < h.data_len) {
          cur = r;
          cur_off = static_cast<uint32_t>(avail);
          busy[r->id] = 1;  // reserve the id while the payload arrives
          return true;
        }
      }
      Dispatch(r);
    }
    return !closed;
  }

  void OnReadable() {
    for (int rounds = 0; rounds < 64 && !closed; rounds++) {
      if (cur) {
        // The payload lands in the request's buffer; the next frame's header and user message
        // come with it into rx (never more), so a stream of large WRITEs is read with one
        // system call per frame and no payload bytes pass through rx (a 64 KiB recv into rx
        // copied half of every 128 KiB WRITE once more).
        if (rx_pos == rx_have) rx_pos = rx_have = 0;
        const size_t left = cur->io.data_len - cur_off;
        iovec v[2] = {{cur->buf + cur_off, left},
                      {rx.data() + rx_have, std::min(rx.size() - rx_have, kFrameHeaderSize + kMaxUsrLen)}};
        ssize_t r = ReadvSome(fd, v, v[1].iov_len ? 2 : 1);
        if (r == -EAGAIN) return;
        if (r <= 0) return Fail(r == 0 ? "connection closed by client" : "receive failed");
        path->hb_missed.store(0, std::memory_order_relaxed);
        const size_t got = static_cast<size_t>(r);
        const bool drained = got < left + v[1].iov_len;  // the socket is empty: see below
        cur_off += static_cast<uint32_t>(std::min(got, left));
        if (got > left) rx_have += got - left;
        if (cur_off == cur->io.data_len) {
          SrvReq* req = cur;
          cur = nullptr;
          Dispatch(req);
          if (!ParseFrames()) return;
        }
        if (drained) return;
        continue;
      }
      if (rx_pos == rx_have) rx_pos = rx_have = 0;
      if (rx_have == rx.size() || (rx_pos > 0 && rx.size() - rx_have < kFrameHeaderSize + kMaxUsrLen)) {
        memmove(rx.data(), rx.data() + rx_pos, rx_have - rx_pos);
        rx_have -= rx_pos;
        rx_pos = 0;
      }
      const size_t asked = rx.size() - rx_have;
      ssize_t r = RecvSome(fd, rx.data() + rx_have, asked);
      if (r == -EAGAIN) return;
      if (r <= 0) return Fail(r == 0 ? "connection closed by client" : "receive failed");
      path->hb_missed.store(0, std::memory_order_relaxed);
      rx_have += static_cast<size_t>(r);
      if (!ParseFrames()) return;
      // Less than asked: the socket is empty (epoll reports what comes next), so skip the
      // recv that would only say EAGAIN; at QD1 that is one system call of five per request.
      if (static_cast<size_t>(r) < asked) return;
    }
  }

  void Respond(SrvReq* r, int err) {
    if (closed) {
      path->inflight.fetch_sub(1, std::memory_order_relaxed);
      delete r;
      return;
    }
    busy[r->id] = 0;
    path->inflight.fetch_sub(1, std::memory_order_relaxed);
    if (err > 0 || err < -4095) err = -EIO;
    Queue(FrameKind::kResponse, r->id, err, 0, r);
  }

  // On this loop.
  void Close() {
    if (closed) return;
    closed = true;
    loop->CancelBatchEnd(this);
    if (registered) loop->Remove(fd);
    if (tfd >= 0) {
      loop->Remove(tfd);
      close(tfd);
    }
    close(fd);
    for (auto& it : out) delete it.req;
    out.clear();
    delete cur;
    cur = nullptr;
    srv->ConnClosed(sess.get());
  }
};

std::vector<PathInfo> SrvSession::Paths() const {
  std::lock_guard<std::mutex> lk(srv->mu_);
  std::vector<PathInfo> out;
  for (auto& p : paths) {
    PathInfo pi;
    pi.src = p->client_addr;
    pi.dst = p->local_addr;
    pi.state = p->up ? PathState::kConnected : PathState::kConnecting;
    int64_t inf = p->inflight.load();
    pi.inflight = inf > 0 ? static_cast<uint64_t>(inf) : 0;
    pi.hb_rtt_ns = p->hb_rtt_ns.load();
    out.push_back(pi);
  }
  return out;
}

void SrvSession::Complete(ServerIo* io, int err) {
  auto* r = reinterpret_cast<SrvReq*>(io);
  SrvConn* c = r->conn.get();
  if (c->loop->InLoop()) {
    c->Respond(r, err);
  } else {
    c->loop->Post([r, err] { r->conn->Respond(r, err); });
  }
}

void SrvSession::Close() {
  std::vector<std::shared_ptr<SrvPath>> ps;
  {
    std::lock_guard<std::mutex> lk(srv->mu_);
    ps = paths;
  }
  for (auto& p : ps) srv->KillPath(p, "session closed by the server");
}

// --------------------------------------------------------------------------------------------

int TcpServer::Start() {
  if (started_) return -EALREADY;
  std::vector<Endpoint> eps = opt_.listen;
  if (eps.empty()) eps = {{"ip", "0.0.0.0", kDefaultPort}, {"ip", "::", kDefaultPort}};
  std::vector<int> fds;
  std::vector<Endpoint> bound;
  auto fail = [&](int rc) {
    for (int fd : fds) close(fd);
    return rc;
  };
  for (auto& ep : eps) {
    sockaddr_storage ss;
    socklen_t len;
    int rc = ToSockaddr(ep, &ss, &len);
    if (rc) return fail(rc);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return fail(-errno);
    fds.push_back(fd);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return fail(-errno);
    if (listen(fd, 64) != 0) return fail(-errno);
    sockaddr_storage b{};
    socklen_t bl = sizeof(b);
    getsockname(fd, reinterpret_cast<sockaddr*>(&b), &bl);
    bound.push_back(EndpointOf(b));
  }
  EventLoop& l0 = IoThreads::Get().loop(0);
  int rc = 0;
  l0.RunSync([&] {
    for (int fd : fds) {
      int r = l0.Add(fd, EPOLLIN, [this, fd](uint32_t) { OnAccept(fd); });
      if (r) rc = r;
    }
    sweep_fd_ = PeriodicTimer(1000);
    l0.Add(sweep_fd_, EPOLLIN, [this](uint32_t) { Sweep(); });
  });
  if (rc) {
    l0.RunSync([&] {
      for (int fd : fds) l0.Remove(fd);
      l0.Remove(sweep_fd_);
      close(sweep_fd_);
      sweep_fd_ = -1;
    });
    return fail(rc);
  }
  std::lock_guard<std::mutex> lk(mu_);
  listen_fds_ = fds;
  bound_ = bound;
  started_ = true;
  return 0;
}

void TcpServer::OnAccept(int lfd) {
  for (int i = 0; i < 64; i++) {
    sockaddr_storage peer{};
    socklen_t pl = sizeof(peer);
    int fd = accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &pl, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    SetNoDelay(fd);
    auto p = std::make_unique<Pending>();
    p->fd = fd;
    p->since_ns = NowNs();
    p->peer = FormatSockaddr(peer);
    sockaddr_storage local{};
    socklen_t ll = sizeof(local);
    getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll);
    p->local = FormatSockaddr(local);
    EventLoop& l0 = IoThreads::Get().loop(0);
    if (l0.Add(fd, EPOLLIN, [this, fd](uint32_t) { OnPendingReadable(fd); }) != 0) {
      close(fd);
      continue;
    }
    pending_[fd] = std::move(p);
  }
}

void TcpServer::ClosePending(int fd) {
  IoThreads::Get().loop(0).Remove(fd);
  close(fd);
  pending_.erase(fd);
}

void TcpServer::Reject(Pending* p, int err, const std::string& why) {
  fprintf(stderr, "ibnbd: tcp server: handshake from %s refused (%s): %s\n", p->peer.c_str(),
          strerrorname_np(-err) ? strerrorname_np(-err) : "?", why.c_str());
  HandshakeRsp rsp;
  rsp.err = err;
  uint8_t b[kHandshakeRspSize];
  EncodeHandshakeRsp(rsp, b);
  ssize_t n = send(p->fd, b, sizeof(b), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)n;
  ClosePending(p->fd);
}

void TcpServer::Sweep() {
  uint64_t t;
  ssize_t n = read(sweep_fd_, &t, sizeof(t));
  (void)n;
  uint64_t now = NowNs();
  std::vector<int> stale;
  for (auto& [fd, p] : pending_)
    if (now - p->since_ns > kHandshakeTimeoutNs) stale.push_back(fd);
  for (int fd : stale) {
    fprintf(stderr, "ibnbd: tcp server: no handshake from %s in time; closing\n",
            pending_[fd]->peer.c_str());
    ClosePending(fd);
  }
}

void TcpServer::OnPendingReadable(int fd) {
  auto it = pending_.find(fd);
  if (it == pending_.end()) return;
  Pending* p = it->second.get();
  ssize_t r = RecvSome(fd, p->buf + p->have, p->need - p->have);
  if (r == -EAGAIN) return;
  if (r <= 0) return ClosePending(fd);
  p->have += static_cast<size_t>(r);
  if (p->have < p->need) return;
  HandshakeReq req;
  uint16_t name_len = 0;
  int rc = DecodeHandshakeReqFixed(p->buf, &req, &name_len);
  if (rc) return Reject(p, rc, "malformed handshake");
  if (p->need == kHandshakeReqSize) {
    p->need += name_len;
    return;
  }
  req.sessname.assign(reinterpret_cast<char*>(p->buf + kHandshakeReqSize), name_len);
  rc = ValidateSessname(req.sessname);
  if (rc) return Reject(p, rc, "invalid session name");
  Handshake(p, req);
}

void TcpServer::Handshake(Pending* pend, HandshakeReq& req) {
  IoThreads& pool = IoThreads::Get();
  std::string key(reinterpret_cast<char*>(req.session_uuid), 16);
  std::shared_ptr<SrvSession> sess;
  std::shared_ptr<SrvConn> conn;
  bool fire_up = false;
  int err = 0;
  std::string why;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopped_) {
      err = -ESHUTDOWN;
      why = "server stopping";
    } else {
      auto it = sessions_.find(key);
      if (it != sessions_.end()) {
        sess = it->second;
        if (sess->name != req.sessname) err = -EINVAL, why = "session uuid reused with another name";
      } else {
        for (auto& [k, s] : sessions_)
          if (s->name == req.sessname) err = -EPERM, why = "session name in use by another session";
        if (!err) {
          sess = std::make_shared<SrvSession>();
          sess->srv = this;
          sess->name = req.sessname;
          memcpy(sess->uuid_bytes, req.session_uuid, 16);
          sess->sid = next_sid_++;
          sess->qd = std::min(req.queue_depth, opt_.queue_depth);
          sess->max_io = std::min(req.max_io_size, opt_.max_io_size);
          sessions_[key] = sess;
          live_sessions_++;
        }
      }
      std::shared_ptr<SrvPath> path;
      if (!err) {
        if (req.queue_depth < sess->qd) err = -EINVAL, why = "queue depth below the session's";
        for (auto& p : sess->paths)
          if (memcmp(p->uuid, req.path_uuid, 16) == 0) path = p;
      }
      if (!err && !path) {
        if (sess->paths.size() >= kMaxPaths) {
          err = -ECONNRESET, why = "too many paths";
        } else {
          path = std::make_shared<SrvPath>();
          memcpy(path->uuid, req.path_uuid, 16);
          path->conn_count = req.conn_count;
          path->conns.resize(req.conn_count);
          path->client_addr = pend->peer;
          path->local_addr = pend->local;
          static std::atomic<unsigned> spread{0};
          path->service_loop = spread.fetch_add(1) % pool.size();
          sess->paths.push_back(path);
        }
      }
      if (!err && path->conn_count != req.conn_count) err = -EINVAL, why = "connection count differs";
      if (!err && path->conns[req.conn_index]) err = -EEXIST, why = "connection index already taken";
      if (!err) {
        unsigned li = req.conn_index == 0 ? path->service_loop : (req.conn_index - 1u) % pool.size();
        conn = std::make_shared<SrvConn>(this, sess, path, req.conn_index, pend->fd, &pool.loop(li));
        path->conns[req.conn_index] = conn;
        sess->open_conns++;
        if (++path->accepted == path->conn_count) {
          path->up = true;
          fire_up = !sess->up;
          sess->up = true;
          if (fire_up) sess->up_reporting = true;
        }
      } else if (sess && sess->paths.empty() && sess->open_conns == 0 && !sess->down_pending) {
        // a session created by this very refused handshake
        sessions_.erase(key);
        live_sessions_--;
      }
    }
  }
  if (err) return Reject(pend, err, why);
  if (fire_up) {
    handler_->OnSessionUp(sess.get());
    bool down;
    {
      std::lock_guard<std::mutex> lk(mu_);
      sess->up_reporting = false;
      down = sess->down_after_up;
      sess->down_after_up = false;
    }
    if (down) ReportDown(sess.get());  // every connection closed while up was being reported
  }
  HandshakeRsp rsp;
  rsp.queue_depth = sess->qd;
  rsp.max_io_size = sess->max_io;
  uint8_t b[kHandshakeRspSize];
  EncodeHandshakeRsp(rsp, b);
  int fd = pend->fd;
  IoThreads::Get().loop(0).Remove(fd);
  pending_.erase(fd);  // the connection owns fd now
  ssize_t n = send(fd, b, sizeof(b), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n != static_cast<ssize_t>(sizeof(b))) {
    KillPath(conn->path, "cannot send the handshake response");
    return;
  }
  conn->loop->Post([conn] { conn->Register(); });
}

void TcpServer::KillPath(const std::shared_ptr<SrvPath>& p, const char* why) {
  if (p->dead.exchange(true)) return;
  std::vector<std::shared_ptr<SrvConn>> conns;
  std::string name;
  {
    std::lock_guard<std::mutex> lk(mu_);
    conns = p->conns;
    for (auto& c : conns) {
      if (!c) continue;
      SrvSession* s = c->sess.get();
      name = s->name;
      auto& v = s->paths;
      v.erase(std::remove(v.begin(), v.end(), p), v.end());
      if (v.empty() && !s->down_pending) {
        s->down_pending = true;
        sessions_.erase(std::string(reinterpret_cast<char*>(s->uuid_bytes), 16));
      }
      break;
    }
  }
  if (!stopped_)
    fprintf(stderr, "ibnbd: tcp server: session '%s' path from %s closed: %s\n", name.c_str(),
            p->client_addr.c_str(), why);
  for (auto& c : conns) {
    if (!c) continue;
    c->loop->Post([c] { c->Close(); });
  }
}

void TcpServer::ConnClosed(SrvSession* s) {
  bool fire = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    s->open_conns--;
    if (s->open_conns == 0 && s->down_pending) {
      fire = s->up;
      s->up = false;
      s->down_pending = false;
      if (fire && s->up_reporting) {
        s->down_after_up = true;  // the handshake thread reports it after OnSessionUp
        return;
      }
      if (!fire) live_sessions_--;
    }
  }
  if (fire) return ReportDown(s);
  cv_.notify_all();
}

// The session stays counted live until the handler has returned: Stop() must not return (and
// the upper layer free its callbacks' state) while OnSessionDown is still running.
void TcpServer::ReportDown(SrvSession* s) {
  // widens the window between the last connection closing and the report, where Stop() once
  // returned early (tests/server-stop.test.ts)
  FaultDelay("IBNBD_FAULT_SESSION_DOWN_DELAY_MS");
  handler_->OnSessionDown(s);
  {
    std::lock_guard<std::mutex> lk(mu_);
    live_sessions_--;
  }
  cv_.notify_all();
}

void TcpServer::Stop() {
  std::vector<std::shared_ptr<SrvPath>> paths;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!started_ || stopped_) return;
    stopped_ = true;
    for (auto& [k, s] : sessions_)
      for (auto& p : s->paths) paths.push_back(p);
  }
  EventLoop& l0 = IoThreads::Get().loop(0);
  l0.RunSync([&] {
    for (int fd : listen_fds_) {
      l0.Remove(fd);
      close(fd);
    }
    listen_fds_.clear();
    if (sweep_fd_ >= 0) {
      l0.Remove(sweep_fd_);
      close(sweep_fd_);
      sweep_fd_ = -1;
    }
    std::vector<int> fds;
    for (auto& [fd, p] : pending_) fds.push_back(fd);
    for (int fd : fds) ClosePending(fd);
  });
  for (auto& p : paths) KillPath(p, "server stopping");
  std::unique_lock<std::mutex> lk(mu_);
  // Connections close on their IO threads; only a stuck loop can make this take long.
  if (!cv_.wait_for(lk, std::chrono::seconds(30), [&] { return live_sessions_ == 0; }))
    fprintf(stderr, "ibnbd: tcp server: %d session(s) still closing after 30 s; stopping anyway\n",
            live_sessions_);
}

}  // namespace

std::unique_ptr<Server> CreateServer(Server::Options options, ServerHandler* handler, int* err) {
  if (handler == nullptr || options.queue_depth == 0 || options.queue_depth > kMaxQueueDepth ||
      options.max_io_size < kMinMaxIoSize || options.max_io_size > kMaxMaxIoSize ||
      options.heartbeat_interval_ms == 0) {
    *err = -EINVAL;
    return nullptr;
  }
  *err = 0;
  return std::make_unique<TcpServer>(std::move(options), handler);
}

}  // namespace ibnbd::transport::tcp
