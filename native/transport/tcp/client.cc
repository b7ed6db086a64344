// TCP client session (docs/tcp-transport.md). One session = paths; a path = a service connection
// (heartbeats) on one IO thread plus one IO connection per IO thread. A request submitted on IO
// thread i goes out on connection i of the chosen path, so sending, receiving and completing all
// happen on that thread, straight between the caller's iovecs and the socket.
//
// Ownership: every connection object is touched only on its own loop (created there by RunSync,
// destroyed there by a posted teardown). Cross-thread state (path state, inflight counters,
// heartbeat misses) is atomic; permits are under a mutex.
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
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "common/event_loop.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"
#include "transport/tcp/tcp.h"

namespace ibnbd::transport::tcp {
namespace {

// ClientIo::transport_private slots
constexpr int kTpPermit = 0;
constexpr int kTpLoop = 1;

std::atomic<uint64_t> next_gen{1};

class TcpClientSession;
struct ClientPath;

// Copies/reads into an iovec array starting at a byte offset.
size_t SliceIov(const iovec* iov, uint32_t cnt, size_t off, size_t len, iovec* out, size_t max) {
  size_t n = 0;
  for (uint32_t i = 0; i < cnt && len > 0 && n < max; i++) {
    size_t l = iov[i].iov_len;
    if (off >= l) {
      off -= l;
      continue;
    }
    size_t take = std::min(l - off, len);
    out[n].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + off;
    out[n].iov_len = take;
    n++;
    len -= take;
    off = 0;
  }
  return n;
}

class Permits {
 public:
  void Init(uint32_t n) {
    std::lock_guard<std::mutex> lk(mu_);
    free_.clear();
    for (uint32_t i = n; i > 0; i--) free_.push_back(i - 1);
  }
  // true: *id is ours. false: io waits in FIFO order and is handed a permit by Put().
  bool GetOrWait(ClientIo* io, uint32_t* id) {
    std::lock_guard<std::mutex> lk(mu_);
    if (waiters_.empty() && !free_.empty()) {
      *id = free_.back();
      free_.pop_back();
      return true;
    }
    waiters_.push_back(io);
    return false;
  }
  // Returns the waiter that now owns the permit, or nullptr.
  ClientIo* Put(uint32_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!waiters_.empty()) {
      ClientIo* w = waiters_.front();
      waiters_.pop_front();
      w->transport_private[kTpPermit] = id;
      return w;
    }
    free_.push_back(id);
    return nullptr;
  }
  std::deque<ClientIo*> TakeWaiters() {
    std::lock_guard<std::mutex> lk(mu_);
    std::deque<ClientIo*> w;
    w.swap(waiters_);
    return w;
  }

 private:
  std::mutex mu_;
  std::vector<uint32_t> free_;
  std::deque<ClientIo*> waiters_;
};

struct IoConn;
struct ServiceConn;

struct ClientPath {
  size_t index = 0;
  PathSpec spec;
  std::string dst_str;
  mutable std::mutex mu;  // src_str
  std::string src_str;
  std::atomic<PathState> state{PathState::kConnecting};
  std::atomic<uint64_t> gen{0};
  std::atomic<uint64_t> failed_gen{0};
  std::atomic<int64_t> inflight{0};
  std::atomic<uint32_t> hb_missed{0};
  std::atomic<uint64_t> hb_rtt_ns{0};
  std::atomic<uint32_t> reconnects{0};
  std::atomic<uint64_t> requests{0};   // completed here (PathInfo::requests)
  std::atomic<uint64_t> failovers{0};  // moved away from here when it died
  std::vector<IoConn*> loop_conn;  // slot i only touched on IO thread i
  ServiceConn* service = nullptr;  // only touched on service_loop
  unsigned service_loop = 0;
  // reconnector thread only
  uint64_t next_attempt_ns = 0;
  int32_t attempts = 0;
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
  void Reissue(ClientIo* io, ClientPath* failed);
  bool closing() const { return closed_.load(); }
  const Options& opt() const { return opt_; }

 private:
  int ConnectPath(ClientPath* p, uint64_t deadline_ns);
  void TeardownPath(ClientPath* p, uint64_t gen, bool sync);
  void PathUp(ClientPath* p);
  ClientPath* Choose(unsigned loop, ClientPath* exclude);
  void Start(ClientIo* io);  // has a permit, on its loop
  void PostDone(ClientIo* io, int err);
  void RaiseLink(LinkEvent ev);
  void ReconnectLoop();

