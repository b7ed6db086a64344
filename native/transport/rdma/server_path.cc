// One path of the RDMA server at work on the IoThreads loops, as the IO side of Linux
// drivers/infiniband/ulp/rtrs/rtrs-srv.c: the completions of its connections, the info exchange
// on cid 0 (which brings the path, and with the first path its session, up and starts the
// heartbeats), heartbeats, and the requests. A request is an RDMA WRITE WITH IMM into this path's
// chunk of a buffer id, the immediate naming the buffer id and the rtrs message's offset in the
// chunk; it is decoded there and handed to the handler. The response RDMA-WRITEs a READ's data
// into the client's buffer (then SEND_WITH_INV when the client asked for it) and carries the
// errno in a WRITE WITH IMM. A request whose buffer id another path's request still holds waits
// in the session's BufferFence (server_internal.h says why).
//
// Threads: a connection's completions, and so its requests, run on its loop (cid 0: loop 0, cid
// c: loop c - 1); the info exchange (with OnSessionUp(), outside mu_) and the heartbeat timer on
// loop 0. The handler answers from any thread: SrvSession::Complete() → RespondOnLoop() hops to
// the request's loop (inline when already there), where SendResponse() runs; a request the fence
// held is resumed on its own loop (posted by the Release() that frees its buffer id).
// Locks: OnInfoReq() and RequestClose() take the server's mu_; the IO path takes none (a slot
// belongs to its request; the BufferFence has its own).
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/log.h"
#include "transport/core/auth.h"
#include "transport/rdma/auth_proof.h"
#include "transport/rdma/server_internal.h"

namespace ibnbd::rdma::server {
namespace {

constexpr auto NowNs = transport::core::MonotonicNs;

}  // namespace

// ------------------------------------------------------------------------------------------
// Completions, info exchange, heartbeats, requests and responses (IO threads)

void RdmaServer::SendImm(Conn* c, uint32_t imm) {
  ibv_send_wr wr = {};
  wr.wr_id = WrId(kWrHb, 0);
  wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
  wr.imm_data = htobe32(imm);
  wr.send_flags = IBV_SEND_SIGNALED;
  c->PostSend(&wr);
}

void RdmaServer::OnCompletion(SrvPath* p, Conn* c, const ibv_wc& wc) {
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status != IBV_WC_WR_FLUSH_ERR) RequestClose(p, ibv_wc_status_str(wc.status));
    return;
  }
  if (wc.wr_id == WrId(kWrInfo, 1)) return RequestClose(p, "authentication failed");  // RefuseAuth() sent
  if (WrKindOf(wc.wr_id) != kWrRecv) return;
  uint32_t slot = static_cast<uint32_t>(WrValue(wc.wr_id));
  p->hb.OnReceive();
  if (wc.opcode == IBV_WC_RECV && !(wc.wc_flags & IBV_WC_WITH_IMM)) {
    if (c->cid == 0) OnInfoReq(p, c, c->RecvBuf(slot), wc.byte_len);
    if (c->PostRecv(slot)) RequestClose(p, "cannot post a receive");
    return;
  }
  if (c->PostRecv(slot)) {
    RequestClose(p, "cannot post a receive");
    return;
  }
  uint32_t imm = be32toh(wc.imm_data);
  switch (wire::ImmTypeOf(imm)) {
    case wire::kHbMsgImm:
      SendImm(c, wire::MakeImm(wire::kHbAckImm, 0));
      return;
    case wire::kHbAckImm:
      p->hb.OnAck(NowNs());
      return;
    case wire::kIoReqImm:
      OnIoReq(p, c, wire::ImmPayload(imm));
      return;
    default:
      RequestClose(p, "unknown immediate type");
  }
}

// The client's proof of an authenticating path (rtrs_wire.h): whether it is the one the session
// name's secret gives over this path's nonce. Nothing says which part was wrong.
bool RdmaServer::ProofHolds(const SrvPath* p, const wire::InfoReq& req, const uint8_t* tail_buf,
                            const std::string& name, std::string* secret) const {
  wire::AuthTail tail;
  memcpy(&tail, tail_buf, sizeof(tail));
  *secret = opts_.auth->Find(name);
  if (secret->empty()) return false;
  uint8_t expect[transport::core::kAuthProofSize];
  return PathProof(*secret, transport::core::AuthRole::kClient, tail.client_nonce, p->auth_nonce,
                   p->sess->paths_uuid, p->sess_uuid, req.pathname, expect) &&
         transport::core::ProofsEqual(expect, tail.proof);
}

