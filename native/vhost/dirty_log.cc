#include "vhost/dirty_log.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ibnbd::vhost {

bool DirtyLog::SetBase(int fd, uint64_t size, uint64_t offset, std::string* why) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset));
  int err = errno;
  close(fd);
  if (p == MAP_FAILED) {
    *why = std::string("cannot map the dirty log: ") + std::strerror(err);
    return false;
  }
  if (table_) munmap(table_, size_);
  table_ = static_cast<uint8_t*>(p);
  size_ = size;
  return true;
}

void DirtyLog::SetCallFd(int fd) {
  if (call_fd_ >= 0) close(call_fd_);
  call_fd_ = fd;
}

void DirtyLog::Reset() {
  if (table_) munmap(table_, size_);
  table_ = nullptr;
  size_ = 0;
  SetCallFd(-1);
}

bool DirtyLog::MarkGpa(uint64_t gpa, uint64_t len) {
  if (!len) return true;
  const uint64_t first = gpa / kPageSize;
  if (gpa + len < gpa) return false;
  const uint64_t last = (gpa + len - 1) / kPageSize;
  if (last / 8 >= size_) return false;
  for (uint64_t page = first; page <= last; page++)
    __atomic_fetch_or(&table_[page / 8], uint8_t(1u << (page % 8)), __ATOMIC_RELAXED);
  pages_marked_->fetch_add(last - first + 1, std::memory_order_relaxed);
  return true;
}

bool DirtyLog::MarkIov(const VuDev& d, const struct iovec* iov, unsigned n) {
  for (unsigned i = 0; i < n; i++) {
    const uint64_t va = uint64_t(uintptr_t(iov[i].iov_base)), len = iov[i].iov_len;
    bool found = false;
    // vu_queue_pop maps each descriptor region by region, so an iovec lies inside one region
    for (uint32_t k = 0; k < d.nregions && !found; k++) {
      const VuDevRegion& r = d.regions[k];
      const uint64_t start = r.mmap_addr + r.mmap_offset;
      if (va < start || va - start > r.size || len > r.size - (va - start)) continue;
      if (!MarkGpa(r.gpa + (va - start), len)) return false;
      found = true;
    }
    if (!found) return false;
  }
  return true;
}

bool DirtyLog::MarkUsedRing(const VuVirtq& vq) {
  if (!(vq.vring.flags & (1u << VHOST_VRING_F_LOG)) || !vq.vring.num) return true;
  // flags, idx, the ring, avail_event (written at pop time with VIRTIO_RING_F_EVENT_IDX)
  const uint64_t bytes = 4 + 8 * uint64_t(vq.vring.num) + 2;
  return MarkGpa(vq.vring.log_guest_addr, bytes);
}

void DirtyLog::Kick() {
  if (call_fd_ >= 0) eventfd_write(call_fd_, 1);
}

}  // namespace ibnbd::vhost