  Options opt_;
  uint8_t uuid_[16];
  std::vector<std::unique_ptr<ClientPath>> paths_;
  std::atomic<uint32_t> qd_{0};
  std::atomic<uint32_t> max_io_{0};
  Permits permits_;
  std::atomic<int> connected_paths_{0};
  std::atomic<bool> ever_connected_{false};
  std::atomic<bool> closed_{false};
  std::atomic<bool> connect_called_{false};
  std::atomic<uint32_t> rr_{0};
  std::mutex rc_mu_;
  std::condition_variable rc_cv_;
  std::thread reconnector_;
  std::mutex close_mu_;
};

// --------------------------------------------------------------------------------------------
// IO connection: requests out, responses in; lives on IO thread `loop_index`.

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
  uint8_t rx[kFrameHeaderSize * 64];
  size_t rx_have = 0;
  ClientIo* cur = nullptr;  // response whose data is being received
  uint32_t cur_off = 0;
  int cur_err = 0;
  uint32_t reads_pending = 0;  // READs in flight that will bring data back

  IoConn(TcpClientSession* s, ClientPath* p, uint64_t g, int f, EventLoop* l, uint32_t q)
      : sess(s), path(p), gen(g), fd(f), loop(l), loop_index(l->index()), qd(q), inflight(q),
        hdrs(static_cast<size_t>(q) * kFrameHeaderSize) {}

  int Register() {
    return loop->Add(fd, EPOLLIN, [this](uint32_t ev) { OnEvent(ev); });
  }

  void Fail(const char* why) {
    if (!dead) sess->PathFailed(path, gen, why);
    dead = true;  // stop using the socket; teardown is posted and runs after this handler
  }

  void Send(ClientIo* io) {
    uint32_t id = static_cast<uint32_t>(io->transport_private[kTpPermit]);
    inflight[id] = io;
    if (io->dir == Dir::kRead && io->data_len > 0) reads_pending++;
    path->inflight.fetch_add(1, std::memory_order_relaxed);
    FrameHeader h;
    h.kind = io->dir == Dir::kRead ? FrameKind::kReadReq : FrameKind::kWriteReq;
    h.usr_len = io->usr_len;
    h.id = id;
    h.data_len = io->data_len;
    EncodeFrameHeader(h, &hdrs[static_cast<size_t>(id) * kFrameHeaderSize]);
    sendq.push_back(io);
    // Sent at the end of this loop batch: the requests one virtqueue kick brings go out with
    // one sendmsg (while EPOLLOUT is armed, the socket is full and OnEvent flushes).
    if (!dead && !want_out) loop->AtBatchEnd(this);
  }

  void RunBatchEnd() override {
    if (!dead) Flush();
  }

  size_t FrameLen(const ClientIo* io) const {
    return kFrameHeaderSize + io->usr_len + (io->dir == Dir::kWrite ? io->data_len : 0);
  }

  void Flush() {
    while (!sendq.empty() && !dead) {
      iovec iov[512];
      size_t n = 0;
      size_t skip = head_off;
      for (size_t qi = 0; qi < sendq.size() && n + 70 < 512; qi++) {
        ClientIo* io = sendq[qi];
        uint32_t id = static_cast<uint32_t>(io->transport_private[kTpPermit]);
        size_t total = FrameLen(io);
        if (skip >= total) {  // cannot happen: fully sent frames are popped
          skip -= total;
          continue;
        }
        size_t fixed = kFrameHeaderSize + io->usr_len;
        if (skip < kFrameHeaderSize) {
          iov[n++] = {&hdrs[static_cast<size_t>(id) * kFrameHeaderSize + skip],
                      kFrameHeaderSize - skip};
          skip = 0;
        } else {
          skip -= kFrameHeaderSize;
        }
        if (io->usr_len) {
          if (skip < io->usr_len) {
            iov[n++] = {const_cast<uint8_t*>(static_cast<const uint8_t*>(io->usr)) + skip,
                        io->usr_len - skip};
            skip = 0;
          } else {
            skip -= io->usr_len;
          }
        }
        (void)fixed;
        if (io->dir == Dir::kWrite && io->data_len > 0) {
          // a long scatter list may take several sendmsg calls: slice from where we are
          size_t got = SliceIov(io->iov, io->iov_cnt, skip, io->data_len - skip, iov + n, 64);
          n += got;
          skip = 0;
          if (io->iov_cnt > 64) break;  // do not put anything after a possibly truncated frame
        }
      }
      ssize_t w = SendvSome(fd, iov, n);
      if (w == -EAGAIN) break;
      if (w < 0) {
        Fail("send failed");
        return;
      }
      size_t left = static_cast<size_t>(w);
      while (left > 0 && !sendq.empty()) {
        size_t rem = FrameLen(sendq.front()) - head_off;
        if (left >= rem) {
          left -= rem;
          head_off = 0;
          sendq.pop_front();
        } else {
          head_off += left;
          left = 0;
        }
      }
    }
    bool need = !sendq.empty() && !dead;
    if (need != want_out) {
      want_out = need;
      loop->Modify(fd, need ? (EPOLLIN | EPOLLOUT) : EPOLLIN);
    }
  }