// An authenticating client told that it is refused (its proof, or its name): an info response
// without descriptors; the path closes once the send is done (OnCompletion).
void RdmaServer::RefuseAuth(SrvPath* p, Conn* c) {
  wire::InfoRspHdr hdr = {htole16(wire::kInfoRsp), 0, {wire::kInfoRspAuthFailed, 0, 0, 0}};
  memcpy(p->tx.data, &hdr, sizeof(hdr));
  ibv_sge sge = {reinterpret_cast<uintptr_t>(p->tx.data), sizeof(hdr), p->tx.mr->lkey};
  ibv_send_wr wr = {};
  wr.wr_id = WrId(kWrInfo, 1);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  if (c->PostSend(&wr)) RequestClose(p, "cannot send the authentication refusal");
}

void RdmaServer::OnInfoReq(SrvPath* p, Conn* c, const uint8_t* buf, uint32_t len) {
  wire::InfoReq req;
  if (len < sizeof(req)) return RequestClose(p, "short info request");
  memcpy(&req, buf, sizeof(req));
  if (le16toh(req.type) != wire::kInfoReq) return RequestClose(p, "not an info request");
  std::string name(req.pathname, strnlen(req.pathname, sizeof(req.pathname)));
  SrvSession* s = p->sess;
  bool first_up = false, refuse_auth = false;
  std::string secret;
  bool proven = false;
  {
    std::lock_guard lock(mu_);
    // the proof, when the path asked to give one (p->auth is set with cid 0's accept, under mu_)
    if (p->auth) proven = len >= sizeof(req) + sizeof(wire::AuthTail) && ProofHolds(p, req, buf + sizeof(req), name, &secret);
    // every connection of the path accepted (its ESTABLISHED event may still be on its way to
    // the cm thread: the client sends the info request as soon as its own side is up)
    bool bad = p->state != PathState::kConnecting;
    for (auto& pc : p->conns) bad = bad || !pc;
    // With keys, a path gets in with a proof (our client), or, without one, under a name the
    // keys file opens to unauthenticated peers (the kernel's client, which cannot give one). As
    // over TCP, before anything about sessions: a squatter without the secret learns nothing
    // of the name it tried, and is refused the same way.
    if (!bad && opts_.auth && opts_.auth->required() && !proven && (p->auth || !opts_.auth->OpenOverRdma(name))) {
      LogMsg(LogLevel::kWarn, {.component = "rdma-server", .session = name.c_str(), .path = p->src.c_str()},
             "session '%s' from %s refused (EACCES): authentication failed%s", name.c_str(), p->src.c_str(),
              p->auth ? "" : " (no proof; over RDMA only the names the keys file marks 'rdma-unauthenticated' get in without one)");
      // our client is told so, outside mu_ (a failed send closes the path: RequestClose); the
      // kernel's only sees its path closed
      refuse_auth = p->auth || p->knows_refusal;
      bad = !refuse_auth;
    }
    if (!refuse_auth) {
      bad = bad || name.empty() || name.find('/') != std::string::npos || name.find('.') != std::string::npos;
      for (auto& [k, other] : sessions_)
        if (other.get() != s && other->name == name) bad = true;  // the kernel's -EPERM
      if (!s->name.empty() && s->name != name) bad = true;
    }
    if (bad) {
      close_requests_.push_back(p);
      uint64_t one = 1;
      if (write(wake_fd_, &one, sizeof(one)) < 0) {
      }
      return;
    }
    if (!refuse_auth) {
      s->name = name;
      p->state = PathState::kConnected;
      first_up = !s->up;
      s->up = true;
    }
  }
  if (refuse_auth) return RefuseAuth(p, c);
  // one descriptor per ≤ 2 GiB of chunks, dividing queue_depth (the client checks qd % sg_cnt)
  uint32_t sg_cnt = 1;
  while (uint64_t(s->qd / sg_cnt) * s->chunk_size >= (1ull << 31) || s->qd % sg_cnt) sg_cnt++;
  const size_t descs_end = sizeof(wire::InfoRspHdr) + sg_cnt * sizeof(wire::SgDesc);
  const size_t rsp_len = descs_end + (proven ? wire::kServerProofSize : 0);
  if (rsp_len > p->tx.len) return RequestClose(p, "info response too large");
  wire::InfoRspHdr hdr = {htole16(wire::kInfoRsp), htole16(static_cast<uint16_t>(sg_cnt)), {}};
  memcpy(p->tx.data, &hdr, sizeof(hdr));
  uint64_t per = uint64_t(s->qd / sg_cnt) * s->chunk_size;
  for (uint32_t i = 0; i < sg_cnt; i++) {
    wire::SgDesc d = {htole64(reinterpret_cast<uintptr_t>(p->chunks) + i * per),
                      htole32(p->chunk_mr->rkey), htole32(static_cast<uint32_t>(per))};
    memcpy(p->tx.data + sizeof(hdr) + i * sizeof(d), &d, sizeof(d));
  }
  if (proven) {  // the server's side of the mutual proof, after the descriptors
    wire::AuthTail tail;
    memcpy(&tail, buf + sizeof(req), sizeof(tail));
    if (!PathProof(secret, transport::core::AuthRole::kServer, tail.client_nonce, p->auth_nonce, s->paths_uuid,
                   p->sess_uuid, req.pathname, p->tx.data + descs_end))
      return RequestClose(p, "cannot compute the server's proof");
  }
  ibv_sge sge = {reinterpret_cast<uintptr_t>(p->tx.data), static_cast<uint32_t>(rsp_len), p->tx.mr->lkey};
  ibv_send_wr wr = {};
  wr.wr_id = WrId(kWrInfo, 0);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  if (c->PostSend(&wr)) return RequestClose(p, "cannot send the info response");
  // heartbeats on the service connection's loop (this one)
  p->hb_timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (p->hb_timer >= 0) {
    uint32_t ms = std::max<uint32_t>(opts_.heartbeat_interval_ms, 10);
    itimerspec its = {{ms / 1000, (ms % 1000) * 1000000L}, {ms / 1000, (ms % 1000) * 1000000L}};
    timerfd_settime(p->hb_timer, 0, &its, nullptr);
    c->loop()->Add(p->hb_timer, EPOLLIN, [this, p](uint32_t) { OnHeartbeatTimer(p); });
  }
  if (first_up) handler_->OnSessionUp(s);
}

