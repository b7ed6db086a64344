// What the RDMA client and server share: address parsing (ip:/gid:), the "is there an RDMA
// device" check, one protection domain per device, and Conn — one RC QP with its CQ, completion
// channel (watched by an EventLoop, so no core spins) and registered receive buffers.
#pragma once
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/event_loop.h"
#include "transport/transport.h"

#include "transport/uuid.h"

namespace ibnbd::rdma {

// Records the reason for the last failure on this thread (transport::LastCreateError()) and
// logs it with IBNBD_RDMA_DEBUG.
void SetLastError(const std::string& msg);
// The reason recorded last on this thread ("" for none).
const char* LastRdmaError();
// Logs at debug level (info with IBNBD_RDMA_DEBUG set): connection decisions that are not errors
// of a call (a rejected request, a path closed by the peer) and would otherwise leave no trace.
void DebugLog(const std::string& msg);

// 0 when at least one verbs device exists, else -ENODEV with the reason recorded.
int CheckRdmaDevice();

// Fills *ss from an endpoint: ip:<v4>, ip:<v6> (brackets, %zone allowed) → AF_INET/AF_INET6
// with the port; gid:<gid> → as the local devices can carry it (rdma/gid.h: AF_IB on
// InfiniBand, the GID's IP form on RoCE/iWARP). 0 or -EINVAL / -ENETUNREACH / -ENODEV, the
// reason recorded (LastRdmaError()).
int ParseEndpoint(const transport::Endpoint& ep, sockaddr_storage* ss, socklen_t* len);
std::string FormatSockaddr(const sockaddr* sa);
// RDMA_PS_IB for AF_IB (the kernel's rtrs-server listens there by service id), else RDMA_PS_TCP.
rdma_port_space PortSpaceFor(const sockaddr_storage& ss);

using transport::RandomUuid;
using transport::UuidString;

// One PD per verbs context, shared by every connection on that device.
std::shared_ptr<ibv_pd> PdFor(ibv_context* ctx);

// A registered buffer (page-aligned, zeroed).
struct RegisteredBuffer {
  RegisteredBuffer() = default;
  ~RegisteredBuffer();
  RegisteredBuffer(const RegisteredBuffer&) = delete;
  RegisteredBuffer& operator=(const RegisteredBuffer&) = delete;
  int Allocate(ibv_pd* pd, size_t len, int access);  // frees what it held before
  void Reset();
  uint8_t* data = nullptr;
  size_t len = 0;
  ibv_mr* mr = nullptr;
};

// Work request ids: the kind in the top byte, a value below.
enum WrKind : uint64_t { kWrRecv = 1, kWrReq = 2, kWrRsp = 3, kWrHb = 4, kWrInfo = 5 };
inline uint64_t WrId(WrKind k, uint64_t v) { return static_cast<uint64_t>(k) << 56 | v; }
inline WrKind WrKindOf(uint64_t id) { return static_cast<WrKind>(id >> 56); }
inline uint64_t WrValue(uint64_t id) { return id & ((1ull << 56) - 1); }

// The CQ is also a PollSource of the loop it is attached to (common/event_loop.h): a polling
// loop reads it directly and leaves it unarmed, a sleeping one re-arms it first.
class Conn final : public PollSource, public BatchEndTask {
 public:
  struct Config {
    uint32_t send_depth = 64;
    uint32_t recv_depth = 64;
    uint32_t recv_buf_size = 64;  // bytes per posted receive
    uint32_t max_send_sge = 1;
    uint32_t recv_slots = 0;   // receives with a buffer here (0 = recv_depth); the rest of the
                               // queue is for the caller's own (e.g. the info response)
    bool defer_recvs = false;  // post them later with PostAllRecvs()
  };
  explicit Conn(rdma_cm_id* id) : id_(id) {}
  ~Conn();  // destroys QP, CQ, channel, id; Detach() first
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // Creates CQ + QP on id's device with pd, posts every receive. 0 or -errno.
  int Setup(std::shared_ptr<ibv_pd> pd, const Config& cfg);
  // Watches the completion channel on loop; on_wc runs there for every completion.
  int Attach(EventLoop* loop, std::function<void(const ibv_wc&)> on_wc);
  void Detach();  // from any thread; returns once the loop no longer calls on_wc
  // Polls synchronously (before Attach): waits up to timeout_ms for one completion.
  int WaitOne(ibv_wc* wc, int timeout_ms);