  void OnEvent(uint32_t ev) {
    if (dead) return;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) OnReadable();
    if (!dead && (ev & EPOLLOUT)) Flush();
  }

  void CompleteCur() {
    ClientIo* io = cur;
    cur = nullptr;
    path->inflight.fetch_sub(1, std::memory_order_relaxed);
    path->requests.fetch_add(1, std::memory_order_relaxed);
    sess->Finish(io, cur_err);
  }

  // Bytes already in rx that belong to the current response's data (never happens with the
  // read-size policy below, kept for robustness): copied into the destination.
  void CopyIntoCur(const uint8_t* src, size_t len) {
    iovec seg[64];
    size_t off = 0;
    while (len > 0) {
      size_t n = SliceIov(cur->iov, cur->iov_cnt, cur_off, len, seg, 64);
      if (n == 0) break;
      for (size_t i = 0; i < n; i++) {
        memcpy(seg[i].iov_base, src + off, seg[i].iov_len);
        off += seg[i].iov_len;
        cur_off += static_cast<uint32_t>(seg[i].iov_len);
        len -= seg[i].iov_len;
      }
    }
  }

  // 0, or -EPROTO on a frame the server must not send.
  int OnHeader(const uint8_t* p) {
    FrameHeader h;
    if (DecodeFrameHeader(p, &h) != 0 || h.kind != FrameKind::kResponse || h.usr_len != 0)
      return -EPROTO;
    if (h.id >= qd || inflight[h.id] == nullptr) return -EPROTO;
    ClientIo* io = inflight[h.id];
    uint32_t expect = (io->dir == Dir::kRead && h.err == 0) ? io->data_len : 0;
    if (h.data_len != expect) return -EPROTO;
    inflight[h.id] = nullptr;
    if (io->dir == Dir::kRead && io->data_len > 0) reads_pending--;
    cur = io;
    cur_off = 0;
    cur_err = h.err;
    return 0;
  }

  // The response in `cur` has all its data (or none to receive): complete it next.
  bool CurReceived() const {
    return cur != nullptr && (cur_off == cur->data_len || cur->dir != Dir::kRead || cur_err != 0);
  }

  void OnReadable() {
    bool drained = false;  // a read returned less than asked: the socket is empty
    for (int rounds = 0; !dead; rounds++) {
      // Fair to other fds after 64 rounds, but never with a complete response or header
      // already buffered: nothing would wake us for it (epoll only sees the socket). Once the
      // socket is empty, stop without the read that would only say EAGAIN.
      if ((rounds >= 64 || drained) && !CurReceived() && rx_have < kFrameHeaderSize) break;
      if (cur != nullptr) {
        if (CurReceived()) {
          CompleteCur();
          continue;
        }
        iovec seg[65];
        const size_t left = cur->data_len - cur_off;
        size_t n = SliceIov(cur->iov, cur->iov_cnt, cur_off, left, seg, 64);
        size_t sliced = 0;
        for (size_t i = 0; i < n; i++) sliced += seg[i].iov_len;
        // The next response's header in the same readv (rx is empty while data arrives): one
        // system call per READ response instead of two, and the data still lands in place.
        if (sliced == left && rx_have < kFrameHeaderSize)
          seg[n++] = {rx + rx_have, kFrameHeaderSize - rx_have};
        ssize_t r = ReadvSome(fd, seg, n);
        if (r == -EAGAIN) return;
        if (r <= 0) return Fail(r == 0 ? "connection closed by server" : "receive failed");
        path->hb_missed.store(0, std::memory_order_relaxed);
        size_t got = static_cast<size_t>(r);
        size_t asked = 0;
        for (size_t i = 0; i < n; i++) asked += seg[i].iov_len;
        drained = got < asked;
        cur_off += static_cast<uint32_t>(std::min(got, left));
        if (got > left) rx_have += got - left;
        continue;
      }
      // While a READ may bring data, read one header at a time so the data lands directly in
      // the caller's buffers; otherwise batch many response headers per syscall.
      if (rx_have < kFrameHeaderSize) {  // else a header came with the previous data
        size_t want = reads_pending ? kFrameHeaderSize - rx_have : sizeof(rx) - rx_have;
        ssize_t r = RecvSome(fd, rx + rx_have, want);
        if (r == -EAGAIN) return;
        if (r <= 0) return Fail(r == 0 ? "connection closed by server" : "receive failed");
        path->hb_missed.store(0, std::memory_order_relaxed);
        rx_have += static_cast<size_t>(r);
        drained = static_cast<size_t>(r) < want;
      }
      size_t pos = 0;
      while (rx_have - pos >= kFrameHeaderSize && !dead) {
        if (OnHeader(rx + pos) != 0) return Fail("protocol error from server");
        pos += kFrameHeaderSize;
        if (cur->dir == Dir::kRead && cur_err == 0 && cur->data_len > 0) {
          size_t avail = std::min<size_t>(rx_have - pos, cur->data_len);
          CopyIntoCur(rx + pos, avail);
          pos += avail;
          if (cur_off < cur->data_len) break;
        }
        CompleteCur();
      }
      memmove(rx, rx + pos, rx_have - pos);
      rx_have -= pos;
    }
  }

  // On this loop, after the path failed or the session closed: every request that was in
  // flight here is re-issued on another live path or completed.
  void Teardown() {
    loop->CancelBatchEnd(this);
    loop->Remove(fd);
    close(fd);
    fd = -1;
    dead = true;
    std::vector<ClientIo*> lost;
    if (cur) lost.push_back(cur);
    cur = nullptr;
    for (auto*& io : inflight) {
      if (io) lost.push_back(io);
      io = nullptr;
    }
    sendq.clear();
    for (ClientIo* io : lost) {
      path->inflight.fetch_sub(1, std::memory_order_relaxed);
      if (sess->closing())
        sess->Finish(io, -ECONNABORTED);
      else
        sess->Reissue(io, path);
    }
  }
};

