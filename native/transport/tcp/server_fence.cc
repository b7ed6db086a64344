// Fencing on the TCP server (docs/tcp-transport.md, "Fencing"): a client that lost a path sends
// the path's requests again, on the path's next incarnation or on another path. Before any of
// them runs, every request of the lost connections must have finished here, and nothing more
// that arrives on those connections may run: otherwise a stale copy still executing (or still
// in the network) could land after the newer write that followed its re-sent copy.
//
// Two ways in, the same rule: a handshake with a higher incarnation of a path retires the path's
// connections (RTRS closes a path's old connection when it reconnects), and a FENCE frame on a
// live path's service connection retires the named path. A retired path is marked dead at once
// (SrvConn::Dispatch drops whatever it reads after that), its connections are closed on their
// loops, and it is kept in retired_ until its inflight count is 0. The handshake responses of a
// session, and its FENCE_ACKs, are held back while any path of that session is retired with
// requests running (by uuid or by name: a session re-created after its last path died, or the
// session of a restarted client daemon, which comes with a new uuid, count too); a timer on IO
// thread 0 releases them. The client sends nothing on a path before its handshake
// responses, and re-sends nothing on another path before the FENCE_ACK.
//
// Threads: RetireLocked, StaleLocked, DrainingLocked and the Hold* functions run under mu_ (from
// the handshake on IO thread 0, or Fence on a service connection's loop); OnDrainTick on IO
// thread 0; a held answer is sent on its connection's loop.
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/event_loop.h"
#include "common/log.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/server_internal.h"

namespace ibnbd::transport::tcp::server {
namespace {

constexpr long kDrainPollNs = 5 * 1000 * 1000;  // how often held answers are looked at

void ArmTimer(int fd, bool on) {
  itimerspec its{};
  if (on) its.it_interval.tv_nsec = its.it_value.tv_nsec = kDrainPollNs;
  timerfd_settime(fd, 0, &its, nullptr);
}

}  // namespace

void TcpServer::RetireLocked(SrvSession* s, const std::shared_ptr<SrvPath>& p,
                             std::vector<std::shared_ptr<SrvConn>>* to_close) {
  auto& v = s->paths;
  v.erase(std::remove(v.begin(), v.end(), p), v.end());
  // dead before inflight is read (DrainingLocked): a request Dispatch counts after this point
  // sees dead and is dropped, one counted before it is waited for
  if (!p->dead.exchange(true)) {
    for (auto& c : p->conns)
      if (c) to_close->push_back(c);
  }
  if (std::find(retired_.begin(), retired_.end(), p) == retired_.end()) retired_.push_back(p);
}

bool TcpServer::StaleLocked(const std::string& key, const HandshakeReq& req) const {
  for (auto& p : retired_)
    if (p->sess_key == key && memcmp(p->uuid, req.path_uuid, 16) == 0 &&
        p->incarnation > req.incarnation)
      return true;
  return false;
}

void TcpServer::PruneRetiredLocked() {
  // a path's connections (and their buffers) are kept only while its requests run
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(), [](const std::shared_ptr<SrvPath>& p) { return p->inflight.load() <= 0; }),
                 retired_.end());
}

bool TcpServer::DrainingLocked(const SrvSession* s) {
  PruneRetiredLocked();
  const std::string key(reinterpret_cast<const char*>(s->uuid_bytes), 16);
  for (auto& p : retired_)
    if (p->sess_key == key || p->sess_name == s->name) return true;
  return false;
}

void TcpServer::HoldAnswerLocked(const std::shared_ptr<SrvConn>& c, const uint8_t* rsp) {
  held_.push_back({c, std::vector<uint8_t>(rsp, rsp + kHandshakeRspSize), 0});
  if (held_.size() == 1 && drain_fd_ >= 0) ArmTimer(drain_fd_, true);
}

void TcpServer::HoldFenceAckLocked(const std::shared_ptr<SrvConn>& c, uint64_t cookie) {
  held_.push_back({c, {}, cookie});
  if (held_.size() == 1 && drain_fd_ >= 0) ArmTimer(drain_fd_, true);
}

void TcpServer::Fence(const std::shared_ptr<SrvConn>& from, const uint8_t* path_uuid,
                      uint32_t incarnation, uint64_t cookie) {
  std::vector<std::shared_ptr<SrvConn>> to_close;
  bool wait;
  std::string who;
  {
    std::lock_guard<std::mutex> lk(mu_);
    SrvSession* s = from->sess.get();
    std::vector<std::shared_ptr<SrvPath>> paths = s->paths;
    for (auto& p : paths)
      if (p != from->path && memcmp(p->uuid, path_uuid, 16) == 0 && p->incarnation <= incarnation) {
        who = p->client_addr;
        RetireLocked(s, p, &to_close);
      }
    wait = DrainingLocked(from->sess.get());
    if (wait) HoldFenceAckLocked(from, cookie);
  }
  if (!to_close.empty())
    LogMsg(LogLevel::kInfo, {.component = "tcp-server", .session = from->sess->name.c_str(), .path = who.c_str()},
           "session '%s' path from %s fenced by the client", from->sess->name.c_str(), who.c_str());
  for (auto& c : to_close) c->loop->Post([c] { c->Close(); });
  if (!wait) from->Queue(FrameKind::kFenceAck, 0, 0, cookie, nullptr);
}

void TcpServer::OnDrainTick() {
  uint64_t t;
  ssize_t n = read(drain_fd_, &t, sizeof(t));
  (void)n;
  std::vector<HeldAnswer> go;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = held_.begin(); it != held_.end();) {
      if (DrainingLocked(it->conn->sess.get())) {
        ++it;
        continue;
      }
      go.push_back(std::move(*it));
      it = held_.erase(it);
    }
    if (held_.empty()) ArmTimer(drain_fd_, false);
  }
  for (auto& a : go) {
    std::shared_ptr<SrvConn> c = a.conn;
    if (a.rsp.empty()) {
      c->loop->Post([c, cookie = a.cookie] {
        if (!c->closed) c->Queue(FrameKind::kFenceAck, 0, 0, cookie, nullptr);
      });
      continue;
    }
    c->loop->Post([this, c, rsp = std::move(a.rsp)] {
      if (c->closed) return;
      ssize_t w = send(c->fd, rsp.data(), rsp.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w != static_cast<ssize_t>(rsp.size())) return KillPath(c->path, "cannot send the handshake response");
      c->Register();
    });
  }
}

}  // namespace ibnbd::transport::tcp::server
