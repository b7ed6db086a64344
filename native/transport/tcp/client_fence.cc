// Requests lost with a TCP path, and the fences that make sending them again safe
// (docs/tcp-transport.md, "Fencing"). A request in flight on a path that died may still run on
// the server, late: its bytes can still be in the network, or the server can still be executing
// it. Sent again elsewhere and answered, it lets the guest write the same blocks anew, and the
// stale copy would then land last. So nothing lost with a path is sent again before the server
// has retired that path's connections and finished their requests:
//   * while another path is up, the lost requests are parked here and a fence round goes out on
//     a live path's service connection (one FENCE frame per lost incarnation); when every
//     FENCE_ACK of the round is in, they are sent again on a live path under their permits;
//   * with no path left they complete with kLostWithPath (the device holds them), and the next
//     path to connect fences every lost incarnation before it is marked up (FenceBeforeUp; its
//     own old incarnation the server retires at the handshake).
// A round whose path dies is abandoned; the next one covers its losses as well.
//
// Threads: Reissue on the lost request's loop; OnFenceAck on the round path's service loop;
// NoteLost where PathFailed runs; FenceBeforeUp on the connecting thread; a resend is posted to
// the request's loop. fence_mu_ guards the fence state (client_internal.h); nothing is called
// back under it, only posted.
#include <cerrno>
#include <cstring>
#include <vector>

#include "common/event_loop.h"
#include "transport/core/policy.h"
#include "transport/tcp/client_internal.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"