// --------------------------------------------------------------------------------------------
// Service connection: heartbeats only.

struct ServiceConn {
  TcpClientSession* sess = nullptr;
  ClientPath* path = nullptr;
  uint64_t gen = 0;
  int fd = -1;
  int tfd = -1;
  EventLoop* loop = nullptr;
  std::string out;
  uint8_t rx[kFrameHeaderSize * 8];
  size_t rx_have = 0;
  bool dead = false;

  int Register(uint32_t interval_ms) {
    tfd = PeriodicTimer(interval_ms);
    if (tfd < 0) return -errno;
    int rc = loop->Add(fd, EPOLLIN, [this](uint32_t ev) { OnEvent(ev); });
    if (rc) return rc;
    return loop->Add(tfd, EPOLLIN, [this](uint32_t) { OnTick(); });
  }

  void Fail(const char* why) {
    if (!dead) sess->PathFailed(path, gen, why);
    dead = true;
  }

  void SendFrame(FrameKind kind, uint64_t cookie) {
    FrameHeader h;
    h.kind = kind;
    h.cookie = cookie;
    uint8_t b[kFrameHeaderSize];
    EncodeFrameHeader(h, b);
    out.append(reinterpret_cast<char*>(b), sizeof(b));
    Flush();
  }

  void Flush() {
    while (!out.empty() && !dead) {
      iovec v{out.data(), out.size()};
      ssize_t w = SendvSome(fd, &v, 1);
      if (w < 0) {
        if (w != -EAGAIN) Fail("send failed");
        break;
      }
      out.erase(0, static_cast<size_t>(w));
    }
    if (!dead) loop->Modify(fd, out.empty() ? EPOLLIN : (EPOLLIN | EPOLLOUT));
  }

  void OnTick() {
    uint64_t ticks;
    ssize_t n = read(tfd, &ticks, sizeof(ticks));
    (void)n;
    if (dead) return;
    uint32_t missed = path->hb_missed.load();
    if (missed > sess->opt().heartbeat_missed_max) return Fail("heartbeat missed");
    path->hb_missed.fetch_add(1);
    if (missed == 0) SendFrame(FrameKind::kHeartbeat, NowNs());
  }

