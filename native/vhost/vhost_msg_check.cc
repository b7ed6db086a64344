#include "vhost/vhost_msg_check.h"

#include <sys/stat.h>

#include <cstddef>

namespace ibnbd::vhost {
namespace {

constexpr size_t kU64 = sizeof(uint64_t);
constexpr size_t kState = sizeof(vhost_vring_state);
constexpr size_t kAddr = sizeof(vhost_vring_addr);
constexpr size_t kMemHdr = offsetof(VhostUserMemory, regions);
constexpr size_t kRegion = sizeof(VhostUserMemoryRegion);
constexpr size_t kMemReg = sizeof(VhostUserMemRegMsg);
constexpr size_t kConfigHdr = offsetof(VhostUserConfig, region);
constexpr size_t kInflight = sizeof(VhostUserInflight);
constexpr size_t kLog = sizeof(VhostUserLog);

bool Bad(std::string* why, std::string s) {
  *why = std::move(s);
  return false;
}

// A region's fd must be a regular file (memfd, shm, hugetlbfs) covering offset + size, or the
// first access beyond its end raises SIGBUS in our process.
bool RegionFdOk(int fd, uint64_t offset, uint64_t size, std::string* why) {
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) return Bad(why, "memory region fd unusable");
  if (!S_ISREG(st.st_mode)) return Bad(why, "memory region fd is not a regular file or memfd");
  if (size == 0) return Bad(why, "memory region of size 0");
  if (offset + size < offset || uint64_t(st.st_size) < offset + size)
    return Bad(why, "memory region larger than its file");
  return true;
}

bool RegionOk(const VhostUserMemoryRegion& r, int fd, std::string* why) {
  if (r.userspace_addr + r.memory_size < r.userspace_addr ||
      r.guest_phys_addr + r.memory_size < r.guest_phys_addr)
    return Bad(why, "memory region wraps around");
  return RegionFdOk(fd, r.mmap_offset, r.memory_size, why);
}

bool QueueIndexOk(const VuDev* dev, uint32_t index, std::string* why) {
  if (index >= dev->max_queues) return Bad(why, "ring index " + std::to_string(index) + " out of range");
  return true;
}

bool InsideRegions(const VuDev* dev, uint64_t qva, uint64_t len) {
  for (uint32_t i = 0; i < dev->nregions; i++) {
    const VuDevRegion& r = dev->regions[i];
    if (qva >= r.qva && len <= r.size && qva - r.qva <= r.size - len) return true;
  }
  return false;
}

uint64_t InflightQueueBytes(uint16_t queue_size) {
  uint64_t n = sizeof(VuDescStateSplit) * uint64_t(queue_size) + sizeof(uint16_t);
  return (n + 63) & ~uint64_t(63);
}

}  // namespace

