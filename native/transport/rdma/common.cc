#include "transport/rdma/common.h"

#include "transport/endpoint.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <rdma/rdma_cma.h>
#include <infiniband/ib.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "common/log.h"
#include "transport/rdma/gid.h"
#include "transport/rdma/rdma.h"
#include "transport/wire.h"

namespace ibnbd::rdma {

void SetLastError(const std::string& msg) {
  transport::SetLastCreateError(msg);
  DebugLog(msg);
}

void DebugLog(const std::string& msg) {
  // --log-level debug shows them; IBNBD_RDMA_DEBUG, the older switch, raises them to info so they
  // show at the default level too
  static const LogLevel level = getenv("IBNBD_RDMA_DEBUG") != nullptr ? LogLevel::kInfo : LogLevel::kDebug;
  LogMsg(level, {"rdma"}, "%s", msg.c_str());
}

const char* LastRdmaError() { return transport::LastCreateError(); }

int CheckRdmaDevice() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  int saved = errno;
  if (list) ibv_free_device_list(list);
  if (!list || n == 0) {
    SetLastError(std::string("no RDMA device on this host (ibv_get_device_list: ") +
                 (list ? "0 devices" : strerror(saved)) +
                 "); load a driver, e.g. soft-RoCE: `rdma link add rxe0 type rxe netdev <if>`");
    return -ENODEV;
  }
  return 0;
}

rdma_port_space PortSpaceFor(const sockaddr_storage& ss) {
  return ss.ss_family == AF_IB ? RDMA_PS_IB : RDMA_PS_TCP;
}

int ParseEndpoint(const transport::Endpoint& ep, sockaddr_storage* ss, socklen_t* len) {
  int rc = -EINVAL;
  std::string why = "address kind must be ip or gid";
  if (ep.kind == "ip") {
    rc = transport::IpToSockaddr(ep, ss, len);
    why = "bad IP address '" + ep.addr + "'";
  } else if (ep.kind == "gid") {
    rc = ResolveGid(ep, ss, len, &why);
  }
  if (rc) SetLastError(why);
  return rc;
}

std::string FormatSockaddr(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (!sa) return "";
  switch (sa->sa_family) {
    case AF_INET:
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof(buf));
      return std::string("ip:") + buf;
    case AF_INET6:
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof(buf));
      return std::string("ip:") + buf;
    case AF_IB:
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_ib*>(sa)->sib_addr, buf, sizeof(buf));
      return std::string("gid:") + buf;
  }
  return "";
}

std::shared_ptr<ibv_pd> PdFor(ibv_context* ctx) {
  static std::mutex mu;
  static std::map<ibv_context*, std::weak_ptr<ibv_pd>> pds;
  std::lock_guard<std::mutex> lock(mu);
  if (auto pd = pds[ctx].lock()) return pd;
  ibv_pd* raw = ibv_alloc_pd(ctx);
  if (!raw) return nullptr;
  std::shared_ptr<ibv_pd> pd(raw, [](ibv_pd* p) { ibv_dealloc_pd(p); });
  pds[ctx] = pd;
  return pd;
}

RegisteredBuffer::~RegisteredBuffer() { Reset(); }

void RegisteredBuffer::Reset() {
  if (mr) ibv_dereg_mr(mr);
  if (data) munmap(data, len);
  mr = nullptr;
  data = nullptr;
  len = 0;
}

int RegisteredBuffer::Allocate(ibv_pd* pd, size_t n, int access) {
  Reset();
  len = (n + 4095) & ~size_t(4095);
  if (len == 0) len = 4096;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    data = nullptr;
    return -errno;
  }
  data = static_cast<uint8_t*>(p);
  mr = ibv_reg_mr(pd, data, len, access);
  if (!mr) return errno ? -errno : -ENOMEM;
  return 0;
}

Conn::~Conn() {
  if (id_ && id_->qp) rdma_destroy_qp(id_);
  if (cq_) {
    if (unacked_events_) ibv_ack_cq_events(cq_, unacked_events_);
    ibv_destroy_cq(cq_);
  }
  if (channel_) ibv_destroy_comp_channel(channel_);
  if (id_) rdma_destroy_id(id_);
}