  void OnEvent(uint32_t ev) {
    if (dead) return;
    if (ev & EPOLLOUT) Flush();
    if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    for (;;) {
      ssize_t r = RecvSome(fd, rx + rx_have, sizeof(rx) - rx_have);
      if (r == -EAGAIN) return;
      if (r <= 0) return Fail(r == 0 ? "connection closed by server" : "receive failed");
      rx_have += static_cast<size_t>(r);
      size_t pos = 0;
      for (; rx_have - pos >= kFrameHeaderSize; pos += kFrameHeaderSize) {
        FrameHeader h;
        if (DecodeFrameHeader(rx + pos, &h) != 0 || h.usr_len || h.data_len)
          return Fail("protocol error from server");
        path->hb_missed.store(0);
        if (h.kind == FrameKind::kHeartbeat) {
          SendFrame(FrameKind::kHeartbeatAck, h.cookie);
        } else if (h.kind == FrameKind::kHeartbeatAck) {
          uint64_t now = NowNs();
          if (h.cookie <= now) path->hb_rtt_ns.store(now - h.cookie);
        } else {
          return Fail("unexpected frame on the service connection");
        }
        if (dead) return;
      }
      memmove(rx, rx + pos, rx_have - pos);
      rx_have -= pos;
    }
  }

  void Teardown() {
    loop->Remove(fd);
    loop->Remove(tfd);
    close(fd);
    close(tfd);
    dead = true;
  }
};

// --------------------------------------------------------------------------------------------

TcpClientSession::TcpClientSession(Options opt) : opt_(std::move(opt)) {
  RandomUuid(uuid_);
  unsigned n = IoThreads::Get().size();
  for (size_t i = 0; i < opt_.paths.size(); i++) {
    auto p = std::make_unique<ClientPath>();
    p->index = i;
    p->spec = opt_.paths[i];
    p->dst_str = opt_.paths[i].dst.kind + ":" + opt_.paths[i].dst.addr + ":" +
                 std::to_string(opt_.paths[i].dst.port);
    p->loop_conn.assign(n, nullptr);
    p->service_loop = static_cast<unsigned>(i % n);
    paths_.push_back(std::move(p));
  }
}

void TcpClientSession::RaiseLink(LinkEvent ev) {
  if (!opt_.on_link_event) return;
  auto cb = opt_.on_link_event;
  IoThreads::Get().loop(0).Post([cb, ev] { cb(ev); });
}

int TcpClientSession::ConnectPath(ClientPath* p, uint64_t deadline_ns) {
  IoThreads& pool = IoThreads::Get();
  unsigned n = pool.size();
  uint16_t conn_count = static_cast<uint16_t>(n + 1);
  sockaddr_storage dst, src;
  socklen_t dst_len = 0, src_len = 0;
  int rc = ToSockaddr(p->spec.dst, &dst, &dst_len);
  if (rc) return rc;
  if (p->spec.src) {
    rc = ToSockaddr(*p->spec.src, &src, &src_len);
    if (rc) return rc;
    reinterpret_cast<sockaddr_in*>(&src)->sin_port = 0;  // same offset in sockaddr_in6
  }
  HandshakeReq req;
  req.conn_count = conn_count;
  req.queue_depth = qd_.load() ? qd_.load() : opt_.queue_depth;
  req.max_io_size = opt_.max_io_size;
  memcpy(req.session_uuid, uuid_, 16);
  RandomUuid(req.path_uuid);  // one per path incarnation: a reconnect is a new server path
  req.sessname = opt_.sessname;

  std::vector<int> fds(conn_count, -1);
  auto close_all = [&] {
    for (int& fd : fds)
      if (fd >= 0) close(fd), fd = -1;
  };
  HandshakeRsp first{};
  for (uint16_t i = 0; i < conn_count && rc == 0; i++) {
    int fd = socket(dst.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      rc = -errno;
      break;
    }
    fds[i] = fd;
    SetNoDelay(fd);
    if (p->spec.src && bind(fd, reinterpret_cast<sockaddr*>(&src), src_len) != 0) {
      rc = -errno;
      break;
    }
    rc = ConnectBefore(fd, dst, dst_len, deadline_ns);
    if (rc) break;
    uint8_t buf[kHandshakeReqSize + kMaxSessnameLen];
    req.conn_index = i;
    size_t len = EncodeHandshakeReq(req, buf);
    rc = SendAllBefore(fd, buf, len, deadline_ns);
  }
  for (uint16_t i = 0; i < conn_count && rc == 0; i++) {
    uint8_t buf[kHandshakeRspSize];
    rc = RecvAllBefore(fds[i], buf, sizeof(buf), deadline_ns);
    if (rc) break;
    HandshakeRsp rsp;
    rc = DecodeHandshakeRsp(buf, &rsp);
    if (rc == 0 && rsp.err != 0) rc = rsp.err;
    if (rc == 0 && (rsp.queue_depth == 0 || rsp.queue_depth > req.queue_depth ||
                    rsp.max_io_size < kMinMaxIoSize || rsp.max_io_size > req.max_io_size))
      rc = -EPROTO;
    if (rc == 0 && i > 0 &&
        (rsp.queue_depth != first.queue_depth || rsp.max_io_size != first.max_io_size))
      rc = -EPROTO;
    if (i == 0) first = rsp;
  }
  if (rc) {
    close_all();
    return rc;
  }
  // Held until the connections are installed: Close() then either sees them or runs first.
  std::unique_lock<std::mutex> close_lk(close_mu_);
  {
    if (closed_.load()) {
      close_all();
      return -ECONNABORTED;
    }
    if (qd_.load() == 0) {
      qd_.store(first.queue_depth);
      max_io_.store(first.max_io_size);
      permits_.Init(first.queue_depth);
    } else if (first.queue_depth != qd_.load()) {
      close_all();  // RTRS refuses a path whose queue depth changed: permits are shared
      return -EPROTO;
    } else if (first.max_io_size < max_io_.load()) {
      max_io_.store(first.max_io_size);
    }
  }
  sockaddr_storage local{};
  socklen_t ll = sizeof(local);
  getsockname(fds[0], reinterpret_cast<sockaddr*>(&local), &ll);
  {
    std::lock_guard<std::mutex> lk(p->mu);
    p->src_str = FormatSockaddr(local);
  }
  for (int fd : fds) SetNonBlocking(fd, true);

  uint64_t gen = next_gen.fetch_add(1);
  p->gen.store(gen);
  p->hb_missed.store(0);
  p->state.store(PathState::kConnecting);
  uint32_t qd = qd_.load();
  int reg_rc = 0;
  for (unsigned i = 0; i < n; i++) {
    EventLoop& l = pool.loop(i);
    int fd = fds[i + 1];
    l.RunSync([&, fd, i] {
      auto* c = new IoConn(this, p, gen, fd, &l, qd);
      p->loop_conn[i] = c;
      int r = c->Register();
      if (r) reg_rc = r;
    });
  }
  EventLoop& sl = pool.loop(p->service_loop);
  sl.RunSync([&] {
    auto* s = new ServiceConn();
    s->sess = this;
    s->path = p;
    s->gen = gen;
    s->fd = fds[0];
    s->loop = &sl;
    p->service = s;
    int r = s->Register(opt_.heartbeat_interval_ms);
    if (r) reg_rc = r;
  });
  if (reg_rc != 0 || p->failed_gen.load() == gen) {
    TeardownPath(p, gen, true);
    return reg_rc ? reg_rc : -ECONNRESET;
  }
  PathUp(p);
  close_lk.unlock();
  return 0;
}

