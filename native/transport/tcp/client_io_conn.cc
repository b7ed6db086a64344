// One IO connection of a TCP client path (docs/tcp-transport.md, "Frames"). It lives on IO
// thread `loop_index` from Register() to Teardown(), and everything here runs there: requests
// submitted on that thread are sent here (the frames one loop batch queued go out with one
// sendmsg, data straight from the caller's iovecs), their responses come back here (READ data
// read straight into the caller's iovecs) and complete here. Any bytes received reset the path's
// heartbeat misses. The only state shared with other threads is the path's atomics (inflight,
// requests, heartbeat misses); a protocol error or a dead socket fails the whole path (PathFailed).
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "transport/tcp/client_internal.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"

namespace ibnbd::transport::tcp::client {
namespace {

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

}  // namespace

int IoConn::Register() {
  return loop->Add(fd, EPOLLIN, [this](uint32_t ev) { OnEvent(ev); });
}

void IoConn::Fail(const char* why) {
  if (!dead) sess->PathFailed(path, gen, why);
  dead = true;  // stop using the socket; teardown is posted and runs after this handler
}

void IoConn::Send(ClientIo* io) {
  uint32_t id = static_cast<uint32_t>(io->transport_private[kTpPermit]);
  inflight[id] = io;
  if (ReadInPlace(io)) inplace_reads_pending++;
  const int64_t before = path->inflight.fetch_add(1, std::memory_order_relaxed);
  path->progress.OnSubmit(NowNs(), before > 0 ? uint64_t(before) : 0);
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

void IoConn::RunBatchEnd() {
  if (!dead) Flush();
}

size_t IoConn::FrameLen(const ClientIo* io) const {
  return kFrameHeaderSize + io->usr_len + (io->dir == Dir::kWrite ? io->data_len : 0);
}

void IoConn::Flush() {
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

void IoConn::OnEvent(uint32_t ev) {
  if (dead) return;
  if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) OnReadable();
  if (!dead && (ev & EPOLLOUT)) Flush();
}

void IoConn::CompleteCur() {
  ClientIo* io = cur;
  cur = nullptr;
  path->inflight.fetch_sub(1, std::memory_order_relaxed);
  path->requests.fetch_add(1, std::memory_order_relaxed);
  path->progress.OnComplete(NowNs());
  sess->Finish(io, cur_err);
}

// Bytes already in rx that belong to the current response's data (a READ of at most
// kCopyReadMax; the read-size policy below keeps larger ones out of rx): copied into the
// destination.
void IoConn::CopyIntoCur(const uint8_t* src, size_t len) {
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
int IoConn::OnHeader(const uint8_t* p) {
  FrameHeader h;
  if (DecodeFrameHeader(p, &h) != 0 || h.kind != FrameKind::kResponse || h.usr_len != 0)
    return -EPROTO;
  if (h.id >= qd || inflight[h.id] == nullptr) return -EPROTO;
  ClientIo* io = inflight[h.id];
  uint32_t expect = (io->dir == Dir::kRead && h.err == 0) ? io->data_len : 0;
  if (h.data_len != expect) return -EPROTO;
  inflight[h.id] = nullptr;
  if (ReadInPlace(io)) inplace_reads_pending--;
  cur = io;
  cur_off = 0;
  cur_err = h.err;
  return 0;
}

// The response in `cur` has all its data (or none to receive): complete it next.
bool IoConn::CurReceived() const {
  return cur != nullptr && (cur_off == cur->data_len || cur->dir != Dir::kRead || cur_err != 0);
}

// How much the next receive may put into rx: a header's worth while a READ whose data is read
// in place may come next, else all the room there is (many small responses per system call).
size_t IoConn::RxRoom() const {
  if (inplace_reads_pending == 0) return kRxBytes - rx_have;
  return rx_have < kFrameHeaderSize ? kFrameHeaderSize - rx_have : 0;
}

void IoConn::OnReadable() {
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
      // What follows in the same readv (rx is empty while data arrives): the next header, or
      // more if no READ to be read in place is pending; the data still lands in place.
      if (sliced == left && rx_have < kFrameHeaderSize) seg[n++] = {rx.data() + rx_have, RxRoom()};
      ssize_t r = ReadvSome(fd, seg, n);
      if (r == -EAGAIN) return;
      if (r <= 0) return Fail(r == 0 ? "connection closed by server" : "receive failed");
      path->hb.OnReceive();
      size_t got = static_cast<size_t>(r);
      size_t asked = 0;
      for (size_t i = 0; i < n; i++) asked += seg[i].iov_len;
      drained = got < asked;
      cur_off += static_cast<uint32_t>(std::min(got, left));
      if (got > left) rx_have += got - left;
      continue;
    }
    // While a large READ may bring data, read one header at a time so its data lands directly
    // in the caller's buffers; otherwise take as many responses as the socket holds.
    if (rx_have < kFrameHeaderSize) {  // else a header came with the previous data
      const size_t want = RxRoom();
      ssize_t r = RecvSome(fd, rx.data() + rx_have, want);
      if (r == -EAGAIN) return;
      if (r <= 0) return Fail(r == 0 ? "connection closed by server" : "receive failed");
      path->hb.OnReceive();
      rx_have += static_cast<size_t>(r);
      drained = static_cast<size_t>(r) < want;
    }
    size_t pos = 0;
    while (rx_have - pos >= kFrameHeaderSize && !dead) {
      if (OnHeader(rx.data() + pos) != 0) return Fail("protocol error from server");
      pos += kFrameHeaderSize;
      if (cur->dir == Dir::kRead && cur_err == 0 && cur->data_len > 0) {
        size_t avail = std::min<size_t>(rx_have - pos, cur->data_len);
        CopyIntoCur(rx.data() + pos, avail);
        pos += avail;
        if (cur_off < cur->data_len) break;
      }
      CompleteCur();
    }
    memmove(rx.data(), rx.data() + pos, rx_have - pos);
    rx_have -= pos;
  }
}

// On this loop, after the path failed or the session closed: every request that was in
// flight here is re-issued on another live path or completed.
void IoConn::Teardown() {
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

}  // namespace ibnbd::transport::tcp::client
