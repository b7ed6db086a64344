// One vhost-user-blk back-end per mapped device: the listening unix socket, at most one
// front-end connection at a time (libvhost-user VuDev), and the virtqueues, whose requests go
// to the IBNBD server through the session's transport without entering JavaScript.
//
// Threads and locks (details at the top of vhost_blk_device.cc and vhost_blk_internal.h): the
// device's home loop (an IoThreads loop, devices spread over the pool round-robin) accepts the
// front-end, reads and dispatches its vhost-user messages and tears the connection down.
// Virtqueue q runs on IoThreads loop q (mod the pool size): kick, pop, transport submit,
// completion, used-ring push and notify, so a request stays on one thread and the transport's
// rule (completion on the submitting IO thread) holds. libvhost-user has no locks, so each
// front-end connection has a writer-preferring rwlock: the home loop holds the write side while
// it dispatches a message or tears down, and the per-IO path takes the read side once per
// event (kick, completion, batch-end notify), waiting only while the home loop holds or awaits
// the write side. The public methods below may be called from any thread: Start,
// DisconnectFrontend and Close run their loop-side work on the home loop and block the caller
// until it is done (Close: until drained or timed out); the others touch only atomics or the
// limits fixed at construction.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/io_metrics.h"
#include "transport/transport.h"
#include "vhost/blk_limits.h"

namespace ibnbd {
class EventLoop;
}

namespace ibnbd::vhost {

struct QueueStats {
  uint64_t requests = 0;  // completed requests (any status)
  uint64_t read_bytes = 0;
  uint64_t write_bytes = 0;
  uint64_t errors = 0;  // completed with IOERR or UNSUPP
  uint64_t splits = 0;  // requests that needed more than one IBNBD data request
  uint64_t inflight = 0;
  uint64_t waiting = 0;  // held while the device is not open on the server (counted in inflight)
};

struct DeviceStats {
  std::vector<QueueStats> queues;
  IoSnapshot io;  // per operation, summed over the queues (the Prometheus metrics)
  uint64_t connections = 0;     // front-ends accepted so far
  uint64_t protocol_errors = 0;  // front-ends disconnected for a malformed message or ring
  bool dirty_log = false;        // the front-end is migrating the VM: written pages are logged
  uint64_t dirty_pages = 0;      // pages marked in dirty logs since the device started
};

class VhostBlkDevice : public std::enable_shared_from_this<VhostBlkDevice> {
 public:
  // type: "connected", "disconnected", "error"; detail: human-readable. Called on the home
  // loop, except that a libvhost-user panic met while popping or notifying reports its "error"
  // from that queue's loop: the callback must be thread-safe (binding.cc queues it to JS).
  using EventFn = std::function<void(const std::string& type, const std::string& detail)>;

  VhostBlkDevice(BlkLimits limits, std::string socket_path,
                 std::shared_ptr<transport::ClientSession> session, EventFn on_event);
  ~VhostBlkDevice();

  // Creates the listening socket (mode 0600; a stale socket file is replaced, any other file
  // is EEXIST, a live listener EADDRINUSE) and starts accepting. 0 or -errno.
  int Start();
  bool frontend_connected() const { return connected_.load(); }
  // Disconnects the front-end, answering VIRTIO_BLK_S_IOERR to every request it made: those in
  // flight and those still in its rings (a forced unmap: nothing the guest sent is left without
  // an answer). Returns true if one was connected. Blocking (hops to the home loop); not from
  // that loop.
  bool DisconnectFrontend();
  // Stops listening (socket file removed), disconnects the front-end, then waits up to
  // timeout_ms for requests still at the transport. Idempotent. true when fully drained.
  // hand_over (the daemon stops, the next one takes the front-end over: SIGTERM): the rings are
  // no longer popped and what is in flight gets up to timeout_ms to be answered by the server;
  // the front-end is then disconnected without an answer to what is left (held or still at the
  // transport) or still in the rings. QEMU keeps those in its inflight area and resubmits them to
  // the next daemon, as after a crash. Without hand_over, in-flight requests are answered IOERR.
  bool Close(int timeout_ms, bool hand_over = false);
  DeviceStats Stats() const;
  const BlkLimits& limits() const { return limits_; }