void TcpClientSession::PathUp(ClientPath* p) {
  p->state.store(PathState::kConnected);
  if (connected_paths_.fetch_add(1) == 0) {
    RaiseLink(ever_connected_.exchange(true) ? LinkEvent::kReconnected : LinkEvent::kConnected);
  }
  // a failure that raced with the state change above
  if (p->failed_gen.load() == p->gen.load()) PathFailed(p, p->gen.load(), "failed while connecting");
}

void TcpClientSession::TeardownPath(ClientPath* p, uint64_t gen, bool sync) {
  IoThreads& pool = IoThreads::Get();
  for (unsigned i = 0; i < pool.size(); i++) {
    auto fn = [p, gen, i] {
      IoConn* c = p->loop_conn[i];
      if (c && c->gen == gen) {
        p->loop_conn[i] = nullptr;
        c->Teardown();
        delete c;
      }
    };
    if (sync)
      pool.loop(i).RunSync(fn);
    else
      pool.loop(i).Post(fn);
  }
  auto sfn = [p, gen] {
    ServiceConn* s = p->service;
    if (s && s->gen == gen) {
      p->service = nullptr;
      s->Teardown();
      delete s;
    }
  };
  if (sync)
    pool.loop(p->service_loop).RunSync(sfn);
  else
    pool.loop(p->service_loop).Post(sfn);
}

void TcpClientSession::PathFailed(ClientPath* p, uint64_t gen, const char* why) {
  if (p->gen.load() != gen) return;
  p->failed_gen.store(gen);
  PathState expect = PathState::kConnected;
  PathState next = closed_.load() ? PathState::kClosed : PathState::kReconnecting;
  if (!p->state.compare_exchange_strong(expect, next)) return;  // not up yet, or already down
  fprintf(stderr, "ibnbd: tcp session %s path %s: %s\n", opt_.sessname.c_str(),
          p->dst_str.c_str(), why);
  TeardownPath(p, gen, false);
  if (connected_paths_.fetch_sub(1) == 1 && !closed_.load()) RaiseLink(LinkEvent::kDisconnected);
  {
    std::lock_guard<std::mutex> lk(rc_mu_);
    p->next_attempt_ns = NowNs() + static_cast<uint64_t>(opt_.reconnect_delay_ms) * 1000000ull;
  }
  rc_cv_.notify_all();
}

