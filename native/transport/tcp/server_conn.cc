// One accepted TCP server connection (docs/tcp-transport.md, "Frames", "Heartbeats and path
// death", "Server side") on its IO thread, from Register() (posted there by the handshake) to
// Close() (posted there by KillPath): frames in (requests handed to ServerHandler::OnRequest,
// heartbeats answered), responses and heartbeats out (what one loop batch queued goes out with
// one sendmsg). Request data lives in recycled data buffers (data_buffers.h); a WRITE payload is
// read into its buffer straight from the socket (but for bytes that came along with its header).
// The service connection (index 0) also runs its path's heartbeat timer. A malformed frame, a
// dead socket or too many missed heartbeats close the whole path (TcpServer::KillPath, which
// takes the server's mu_).
//
// Everything here runs on the connection's loop except SrvSession::Complete (behind Respond()),
// which hops there from any thread; a response that comes after Close() is dropped. Close()
// reports to TcpServer::ConnClosed, which may raise OnSessionDown on this thread.
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/event_loop.h"
#include "common/log.h"
#include "transport/tcp/data_buffers.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"
#include "transport/tcp/server_internal.h"

namespace ibnbd::transport::tcp::server {

void SrvConn::Register() {
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

void SrvConn::Fail(const char* why) {
  if (closed) return;
  srv->KillPath(path, why);
}

void SrvConn::OnTick() {
  uint64_t t;
  ssize_t n = read(tfd, &t, sizeof(t));
  (void)n;
  if (closed) return;
  const uint64_t now = NowNs();
  using V = core::Heartbeat::Verdict;
  const V v = path->hb.OnTick(now, srv->opt().heartbeat_missed_max);
  if (v == V::kDeadMissed) return Fail(core::Heartbeat::Why(v));
  if (v == V::kSend) Queue(FrameKind::kHeartbeat, 0, 0, now, nullptr);
}

void SrvConn::Queue(FrameKind kind, uint32_t id, int32_t err, uint64_t cookie, SrvReq* req) {
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

void SrvConn::RunBatchEnd() {
  if (!closed) Flush();
}

void SrvConn::Flush() {
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

void SrvConn::OnEvent(uint32_t ev) {
  if (closed) return;
  if (ev & EPOLLOUT) Flush();
  if (!closed && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) OnReadable();
}

void SrvConn::Dispatch(SrvReq* r) {
  // Counted before dead is read, the reverse of RetireLocked (server_fence.cc): either the fence
  // waits for this request or this request sees the fence and never runs.
  path->inflight.fetch_add(1);
  if (path->dead.load()) {
    path->inflight.fetch_sub(1);
    delete r;
    return;
  }
  busy[r->id] = 1;
  path->requests.fetch_add(1, std::memory_order_relaxed);
  srv->handler()->OnRequest(&r->io);
}

void SrvConn::BadFrame(const char* what) {
  LogMsg(LogLevel::kWarn, {.component = "tcp-server", .session = sess->name.c_str(), .path = path->client_addr.c_str()},
         "session '%s' from %s: %s; closing the path", sess->name.c_str(), path->client_addr.c_str(), what);
  Fail(what);
}

// false when the connection failed.
bool SrvConn::ParseFrames() {
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
        path->hb.OnAck(NowNs());
      }
      continue;
    }
    if (h.kind == FrameKind::kFence) {
      if (index != 0 || h.usr_len != 16 || h.data_len || h.err)
        return BadFrame("malformed fence"), false;
      if (rx_have - rx_pos < kFrameHeaderSize + 16) break;  // wait for the path uuid
      uint8_t uuid[16];
      memcpy(uuid, p + kFrameHeaderSize, 16);
      rx_pos += kFrameHeaderSize + 16;
      srv->Fence(shared_from_this(), uuid, h.id, h.cookie);
      continue;
    }
    if (h.kind == FrameKind::kResponse || h.kind == FrameKind::kFenceAck)
      return BadFrame("response frame from a client"), false;
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

void SrvConn::OnReadable() {
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
      path->hb.OnReceive();
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
    path->hb.OnReceive();
    rx_have += static_cast<size_t>(r);
    if (!ParseFrames()) return;
    // Less than asked: the socket is empty (epoll reports what comes next), so skip the
    // recv that would only say EAGAIN; at QD1 that is one system call of five per request.
    if (static_cast<size_t>(r) < asked) return;
  }
}

void SrvConn::Respond(SrvReq* r, int err) {
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
void SrvConn::Close() {
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

// Behind Respond(): from any thread, onto the connection's loop.
void SrvSession::Complete(ServerIo* io, int err) {
  auto* r = reinterpret_cast<SrvReq*>(io);
  SrvConn* c = r->conn.get();
  if (c->loop->InLoop()) {
    c->Respond(r, err);
  } else {
    c->loop->Post([r, err] { r->conn->Respond(r, err); });
  }
}

}  // namespace ibnbd::transport::tcp::server