  int PostRecv(uint32_t slot);
  int PostAllRecvs();
  int PostRecvWr(ibv_recv_wr* wr);
  const uint8_t* RecvBuf(uint32_t slot) const { return recv_.data + size_t(slot) * cfg_.recv_buf_size; }
  // Posts a chain of send work requests; 0 or -errno. Selective signalling, as rtrs does with
  // its signal_interval: no send completion of ours carries state (a request is done when its
  // response arrives, which RC delivers after the request's own writes), so a chain without
  // IBV_SEND_SIGNALED gets it only every kSignalInterval posts, or when the send queue would be
  // more than half full of work requests no polled completion has retired yet. Each completion
  // spared is one less to poll and hand to the handler, and a CQ event less when it would have
  // come alone (measured: they mostly came while the thread was awake anyway, so they cost work,
  // not wake-ups; docs/performance.md, "Fewer completions").
  int PostSend(ibv_send_wr* wr);
  static constexpr uint32_t kSignalInterval = 16;
  // The data path's post: on the connection's own loop the chain (work requests and their
  // scatter lists, copied) waits for the end of the loop's batch and goes out with every other
  // chain of that batch in one PostSend(): one doorbell per batch, which on rxe is one write(2)
  // on the uverbs fd instead of one per request. Off that loop it is posted at once. A post that
  // fails at the batch end disconnects the connection: the path's loss then re-issues (client)
  // or abandons (server) what was queued, as for any request in flight on a lost path.
  int QueueSend(const ibv_send_wr* wr);

  rdma_cm_id* id() const { return id_; }
  ibv_qp* qp() const { return id_->qp; }
  ibv_pd* pd() const { return pd_.get(); }
  EventLoop* loop() const { return loop_; }
  uint32_t max_send_sge() const { return cfg_.max_send_sge; }
  std::atomic<bool> dead{false};
  uint16_t cid = 0;
  void* owner = nullptr;

 private:
  void RunBatchEnd() override;  // posts what QueueSend() collected
  bool PollOnce() override;
  bool ArmForSleep() override;
  void OnChannelReadable();
  // Runs on_wc for every completion in the CQ; true when there was one.
  bool Drain();
  // A successful send completion: every work request posted up to the signalled one it
  // completes has left the send queue.
  void RetireSends(const ibv_wc& wc);
  rdma_cm_id* id_;
  std::shared_ptr<ibv_pd> pd_;
  Config cfg_;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  RegisteredBuffer recv_;
  EventLoop* loop_ = nullptr;
  std::function<void(const ibv_wc&)> on_wc_;
  unsigned unacked_events_ = 0;
  bool armed_ = false;  // the CQ raises an event for its next completion (loop thread)
  // send queue accounting for PostSend(): work requests posted, those retired by a polled
  // signalled completion, posts since the last signalled one, and for each signalled work
  // request in flight the posted count it retires up to (send completions come in post order)
  std::mutex sq_mu_;
  uint64_t sq_posted_ = 0, sq_retired_ = 0;
  uint32_t sq_unsignaled_posts_ = 0;
  std::deque<uint64_t> sq_marks_;
  // QueueSend()'s chains of this batch (loop thread): the work requests, and for each its first
  // scatter element in queued_sges_ (pointers are set when the batch is posted)
  std::vector<ibv_send_wr> queued_wrs_;
  std::vector<size_t> queued_sge_at_;
  std::vector<ibv_sge> queued_sges_;
};

// Waits for the next cm event on ch (blocking fd) up to timeout_ms. 0 or -ETIMEDOUT / -errno.
int WaitCmEvent(rdma_event_channel* ch, int timeout_ms, rdma_cm_event** ev);

}  // namespace ibnbd::rdma