ClientPath* TcpClientSession::Choose(unsigned loop, ClientPath* exclude) {
  ClientPath* best = nullptr;
  size_t np = paths_.size();
  if (opt_.mp_policy == "round-robin") {
    uint32_t start = rr_.fetch_add(1, std::memory_order_relaxed);
    for (size_t k = 0; k < np; k++) {
      ClientPath* p = paths_[(start + k) % np].get();
      if (p != exclude && p->state.load() == PathState::kConnected && p->loop_conn[loop] &&
          !p->loop_conn[loop]->dead)
        return p;
    }
    return nullptr;
  }
  bool latency = opt_.mp_policy == "min-latency";
  uint64_t best_v = UINT64_MAX;
  for (auto& up : paths_) {
    ClientPath* p = up.get();
    if (p == exclude || p->state.load() != PathState::kConnected || !p->loop_conn[loop] ||
        p->loop_conn[loop]->dead)
      continue;
    uint64_t v = latency ? p->hb_rtt_ns.load() : static_cast<uint64_t>(p->inflight.load());
    if (best == nullptr || v < best_v) {
      best = p;
      best_v = v;
    }
  }
  return best;
}

void TcpClientSession::PostDone(ClientIo* io, int err) {
  EventLoop* l = EventLoop::Current();
  if (l)
    l->Post([io, err] { io->done(io, err); });
  else
    io->done(io, err);
}

void TcpClientSession::Submit(ClientIo* io) {
  EventLoop* l = EventLoop::Current();
  if (l == nullptr || l->index() >= IoThreads::Get().size()) {
    fprintf(stderr, "ibnbd: ClientSession::Submit outside an IO thread\n");
    return PostDone(io, -EINVAL);
  }
  io->transport_private[kTpLoop] = l->index();
  if (io->usr_len > kMaxUsrLen || io->data_len > max_io_.load() ||
      (io->data_len > 0 && io->iov == nullptr))
    return PostDone(io, -EINVAL);
  if (closed_.load()) return PostDone(io, -ECONNABORTED);
  if (connected_paths_.load() == 0) return PostDone(io, -ENOTCONN);
  uint32_t id;
  if (!permits_.GetOrWait(io, &id)) return;  // Put() hands it over later
  io->transport_private[kTpPermit] = id;
  Start(io);
}

void TcpClientSession::Start(ClientIo* io) {
  if (closed_.load()) return Finish(io, -ECONNABORTED);
  unsigned loop = static_cast<unsigned>(io->transport_private[kTpLoop]);
  ClientPath* p = Choose(loop, nullptr);
  if (!p) return Finish(io, -ENOTCONN);
  p->loop_conn[loop]->Send(io);
}

void TcpClientSession::Reissue(ClientIo* io, ClientPath* failed) {
  unsigned loop = static_cast<unsigned>(io->transport_private[kTpLoop]);
  ClientPath* p = Choose(loop, failed);
  if (!p) return Finish(io, -EIO);
  failed->failovers.fetch_add(1, std::memory_order_relaxed);
  p->loop_conn[loop]->Send(io);  // same permit, as RTRS fails over
}

void TcpClientSession::Finish(ClientIo* io, int err) {
  uint32_t id = static_cast<uint32_t>(io->transport_private[kTpPermit]);
  ClientIo* next = permits_.Put(id);
  io->done(io, err);
  if (next) {
    unsigned loop = static_cast<unsigned>(next->transport_private[kTpLoop]);
    IoThreads::Get().loop(loop).Post([this, next] { Start(next); });
  }
}

int TcpClientSession::Connect(int timeout_ms) {
  if (connect_called_.exchange(true)) return connected() ? 0 : -EALREADY;
  uint64_t deadline = NowNs() + static_cast<uint64_t>(std::max(timeout_ms, 1)) * 1000000ull;
  int last = -ENOTCONN;
  int ok = 0;
  for (auto& p : paths_) {
    int rc = ConnectPath(p.get(), deadline);
    if (rc == 0) {
      ok++;
    } else {
      last = rc;
      std::lock_guard<std::mutex> lk(rc_mu_);
      p->state.store(PathState::kReconnecting);
      p->next_attempt_ns = NowNs() + static_cast<uint64_t>(opt_.reconnect_delay_ms) * 1000000ull;
    }
  }
  if (ok == 0) {
    for (auto& p : paths_) p->state.store(PathState::kClosed);
    return last;
  }
  reconnector_ = std::thread([this] { ReconnectLoop(); });
  return 0;
}

