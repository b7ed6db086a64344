// The migration dirty log of one front-end connection (VHOST_F_LOG_ALL with
// VHOST_USER_PROTOCOL_F_LOG_SHMFD): a bitmap in memory the front-end shares with SET_LOG_BASE,
// one bit per 4 KiB page of guest-physical memory. While QEMU migrates a VM it copies again every
// page whose bit is set, so every guest page this device writes (read data, status bytes, the
// used ring) must be marked after the write and before the guest can see the request answered.
//
// libvhost-user has its own log, but it asserts (or, built with NDEBUG, writes beyond the
// table) when an address is past the table's end, and re-reads descriptor addresses from the
// guest-writable ring to find what to mark. Ours marks the iovecs popped and checked at pop
// time, translated back to guest-physical addresses, and refuses a page beyond the table.
//
// Threads: SetBase/SetCallFd/Reset run on the home loop under the connection's write lock; Mark
// runs on queue loops under the read lock, so the table cannot change under it, and bits are
// set with atomic ORs (several loops may mark the same byte).
#pragma once
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <string>

extern "C" {
#include "libvhost-user.h"
}

namespace ibnbd::vhost {

class DirtyLog {
 public:
  static constexpr uint64_t kPageSize = 4096;  // VHOST_LOG_PAGE

  // pages_marked: where marked pages are counted (the device's, shown by `ibnbd show`)
  explicit DirtyLog(std::atomic<uint64_t>* pages_marked) : pages_marked_(pages_marked) {}
  DirtyLog(const DirtyLog&) = delete;
  DirtyLog& operator=(const DirtyLog&) = delete;
  ~DirtyLog() { Reset(); }

  // SET_LOG_BASE: maps `size` bytes of `fd` at `offset` (the fd is always closed). On failure
  // the previous table stays and `why` says what failed.
  bool SetBase(int fd, uint64_t size, uint64_t offset, std::string* why);
  // SET_LOG_FD: the eventfd kicked after marking (takes the fd).
  void SetCallFd(int fd);
  void Reset();

  bool mapped() const { return table_ != nullptr; }
  // Logging is on when the front-end acked VHOST_F_LOG_ALL and gave a table.
  static bool Enabled(const VuDev& d, const DirtyLog& log) {
    return (d.features & (1ull << VHOST_F_LOG_ALL)) && log.mapped();
  }

  // Marks every page of [gpa, gpa + len). False, marking nothing, when a page lies beyond the
  // table: the front-end gave a log too small for its memory.
  bool MarkGpa(uint64_t gpa, uint64_t len);
  // Marks the guest pages under host-virtual iovecs (an element's in_sg), translated through
  // the device's regions. False when one is outside every region or beyond the table.
  bool MarkIov(const VuDev& d, const struct iovec* iov, unsigned n);
  // Marks the used ring of `vq` (flags, idx, ring, avail_event), if the front-end asked for it
  // (VHOST_VRING_F_LOG in SET_VRING_ADDR).
  bool MarkUsedRing(const VuVirtq& vq);
  void Kick();  // tells the front-end, when it gave a call fd

 private:
  uint8_t* table_ = nullptr;
  uint64_t size_ = 0;
  int call_fd_ = -1;
  std::atomic<uint64_t>* pages_marked_;
};

}  // namespace ibnbd::vhost