bool CheckVhostMsg(const VuDev* dev, const VhostUserMsg* m, std::string* why) {
  if ((m->flags & VHOST_USER_VERSION_MASK) != 1) return Bad(why, "bad version in flags");
  if (m->flags & VHOST_USER_REPLY_MASK) return Bad(why, "reply flag on a request");
  const uint32_t size = m->size;
  const int fds = m->fd_num;
  auto expect = [&](size_t min_size, int nfds) {
    if (size < min_size) return Bad(why, "payload of " + std::to_string(size) + " bytes too short");
    if (fds != nfds) return Bad(why, std::to_string(fds) + " fds where " + std::to_string(nfds) + " expected");
    return true;
  };
  switch (m->request) {
    case VHOST_USER_GET_FEATURES:
    case VHOST_USER_GET_PROTOCOL_FEATURES:
    case VHOST_USER_GET_QUEUE_NUM:
    case VHOST_USER_GET_MAX_MEM_SLOTS:
    case VHOST_USER_SET_OWNER:
    case VHOST_USER_RESET_OWNER:
      return expect(0, 0);
    case VHOST_USER_SET_SLAVE_REQ_FD:  // the back-end channel (config changes), one socket fd
    case VHOST_USER_SET_LOG_FD:        // the eventfd kicked after dirty-log marks
      return expect(0, 1);
    case VHOST_USER_SET_LOG_BASE:  // the dirty log: shared memory the fd must cover
      if (size != kLog || fds != 1) return Bad(why, "SET_LOG_BASE malformed");
      return RegionFdOk(m->fds[0], m->payload.log.mmap_offset, m->payload.log.mmap_size, why);
    case VHOST_USER_SET_FEATURES:
    case VHOST_USER_SET_PROTOCOL_FEATURES:
      return expect(kU64, 0);
    case VHOST_USER_SET_MEM_TABLE: {
      if (size < kMemHdr) return Bad(why, "memory table too short");
      uint32_t n = m->payload.memory.nregions;
      if (n == 0 || n > VHOST_MEMORY_BASELINE_NREGIONS) return Bad(why, "memory table with " + std::to_string(n) + " regions");
      if (!expect(kMemHdr + n * kRegion, int(n))) return false;
      for (uint32_t i = 0; i < n; i++)
        if (!RegionOk(m->payload.memory.regions[i], m->fds[i], why)) return false;
      return true;
    }
    case VHOST_USER_ADD_MEM_REG:
      if (!expect(kMemReg, 1)) return false;
      if (dev->nregions >= VHOST_USER_MAX_RAM_SLOTS) return Bad(why, "no free memory slot");
      return RegionOk(m->payload.memreg.region, m->fds[0], why);
    case VHOST_USER_REM_MEM_REG:
      if (size < kMemReg) return Bad(why, "REM_MEM_REG too short");
      return fds <= 1 ? true : Bad(why, "REM_MEM_REG with several fds");
    case VHOST_USER_SET_VRING_NUM: {
      if (!expect(kState, 0) || !QueueIndexOk(dev, m->payload.state.index, why)) return false;
      uint32_t num = m->payload.state.num;
      if (num == 0 || num > VIRTQUEUE_MAX_SIZE || (num & (num - 1)))
        return Bad(why, "ring size " + std::to_string(num) + " not a power of 2 ≤ 1024");
      return true;
    }
    case VHOST_USER_SET_VRING_BASE:
      if (!expect(kState, 0) || !QueueIndexOk(dev, m->payload.state.index, why)) return false;
      return m->payload.state.num <= 0xffff ? true : Bad(why, "ring base above 65535");
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_SET_VRING_ENABLE:
      return expect(kState, 0) && QueueIndexOk(dev, m->payload.state.index, why);
    case VHOST_USER_SET_VRING_ADDR: {
      if (!expect(kAddr, 0) || !QueueIndexOk(dev, m->payload.addr.index, why)) return false;
      if (m->payload.addr.flags & ~1u) return Bad(why, "unknown vring address flags");
      const VuVirtq& vq = dev->vq[m->payload.addr.index];
      uint64_t num = vq.vring.num;
      if (num == 0) return Bad(why, "vring address before vring size");
      if (!InsideRegions(dev, m->payload.addr.desc_user_addr, 16 * num) ||
          !InsideRegions(dev, m->payload.addr.avail_user_addr, 6 + 2 * num) ||
          !InsideRegions(dev, m->payload.addr.used_user_addr, 6 + 8 * num))
        return Bad(why, "vring outside guest memory");
      return true;
    }
    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR: {
      if (size < kU64) return Bad(why, "vring fd message too short");
      uint64_t v = m->payload.u64;
      if (v & ~uint64_t(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK))
        return Bad(why, "unknown bits in vring fd message");
      if (!QueueIndexOk(dev, uint32_t(v & VHOST_USER_VRING_IDX_MASK), why)) return false;
      bool nofd = v & VHOST_USER_VRING_NOFD_MASK;
      if (fds != (nofd ? 0 : 1)) return Bad(why, "vring fd message with " + std::to_string(fds) + " fds");
      return true;
    }
    case VHOST_USER_GET_CONFIG:
    case VHOST_USER_SET_CONFIG: {
      if (!expect(kConfigHdr, 0)) return false;
      uint32_t csize = m->payload.config.size;
      if (csize > VHOST_USER_MAX_CONFIG_SIZE || size < kConfigHdr + csize)
        return Bad(why, "config payload size inconsistent");
      return true;
    }
    case VHOST_USER_GET_INFLIGHT_FD: {
      if (size != kInflight || fds != 0) return Bad(why, "GET_INFLIGHT_FD malformed");
      uint16_t nq = m->payload.inflight.num_queues, qs = m->payload.inflight.queue_size;
      if (nq == 0 || nq > dev->max_queues || qs == 0 || qs > VIRTQUEUE_MAX_SIZE)
        return Bad(why, "inflight area geometry out of range");
      return true;
    }
    case VHOST_USER_SET_INFLIGHT_FD: {
      if (size != kInflight || fds != 1) return Bad(why, "SET_INFLIGHT_FD malformed");
      const VhostUserInflight& in = m->payload.inflight;
      if (in.num_queues == 0 || in.num_queues > dev->max_queues || in.queue_size == 0 ||
          in.queue_size > VIRTQUEUE_MAX_SIZE)
        return Bad(why, "inflight area geometry out of range");
      if (in.mmap_size < InflightQueueBytes(in.queue_size) * in.num_queues)
        return Bad(why, "inflight area smaller than its queues");
      return RegionFdOk(m->fds[0], in.mmap_offset, in.mmap_size, why);
    }
    default:
      // Postcopy, IOTLB, in-band kicks (VRING_KICK needs
      // INBAND_NOTIFICATIONS), net/crypto/gpu messages: not offered by this device, so a
      // front-end sending them is broken.
      return Bad(why, "unsupported request " + std::to_string(m->request));
  }
}

bool CheckRings(const VuDev* dev, std::string* why) {
  for (uint16_t i = 0; i < dev->max_queues; i++) {
    const VuVirtq& vq = dev->vq[i];
    if (!vq.vring.desc) continue;
    uint64_t num = vq.vring.num;
    if (!InsideRegions(dev, vq.vra.desc_user_addr, 16 * num) ||
        !InsideRegions(dev, vq.vra.avail_user_addr, 6 + 2 * num) ||
        !InsideRegions(dev, vq.vra.used_user_addr, 6 + 8 * num))
      return Bad(why, "ring " + std::to_string(i) + " no longer inside guest memory");
  }
  return true;
}

bool NeedsDrain(int request) {
  switch (request) {
    case VHOST_USER_SET_MEM_TABLE:
    case VHOST_USER_ADD_MEM_REG:
    case VHOST_USER_REM_MEM_REG:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_RESET_OWNER:
    case VHOST_USER_SET_INFLIGHT_FD:
      return true;
    default:
      return false;
  }
}

}  // namespace ibnbd::vhost