void TcpClientSession::ReconnectLoop() {
  pthread_setname_np(pthread_self(), "ibnbd-reconn");
  std::unique_lock<std::mutex> lk(rc_mu_);
  while (!closed_.load()) {
    uint64_t now = NowNs();
    uint64_t wake = now + 1000000000ull;
    for (auto& p : paths_) {
      if (p->state.load() != PathState::kReconnecting) continue;
      if (p->next_attempt_ns > now) {
        wake = std::min(wake, p->next_attempt_ns);
        continue;
      }
      if (opt_.max_reconnect_attempts >= 0 && p->attempts >= opt_.max_reconnect_attempts) {
        p->state.store(PathState::kClosed);
        continue;
      }
      p->attempts++;
      p->reconnects.fetch_add(1);
      lk.unlock();
      int rc = ConnectPath(p.get(), NowNs() + 5000000000ull);
      lk.lock();
      if (rc == 0) {
        p->attempts = 0;
      } else if (p->state.load() != PathState::kClosed) {
        p->state.store(PathState::kReconnecting);
        p->next_attempt_ns = NowNs() + static_cast<uint64_t>(opt_.reconnect_delay_ms) * 1000000ull;
      }
      now = NowNs();
    }
    rc_cv_.wait_for(lk, std::chrono::nanoseconds(wake > now ? wake - now : 0));
  }
}

void TcpClientSession::Close() {
  {
    std::lock_guard<std::mutex> lk(close_mu_);
    if (closed_.exchange(true)) return;
  }
  rc_cv_.notify_all();
  if (reconnector_.joinable()) reconnector_.join();
  for (auto& p : paths_) {
    PathState prev = p->state.exchange(PathState::kClosed);
    TeardownPath(p.get(), p->gen.load(), true);
    if (prev == PathState::kConnected) connected_paths_.fetch_sub(1);
  }
  for (ClientIo* io : permits_.TakeWaiters()) {
    unsigned loop = static_cast<unsigned>(io->transport_private[kTpLoop]);
    IoThreads::Get().loop(loop).Post([io] { io->done(io, -ECONNABORTED); });
  }
  // Twice: completions posted while the first pass ran (a Submit that raced with Close) are
  // delivered before Close returns, so callers may free what done() uses right after.
  IoThreads& pool = IoThreads::Get();
  for (int pass = 0; pass < 2; pass++)
    for (unsigned i = 0; i < pool.size(); i++) pool.loop(i).RunSync([] {});
}

std::vector<PathInfo> TcpClientSession::Paths() const {
  std::vector<PathInfo> out;
  for (auto& p : paths_) {
    PathInfo pi;
    {
      std::lock_guard<std::mutex> lk(p->mu);
      pi.src = p->src_str;
    }
    pi.dst = p->dst_str;
    pi.state = p->state.load();
    int64_t inf = p->inflight.load();
    pi.inflight = inf > 0 ? static_cast<uint64_t>(inf) : 0;
    pi.reconnects = p->reconnects.load();
    pi.hb_rtt_ns = p->hb_rtt_ns.load();
    pi.requests = p->requests.load(std::memory_order_relaxed);
    pi.failovers = p->failovers.load(std::memory_order_relaxed);
    out.push_back(pi);
  }
  return out;
}

}  // namespace

std::shared_ptr<ClientSession> CreateClientSession(ClientSession::Options options, int* err) {
  if (options.paths.empty() || options.paths.size() > kMaxPaths) {
    *err = -EINVAL;
    return nullptr;
  }
  if (ValidateSessname(options.sessname) != 0 || options.queue_depth == 0 ||
      options.queue_depth > kMaxQueueDepth || options.max_io_size < kMinMaxIoSize ||
      options.max_io_size > kMaxMaxIoSize || options.heartbeat_interval_ms == 0) {
    *err = -EINVAL;
    return nullptr;
  }
  if (options.mp_policy != "min-inflight" && options.mp_policy != "round-robin" &&
      options.mp_policy != "min-latency") {
    *err = -EINVAL;
    return nullptr;
  }
  for (auto& ps : options.paths) {
    sockaddr_storage ss;
    socklen_t l;
    int rc = ToSockaddr(ps.dst, &ss, &l);
    if (rc == 0 && ps.src) rc = ToSockaddr(*ps.src, &ss, &l);
    if (rc) {
      *err = rc;
      return nullptr;
    }
  }
  *err = 0;
  return std::make_shared<TcpClientSession>(std::move(options));
}

}  // namespace ibnbd::transport::tcp