void RdmaServer::OnHeartbeatTimer(SrvPath* p) {
  uint64_t ticks;
  if (read(p->hb_timer, &ticks, sizeof(ticks)) < 0) return;
  if (p->state != PathState::kConnected) return;
  using V = transport::core::Heartbeat::Verdict;
  const V v = p->hb.OnTick(NowNs(), opts_.heartbeat_missed_max);
  if (v == V::kDeadMissed) return RequestClose(p, transport::core::Heartbeat::Why(v));
  if (v == V::kSend) SendImm(p->conns[0].get(), wire::MakeImm(wire::kHbMsgImm, 0));
}

void RdmaServer::OnIoReq(SrvPath* p, Conn* c, uint32_t payload) {
  SrvSession* s = p->sess;
  if (p->state != PathState::kConnected) return RequestClose(p, "IO request on a path not connected");
  uint32_t buf_id = payload >> s->mem_bits;
  uint32_t off = payload & ((1u << s->mem_bits) - 1);
  // the rtrs message must lie inside the chunk; anything else is a broken peer
  if (buf_id >= s->qd || off + sizeof(wire::MsgWrite) > s->chunk_size)
    return RequestClose(p, "IO request outside the chunks");
  Slot& slot = p->slots[buf_id];
  if (slot.busy.exchange(true)) return RequestClose(p, "buffer reused before its response");
  ServerIo& io = slot.io;
  io = ServerIo{};
  slot.path = p;
  slot.conn = c;
  slot.flags = 0;
  slot.sg_cnt = 0;
  io.session = s;
  io.loop = c->loop()->index();
  io.transport_private[0] = reinterpret_cast<uintptr_t>(&slot);
  io.transport_private[1] = buf_id;
  p->inflight++;  // keeps the path and session while the request waits or runs
  p->requests.fetch_add(1, std::memory_order_relaxed);
  s->inflight++;
  EventLoop* loop = c->loop();
  Slot* sp = &slot;
  if (!s->fence->Enter(buf_id) &&
      !s->fence->Wait(buf_id, [this, loop, sp, off] { loop->Post([this, sp, off] { StartIo(sp, off); }); })) {
    DebugLog("server: request with buffer id " + std::to_string(buf_id) + " on the path from " + p->src +
             " waits for the same buffer id's request on another path");
    return;
  }
  StartIo(sp, off);
}

