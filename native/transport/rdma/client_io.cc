// A request of the RDMA client on the wire, as the IO half of Linux
// drivers/infiniband/ulp/rtrs/rtrs-clt.c (rtrs_clt_write_req, rtrs_clt_read_req), without the
// fast-reg MRs user verbs lack: a request's data is described by plain MRs, those of the guest
// memory regions the vhost layer registered (RegisterMemory(), one MR per region and path), or
// else goes through the path's bounce slot of the request's permit. PostRequest() RDMA-writes
// [data][usr msg][rtrs msg_write] (WRITE) or [usr msg][rtrs msg_read + one descriptor] (READ)
// into the server's chunk of the permit, the last work request carrying the immediate; Complete()
// finishes the request when its response arrives. docs/rdma-transport.md, "Our client: no
// fast-reg — plain MRs", says why and what it costs.
//
// Threads: RegisterMemory() / UnregisterMemory() run on any thread, under mem_mu_ (exclusive).
// PostRequest() runs on the submitting request's loop, its Resolve() under mem_mu_ (shared);
// Complete() on the loop of the IO connection the response came on, which is that same loop.
#include <cerrno>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "transport/rdma/client_internal.h"

namespace ibnbd::rdma::client {

// ------------------------------------------------------------------------------------------
// Memory registration (zero copy)

int RdmaClientSession::RegisterMemory(void* addr, size_t len, uint64_t* handle) {
  if (!addr || !len) return -EINVAL;
  std::unique_lock lock(mem_mu_);
  Region r;
  r.addr = reinterpret_cast<uintptr_t>(addr);
  r.len = len;
  r.handle = next_handle_++;
  r.mrs.resize(paths_.size(), nullptr);
  for (auto& p : paths_) {
    if (p->conns.empty()) continue;
    r.mrs[p->index] = ibv_reg_mr(p->conns[0]->pd(), addr, len,
                                 IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (!r.mrs[p->index]) {
      int e = errno ? -errno : -ENOMEM;
      for (auto* mr : r.mrs)
        if (mr) ibv_dereg_mr(mr);
      return e;
    }
  }
  *handle = r.handle;
  regions_[r.addr] = std::move(r);
  return 0;
}

void RdmaClientSession::UnregisterMemory(uint64_t handle) {
  std::unique_lock lock(mem_mu_);
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    if (it->second.handle != handle) continue;
    for (auto* mr : it->second.mrs)
      if (mr) ibv_dereg_mr(mr);
    regions_.erase(it);
    return;
  }
}

// Resolves the request's data to registered segments (adjacent iovecs merged). False when some
// byte lies outside every registered region: then the bounce buffer carries it.
bool RdmaClientSession::Resolve(Path* p, const ClientIo* io, std::vector<LocalSeg>* segs) {
  segs->clear();
  std::shared_lock lock(mem_mu_);
  if (regions_.empty()) return io->data_len == 0;
  for (uint32_t i = 0; i < io->iov_cnt; i++) {
    uintptr_t a = reinterpret_cast<uintptr_t>(io->iov[i].iov_base);
    size_t n = io->iov[i].iov_len;
    if (n == 0) continue;
    auto it = regions_.upper_bound(a);
    if (it == regions_.begin()) return false;
    --it;
    const Region& r = it->second;
    ibv_mr* mr = p->index < r.mrs.size() ? r.mrs[p->index] : nullptr;
    if (!mr || a + n > r.addr + r.len) return false;
    if (!segs->empty() && segs->back().addr + segs->back().len == a &&
        segs->back().lkey == mr->lkey) {
      segs->back().len += static_cast<uint32_t>(n);
    } else {
      segs->push_back({a, static_cast<uint32_t>(n), mr->lkey, mr->rkey});
    }
  }
  return true;
}

// ------------------------------------------------------------------------------------------
// A request on the wire and its response (IO threads)

int RdmaClientSession::PostRequest(Path* p, Conn* c, ClientIo* io, uint32_t buf_id, bool* bounced) {
  uint8_t* iu = p->iu.data + size_t(buf_id) * kIuSize;
  uint32_t lkey_iu = p->iu.mr->lkey;
  thread_local std::vector<LocalSeg> segs;  // per IO thread: no allocation per request
  bool zero_copy = Resolve(p, io, &segs);
  uint8_t* bounce = p->bounce.slot(buf_id);
  auto use_bounce = [&] {
    ibv_mr* mr = p->bounce.mr(buf_id);
    if (!mr) return false;
    *bounced = true;
    bounce_count_++;
    segs.assign(1, {reinterpret_cast<uintptr_t>(bounce), io->data_len, mr->lkey, mr->rkey});
    return true;
  };
  memcpy(iu, io->usr, io->usr_len);
  uint32_t iu_len = io->usr_len;
  uint32_t remote_off = 0;
  if (io->dir == Dir::kWrite) {
    // the data SGEs then the IU fill the chunk from offset 0: [data][usr][rtrs write msg]
    if (io->data_len && (!zero_copy || (segs.size() + 1 + c->max_send_sge() - 1) / c->max_send_sge() >
                                            kMaxWrsPerRequest)) {
      size_t off = 0;
      for (uint32_t i = 0; i < io->iov_cnt; i++) {
        memcpy(bounce + off, io->iov[i].iov_base, io->iov[i].iov_len);
        off += io->iov[i].iov_len;
      }
      if (!use_bounce()) return -ENOMEM;
    }
    wire::MsgWrite m = {htole16(wire::kMsgWrite), htole16(io->usr_len)};
    memcpy(iu + iu_len, &m, sizeof(m));
    iu_len += sizeof(m);
  } else {
    // the server RDMA-writes into one client buffer: contiguous registered memory or bounce
    if (io->data_len && (!zero_copy || segs.size() != 1) && !use_bounce()) return -ENOMEM;
    wire::MsgReadHdr m = {htole16(wire::kMsgRead), htole16(io->usr_len), 0,
                          htole16(io->data_len ? 1 : 0)};
    memcpy(iu + iu_len, &m, sizeof(m));
    iu_len += sizeof(m);
    if (io->data_len) {
      wire::SgDesc d = {htole64(segs[0].addr), htole32(segs[0].rkey), htole32(io->data_len)};
      memcpy(iu + iu_len, &d, sizeof(d));
      iu_len += sizeof(d);
    }
    remote_off = io->data_len;  // the chunk's first data_len bytes are the server's to fill
    segs.clear();
  }
  if (io->data_len + iu_len > chunk_size_) return -EMSGSIZE;
  segs.push_back({reinterpret_cast<uintptr_t>(iu), iu_len, lkey_iu, 0});

  uint32_t max_sge = c->max_send_sge();
  ibv_sge sges[kMaxWrsPerRequest * 32];
  ibv_send_wr wrs[kMaxWrsPerRequest];
  size_t nwr = (segs.size() + max_sge - 1) / max_sge;
  if (nwr > kMaxWrsPerRequest || segs.size() > sizeof(sges) / sizeof(sges[0])) return -EMSGSIZE;
  const RemoteBuf& rb = p->rbufs[buf_id];
  uint64_t raddr = rb.addr + remote_off;
  size_t s = 0;
  for (size_t w = 0; w < nwr; w++) {
    ibv_send_wr& wr = wrs[w];
    memset(&wr, 0, sizeof(wr));
    wr.sg_list = &sges[s];
    uint32_t bytes = 0;
    for (uint32_t k = 0; k < max_sge && s < segs.size(); k++, s++) {
      sges[s] = {segs[s].addr, segs[s].len, segs[s].lkey};
      bytes += segs[s].len;
      wr.num_sge++;
    }
    wr.wr.rdma.remote_addr = raddr;
    wr.wr.rdma.rkey = rb.rkey;
    raddr += bytes;
    wr.next = w + 1 < nwr ? &wrs[w + 1] : nullptr;
    if (w + 1 < nwr) {
      wr.opcode = IBV_WR_RDMA_WRITE;
      wr.wr_id = WrId(kWrReq, buf_id);
    } else {
      // the immediate points at the rtrs message: buf_id above mem_bits, its chunk offset below
      wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
      wr.imm_data = htobe32(wire::MakeImm(
          wire::kIoReqImm, (buf_id << mem_bits_) | (io->data_len + io->usr_len)));
      wr.wr_id = WrId(kWrReq, buf_id);  // signalled only now and then (Conn::PostSend)
    }
  }
  return c->QueueSend(&wrs[0]);  // goes out with the rest of this loop batch's requests
}

void RdmaClientSession::Complete(Path* p, uint32_t buf_id, int err) {
  if (buf_id >= reqs_.size()) {
    FailPath(p, "response for an unknown buffer id");
    return;
  }
  Req& r = reqs_[buf_id];
  ClientIo* io = r.io;
  if (!io || r.path != p) return;  // a late answer on a path we already gave up
  if (io->dir == Dir::kRead && r.bounce && err == 0) {
    const uint8_t* src = p->bounce.slot(buf_id);
    size_t off = 0;
    for (uint32_t i = 0; i < io->iov_cnt; i++) {
      memcpy(io->iov[i].iov_base, src + off, io->iov[i].iov_len);
      off += io->iov[i].iov_len;
    }
  }
  r.io = nullptr;
  p->inflight--;
  p->requests.fetch_add(1, std::memory_order_relaxed);
  p->progress.OnComplete(transport::core::MonotonicNs());
  ReleasePermit(buf_id);
  io->done(io, err);
}

}  // namespace ibnbd::rdma::client