int Conn::Setup(std::shared_ptr<ibv_pd> pd, const Config& cfg) {
  pd_ = std::move(pd);
  cfg_ = cfg;
  ibv_device_attr attr;
  if (ibv_query_device(id_->verbs, &attr)) return -errno;
  cfg_.max_send_sge = std::min<uint32_t>(cfg_.max_send_sge, attr.max_sge);
  cfg_.send_depth = std::min<uint32_t>(cfg_.send_depth, attr.max_qp_wr);
  cfg_.recv_depth = std::min<uint32_t>(cfg_.recv_depth, attr.max_qp_wr);
  channel_ = ibv_create_comp_channel(id_->verbs);
  if (!channel_) return -errno;
  int cqe = std::min<int>(cfg_.send_depth + cfg_.recv_depth, attr.max_cqe);
  cq_ = ibv_create_cq(id_->verbs, cqe, this, channel_, 0);
  if (!cq_) return -errno;
  if (ibv_req_notify_cq(cq_, 0)) return -errno;
  armed_ = true;
  ibv_qp_init_attr qa = {};
  qa.send_cq = cq_;
  qa.recv_cq = cq_;
  qa.qp_type = IBV_QPT_RC;
  qa.cap.max_send_wr = cfg_.send_depth;
  qa.cap.max_recv_wr = cfg_.recv_depth;
  qa.cap.max_send_sge = cfg_.max_send_sge;
  qa.cap.max_recv_sge = 1;
  if (rdma_create_qp(id_, pd_.get(), &qa)) return -errno;
  if (cfg_.recv_slots == 0 || cfg_.recv_slots > cfg_.recv_depth) cfg_.recv_slots = cfg_.recv_depth;
  int rc = recv_.Allocate(pd_.get(), size_t(cfg_.recv_slots) * cfg_.recv_buf_size,
                          IBV_ACCESS_LOCAL_WRITE);
  if (rc) return rc;
  return cfg_.defer_recvs ? 0 : PostAllRecvs();
}

int Conn::PostAllRecvs() {
  for (uint32_t i = 0; i < cfg_.recv_slots; i++) {
    if (int rc = PostRecv(i)) return rc;
  }
  return 0;
}