// On the loop of the request's connection, with the request holding its buffer id.
void RdmaServer::StartIo(Slot* sp, uint32_t off) {
  Slot& slot = *sp;
  SrvPath* p = slot.path;
  SrvSession* s = p->sess;
  ServerIo& io = slot.io;
  // waited for another path and this one died meanwhile: the client re-issues it elsewhere
  if (p->state != PathState::kConnected || slot.conn->dead) return SendResponse(sp, -ENOTCONN);
  uint8_t* chunk = p->chunks + size_t(io.transport_private[1]) * s->chunk_size;
  uint16_t type, usr_len;
  memcpy(&type, chunk + off, 2);
  memcpy(&usr_len, chunk + off + 2, 2);
  type = le16toh(type);
  usr_len = le16toh(usr_len);
  int err = 0;
  if (usr_len > off) {
    err = -EINVAL;
  } else if (type == wire::kMsgWrite) {
    io.dir = Dir::kWrite;
  } else if (type == wire::kMsgRead) {
    io.dir = Dir::kRead;
    wire::MsgReadHdr h;
    if (off + sizeof(h) > s->chunk_size) {
      err = -EINVAL;
    } else {
      memcpy(&h, chunk + off, sizeof(h));
      slot.flags = le16toh(h.flags);
      slot.sg_cnt = le16toh(h.sg_cnt);
      if (slot.sg_cnt > 1 || off + sizeof(h) + slot.sg_cnt * sizeof(wire::SgDesc) > s->chunk_size) {
        err = -EINVAL;
      } else if (slot.sg_cnt == 1) {
        memcpy(&slot.desc, chunk + off + sizeof(h), sizeof(slot.desc));
        // the answer is the data area the handler fills: exactly the length the client asked
        if (le32toh(slot.desc.len) != off - usr_len) err = -EINVAL;
      }
    }
  } else {
    err = -EINVAL;
  }
  if (!err && usr_len > transport::kMaxUsrLen) err = -EMSGSIZE;
  if (err) {
    slot.sg_cnt = 0;
    SendResponse(sp, err);
    return;
  }
  io.usr_len = usr_len;
  io.data_len = off - usr_len;
  io.usr = chunk + io.data_len;
  io.data = chunk;
  handler_->OnRequest(&io);
}

void RespondOnLoop(ServerIo* io, int err) {
  Slot* s = reinterpret_cast<Slot*>(io->transport_private[0]);
  EventLoop& loop = IoThreads::Get().loop(io->loop);
  if (loop.InLoop()) {
    RdmaServer::SendResponse(s, err);
  } else {
    loop.Post([s, err] { RdmaServer::SendResponse(s, err); });
  }
}

// On the loop of the connection the request came in on.
void RdmaServer::SendResponse(Slot* s, int err) {
  SrvPath* p = s->path;
  Conn* c = s->conn;
  SrvSession* sess = p->sess;
  uint32_t buf_id = static_cast<uint32_t>(s->io.transport_private[1]);
  bool read_data = s->io.dir == Dir::kRead && err == 0 && s->sg_cnt == 1;
  // As rtrs-srv: the client's buffer is invalidated whatever the errno. The kernel client, given
  // a plain IO_RSP for a NEED_INVAL read (an EPERM'd OPEN), invalidates locally with a WARN and
  // its map_device write never returned.
  bool need_inv = s->io.dir == Dir::kRead && s->sg_cnt == 1 && (s->flags & wire::kFlagNeedInval);
  wire::SgDesc desc = s->desc;
  uint8_t* chunk = p->chunks + size_t(buf_id) * sess->chunk_size;
  // the slot may be reused as soon as the client sees the immediate: release it first; the
  // request's file IO is over, so a copy of it waiting on another path may run
  s->busy.store(false);
  sess->fence->Release(buf_id);
  if (!c->dead && p->state == PathState::kConnected) {
    ibv_sge sge = {reinterpret_cast<uintptr_t>(chunk), le32toh(desc.len), p->chunk_mr->lkey};
    ibv_send_wr wrs[3] = {};
    int n = 0;
    if (read_data && sge.length) {
      wrs[n].opcode = IBV_WR_RDMA_WRITE;
      wrs[n].sg_list = &sge;
      wrs[n].num_sge = 1;
      wrs[n].wr.rdma.remote_addr = le64toh(desc.addr);
      wrs[n].wr.rdma.rkey = le32toh(desc.key);
      n++;
    }
    if (need_inv) {
      wrs[n].opcode = IBV_WR_SEND_WITH_INV;
      wrs[n].invalidate_rkey = le32toh(desc.key);
      n++;
    }
    wrs[n].opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wrs[n].imm_data = htobe32(wire::MakeImm(need_inv ? wire::kIoRspWInvImm : wire::kIoRspImm,
                                            wire::RspPayload(err, buf_id)));
    n++;  // signalled only now and then (Conn::PostSend)
    for (int i = 0; i < n; i++) {
      wrs[i].wr_id = WrId(kWrRsp, buf_id);
      wrs[i].next = i + 1 < n ? &wrs[i + 1] : nullptr;
    }
    // goes out with the rest of this loop batch's responses
    if (c->QueueSend(&wrs[0])) {
      // the cm thread tears the path down; nothing else to do here
      rdma_disconnect(c->id());
    }
  }
  p->inflight--;
  sess->inflight--;
}

}  // namespace ibnbd::rdma::server
