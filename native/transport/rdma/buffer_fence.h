// One request per buffer id at a time across the paths of a server session.
//
// RTRS fails a request over to another path with the same buffer id. The path it left may
// still be executing it on the server (its io_uring write or read is under way; the server
// has not yet seen that path die). Running the re-issued copy beside it would let the stale
// write land after a newer write the guest issues once the copy completes. So a request whose
// buffer id is still held by another path's request waits until that one has completed.
//
// The fast path is one atomic add and one atomic sub per request; the mutex is taken only when
// two requests of one buffer id overlap (a failover).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace ibnbd::rdma {

class BufferFence {
 public:
  explicit BufferFence(uint32_t buffers) : held_(new std::atomic<uint32_t>[buffers]) {
    for (uint32_t i = 0; i < buffers; i++) held_[i] = 0;
  }

  // Counts the request in. True: no other request holds buf_id, run now. False: call Wait().
  bool Enter(uint32_t buf_id) { return held_[buf_id].fetch_add(1, std::memory_order_acq_rel) == 0; }
  // After Enter() said false. True: the holder has completed meanwhile, run now. False:
  // `resume` was queued and runs (on the thread calling Release) when it is this one's turn.
  bool Wait(uint32_t buf_id, std::function<void()> resume);

  // The request holding buf_id has completed: hands the buffer id to the next one waiting.
  void Release(uint32_t buf_id);

 private:
  // requests with this buffer id that arrived and have not completed, the holder included
  std::unique_ptr<std::atomic<uint32_t>[]> held_;
  std::mutex mu_;
  std::unordered_map<uint32_t, std::deque<std::function<void()>>> waiting_;
  // a Release() that found the next request counted but not yet queued: it runs on arrival
  std::unordered_map<uint32_t, uint32_t> handed_;
};

}  // namespace ibnbd::rdma