  // Where the device stands on the server, and what its requests do about it. Any thread.
  //  * id: open under that id (a re-OPEN after a reconnect may change it). Requests held while
  //    it was not open are sent again first, in the order they were held, then the rings are
  //    served again; requests already encoded keep the id they carry.
  //  * nullopt, wait: not open, and the session is reconnecting: requests wait. New ones stay in
  //    the virtqueue (not popped); popped ones that cannot go out, or come back lost with their
  //    path (transport::core::kLostWithPath), are held on their queue without an answer, in the
  //    memory they already had. A front-end message that must wait for an empty queue
  //    (GET_VRING_BASE, SET_MEM_TABLE, ...) answers the held ones IOERR, so QEMU never waits on
  //    a server that is away.
  //  * nullopt, !wait: not open (the seed's closed device): held and new requests are answered
  //    VIRTIO_BLK_S_IOERR without reaching the transport.
  void SetServerDeviceId(std::optional<uint32_t> id, bool wait = false);
  // Whether a request lost with its path while the device is open is held (the reconnect
  // policy waits; JS sets wait mode once it hears of the loss) or failed at once (the seed's
  // behaviour, ctrl_loss_tmo=0). Set once after construction; default true.
  void SetHoldOnLoss(bool hold) { hold_on_loss_.store(hold); }
  // The mapping's name ("ibnbd0") as the `device` of its log lines; the socket path without
  // one. Set once before Start(), read by every thread after it.
  void SetLogName(std::string name) { log_name_ = std::move(name); }
  const std::string& log_name() const { return log_name_.empty() ? socket_path_ : log_name_; }
  // A re-OPEN reported another size, or `ibnbd resize` set one: bounds checks and GET_CONFIG
  // use it from now on. Any thread.
  void SetSizeBytes(uint64_t size_bytes) { capacity_sectors_.store(size_bytes >> kSectorShift); }
  uint64_t capacity_sectors() const { return capacity_sectors_.load(std::memory_order_relaxed); }
  // Tells the front-end that the config space changed (the capacity): a CONFIG_CHANGE_MSG on
  // the back-end channel, which QEMU answers by reading GET_CONFIG and notifying the guest.
  // Runs on the home loop (RunSync: blocking, not from that loop); false when no front-end has
  // set up a back-end channel.
  bool NotifyConfigChange();
  // The end of the highest byte any write or write-zeroes of this device's front-ends has
  // reached since the device was created: what a shrink must not cut (ibnbd resize).
  uint64_t written_end() const { return written_end_.load(std::memory_order_relaxed); }
  void NoteWritten(uint64_t end) {
    uint64_t cur = written_end_.load(std::memory_order_relaxed);
    while (end > cur && !written_end_.compare_exchange_weak(cur, end, std::memory_order_relaxed)) {
    }
  }

  struct Impl;  // the loop-side state (vhost_blk_internal.h)

 private:
  BlkLimits limits_;
  std::string socket_path_;
  std::string log_name_;
  std::shared_ptr<transport::ClientSession> session_;
  EventFn on_event_;
  EventLoop* loop_;
  std::atomic<bool> connected_{false};
  std::atomic<bool> closed_{false};
  // Live values a re-OPEN may change (limits_ holds those of the first OPEN). One atomic load
  // per request each; kNoServerDevice = not open on the server.
  static constexpr uint64_t kNoServerDevice = UINT64_MAX;
  std::atomic<uint64_t> server_device_;
  std::atomic<bool> wait_{false};          // meaningful while server_device_ is kNoServerDevice
  std::atomic<bool> hold_on_loss_{true};
  // true: a request that cannot go out now is held rather than answered IOERR.
  bool HoldsRequests() const {
    return server_device_.load(std::memory_order_acquire) == kNoServerDevice
               ? wait_.load(std::memory_order_acquire)
               : hold_on_loss_.load(std::memory_order_relaxed);
  }
  // true: the rings are not popped (not open and waiting, or handing over to the next daemon).
  bool RingsPaused() const {
    return handing_over_.load(std::memory_order_acquire) ||
           (server_device_.load(std::memory_order_acquire) == kNoServerDevice &&
            wait_.load(std::memory_order_acquire));
  }
  std::atomic<bool> handing_over_{false};  // Close(hand_over): stop popping, let in-flight finish
  // requests popped and not answered, less those held (waiting for the server): what a hand-over
  // waits for (QueueCounters, any thread)
  uint64_t AtTransport() const;
  std::atomic<uint64_t> capacity_sectors_;
  std::atomic<uint64_t> written_end_{0};
  std::unique_ptr<Impl> impl_;
  friend struct Impl;
};

}  // namespace ibnbd::vhost