int Conn::PostRecv(uint32_t slot) {
  ibv_sge sge = {reinterpret_cast<uintptr_t>(recv_.data) + size_t(slot) * cfg_.recv_buf_size,
                 cfg_.recv_buf_size, recv_.mr->lkey};
  ibv_recv_wr wr = {}, *bad = nullptr;
  wr.wr_id = WrId(kWrRecv, slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  int rc = ibv_post_recv(id_->qp, &wr, &bad);
  return rc ? -rc : 0;
}

int Conn::PostRecvWr(ibv_recv_wr* wr) {
  ibv_recv_wr* bad = nullptr;
  int rc = ibv_post_recv(id_->qp, wr, &bad);
  return rc ? -rc : 0;
}

int Conn::PostSend(ibv_send_wr* wr) {
  uint32_t n = 0;
  ibv_send_wr* last = wr;
  bool signaled = false;
  for (ibv_send_wr* w = wr; w; w = w->next) {
    n++;
    last = w;
    signaled |= (w->send_flags & IBV_SEND_SIGNALED) != 0;
  }
  std::lock_guard<std::mutex> lock(sq_mu_);
  if (!signaled && (sq_unsignaled_posts_ + 1 >= kSignalInterval ||
                    (sq_posted_ + n - sq_retired_) * 2 > cfg_.send_depth)) {
    last->send_flags |= IBV_SEND_SIGNALED;
    signaled = true;
  }
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(id_->qp, wr, &bad);
  if (rc) return -rc;
  sq_posted_ += n;
  if (signaled) {
    // a chain signalled in the middle too retires the same way: its last mark covers it
    sq_marks_.push_back(sq_posted_);
    sq_unsignaled_posts_ = 0;
  } else {
    sq_unsignaled_posts_++;
  }
  return 0;
}

int Conn::QueueSend(const ibv_send_wr* wr) {
  if (!loop_ || !loop_->InLoop()) return PostSend(const_cast<ibv_send_wr*>(wr));
  for (const ibv_send_wr* w = wr; w; w = w->next) {
    queued_wrs_.push_back(*w);
    queued_sge_at_.push_back(queued_sges_.size());
    queued_sges_.insert(queued_sges_.end(), w->sg_list, w->sg_list + w->num_sge);
  }
  loop_->AtBatchEnd(this);
  return 0;
}

void Conn::RunBatchEnd() {
  if (queued_wrs_.empty()) return;
  const size_t n = queued_wrs_.size();
  for (size_t i = 0; i < n; i++) {
    queued_wrs_[i].sg_list = queued_wrs_[i].num_sge ? &queued_sges_[queued_sge_at_[i]] : nullptr;
    queued_wrs_[i].next = i + 1 < n ? &queued_wrs_[i + 1] : nullptr;
  }
  int rc = PostSend(&queued_wrs_[0]);
  queued_wrs_.clear();
  queued_sge_at_.clear();
  queued_sges_.clear();
  if (rc) {
    dead = true;
    rdma_disconnect(id_);
  }
}

void Conn::RetireSends(const ibv_wc& wc) {
  if (wc.status != IBV_WC_SUCCESS || (wc.opcode & IBV_WC_RECV)) return;
  std::lock_guard<std::mutex> lock(sq_mu_);
  if (sq_marks_.empty()) return;
  sq_retired_ = sq_marks_.front();
  sq_marks_.pop_front();
}

int Conn::Attach(EventLoop* loop, std::function<void(const ibv_wc&)> on_wc) {
  on_wc_ = std::move(on_wc);
  loop_ = loop;
  int fl = fcntl(channel_->fd, F_GETFL);
  fcntl(channel_->fd, F_SETFL, fl | O_NONBLOCK);
  int rc = 0;
  loop->RunSync([&] {
    rc = loop->Add(channel_->fd, EPOLLIN, [this](uint32_t) { OnChannelReadable(); });
    if (rc) return;
    loop->AddPollSource(this);
    // completions that arrived before the fd was watched
    OnChannelReadable();
  });
  return rc;
}

void Conn::Detach() {
  if (!loop_) return;
  EventLoop* loop = loop_;
  loop->RunSync([&] {
    loop->Remove(channel_->fd);
    loop->RemovePollSource(this);
    // what this batch queued will not go out: the path is going away
    loop->CancelBatchEnd(this);
    queued_wrs_.clear();
    queued_sge_at_.clear();
    queued_sges_.clear();
  });
  loop_ = nullptr;
}

void Conn::OnChannelReadable() {
  ibv_cq* ev_cq = nullptr;
  void* ev_ctx = nullptr;
  // One event per wake-up: the CQ is armed at most once between two calls, so it raises at
  // most one event, and a second read would only say EAGAIN (a system call, tens of µs under
  // TCG). Should two be pending, the level-triggered loop calls again.
  if (ibv_get_cq_event(channel_, &ev_cq, &ev_ctx) == 0) {
    armed_ = false;  // an event disarms the CQ; the loop re-arms it before it sleeps
    if (++unacked_events_ >= 64) {
      ibv_ack_cq_events(cq_, unacked_events_);
      unacked_events_ = 0;
    }
  }
  Drain();
}

bool Conn::Drain() {
  ibv_wc wcs[32];
  bool found = false;
  while (loop_) {  // a handler may detach us
    int n = ibv_poll_cq(cq_, 32, wcs);
    if (n <= 0) break;
    found = true;
    for (int i = 0; i < n; i++) {
      RetireSends(wcs[i]);
      on_wc_(wcs[i]);
    }
  }
  return found;
}

bool Conn::PollOnce() { return Drain(); }

bool Conn::ArmForSleep() {
  if (armed_) return false;
  // Arm first, then drain: a completion that arrived before the arm raises no event.
  ibv_req_notify_cq(cq_, 0);
  armed_ = true;
  return Drain();
}

int Conn::WaitOne(ibv_wc* wc, int timeout_ms) {
  for (int waited = 0;; waited += 1) {
    int n = ibv_poll_cq(cq_, 1, wc);
    if (n < 0) return -EIO;
    if (n == 1) {
      RetireSends(*wc);
      return 0;
    }
    if (waited >= timeout_ms) return -ETIMEDOUT;
    usleep(1000);
  }
}

int WaitCmEvent(rdma_event_channel* ch, int timeout_ms, rdma_cm_event** ev) {
  pollfd p = {ch->fd, POLLIN, 0};
  int rc = poll(&p, 1, timeout_ms);
  if (rc == 0) return -ETIMEDOUT;
  if (rc < 0) return -errno;
  if (rdma_get_cm_event(ch, ev)) return errno == EAGAIN ? -ETIMEDOUT : -errno;
  return 0;
}


}  // namespace ibnbd::rdma