namespace ibnbd::transport::tcp::client {

void TcpClientSession::NoteLost(ClientPath* p) {
  std::lock_guard<std::mutex> lk(fence_mu_);
  unfenced_.push_back({p, p->incarnation.load()});
  if (fence_via_ == p) {  // the round's own path died: its acks will never come
    fence_via_ = nullptr;
    if (!parked_.empty()) StartFenceRoundLocked();
  }
}

void TcpClientSession::Reissue(ClientIo* io, ClientPath* failed) {
  std::lock_guard<std::mutex> lk(fence_mu_);
  parked_.push_back({io, failed});
  if (fence_via_ == nullptr) StartFenceRoundLocked();
}

// Under fence_mu_, with no round in flight: fences what is unfenced through a live path, or,
// with nothing left to fence or no path to fence through, hands the parked requests on.
void TcpClientSession::StartFenceRoundLocked() {
  ClientPath* via = nullptr;
  if (!unfenced_.empty() && !closed_.load()) {
    for (auto& p : paths_)
      if (p->state.load() == PathState::kConnected) {
        via = p.get();
        break;
      }
  }
  if (via == nullptr) {
    // fenced: send again; no path to fence through: back to the device, which holds them
    const bool fenced = unfenced_.empty();
    for (const Parked& pk : parked_) {
      unsigned loop = static_cast<unsigned>(pk.io->transport_private[kTpLoop]);
      IoThreads::Get().loop(loop).Post([this, pk, fenced] {
        if (fenced) return Resend(pk.io, pk.failed);
        Finish(pk.io, core::LostError(core::FateOfLost(closed_.load(), false)));
      });
    }
    parked_.clear();
    return;
  }
  fence_via_ = via;
  fence_gen_ = via->gen.load();
  fence_cookie_++;
  fence_round_ = unfenced_;
  fence_acks_left_ = static_cast<uint32_t>(fence_round_.size());
  struct Frame {
    uint8_t uuid[16];
    uint32_t incarnation;
  };
  std::vector<Frame> frames;
  for (const Lost& l : fence_round_) {
    Frame f;
    memcpy(f.uuid, l.path->uuid, 16);
    f.incarnation = l.incarnation;
    frames.push_back(f);
  }
  IoThreads::Get().loop(via->service_loop).Post([this, via, gen = fence_gen_, cookie = fence_cookie_, frames] {
    for (const Frame& f : frames) SendFence(via, gen, f.uuid, f.incarnation, cookie);
  });
}

void TcpClientSession::OnFenceAck(ClientPath* via, uint64_t gen, uint64_t cookie) {
  std::lock_guard<std::mutex> lk(fence_mu_);
  if (fence_via_ != via || fence_gen_ != gen || fence_cookie_ != cookie || fence_acks_left_ == 0) return;
  if (--fence_acks_left_ > 0) return;
  for (const Lost& done : fence_round_)
    for (auto it = unfenced_.begin(); it != unfenced_.end(); ++it)
      if (it->path == done.path && it->incarnation == done.incarnation) {
        unfenced_.erase(it);
        break;
      }
  fence_round_.clear();
  fence_via_ = nullptr;
  StartFenceRoundLocked();  // another loss meanwhile: one more round; else the resends
}

// On the request's loop: the old Reissue, now that the lost path is fenced.
void TcpClientSession::Resend(ClientIo* io, ClientPath* failed) {
  unsigned loop = static_cast<unsigned>(io->transport_private[kTpLoop]);
  ClientPath* p = nullptr;
  if (!closed_.load()) {
    p = Choose(loop, failed);
    if (!p) p = Choose(loop, nullptr);  // the lost path itself may be back by now
  }
  const core::LostFate fate = core::FateOfLost(closed_.load(), p != nullptr);
  if (fate != core::LostFate::kFailover) return Finish(io, core::LostError(fate));
  failed->failovers.fetch_add(1, std::memory_order_relaxed);
  p->loop_conn[loop]->Send(io);  // same permit, as RTRS fails over
}

// On the connecting thread, after the path's handshake and before it carries IO: fences every
// lost incarnation of the other paths through the new service connection (blocking socket).
int TcpClientSession::FenceBeforeUp(ClientPath* p, int fd, uint64_t deadline_ns) {
  std::vector<Lost> todo;
  {
    std::lock_guard<std::mutex> lk(fence_mu_);
    for (const Lost& l : unfenced_)
      if (l.path != p) todo.push_back(l);
  }
  for (const Lost& l : todo) {
    FrameHeader h;
    h.kind = FrameKind::kFence;
    h.usr_len = 16;
    h.id = l.incarnation;
    h.cookie = 1;
    uint8_t b[kFrameHeaderSize + 16];
    EncodeFrameHeader(h, b);
    memcpy(b + kFrameHeaderSize, l.path->uuid, 16);
    int rc = SendAllBefore(fd, b, sizeof(b), deadline_ns);
    if (rc) return rc;
  }
  for (size_t acks = 0; acks < todo.size();) {
    uint8_t b[kFrameHeaderSize];
    int rc = RecvAllBefore(fd, b, sizeof(b), deadline_ns);
    if (rc) return rc;
    FrameHeader h;
    if (DecodeFrameHeader(b, &h) != 0 || h.usr_len || h.data_len) return -EPROTO;
    if (h.kind == FrameKind::kFenceAck) acks++;
    else if (h.kind != FrameKind::kHeartbeat && h.kind != FrameKind::kHeartbeatAck) return -EPROTO;
  }
  std::lock_guard<std::mutex> lk(fence_mu_);
  // the handshake retired this path's own older incarnations; the loop above, the rest
  for (auto it = unfenced_.begin(); it != unfenced_.end();) {
    bool done = it->path == p && it->incarnation < p->incarnation.load();
    for (const Lost& l : todo) done = done || (l.path == it->path && l.incarnation == it->incarnation);
    it = done ? unfenced_.erase(it) : it + 1;
  }
  return 0;
}

std::vector<TcpClientSession::Parked> TcpClientSession::TakeParked() {
  std::lock_guard<std::mutex> lk(fence_mu_);
  std::vector<Parked> v;
  v.swap(parked_);
  fence_via_ = nullptr;
  return v;
}

}  // namespace ibnbd::transport::tcp::client
