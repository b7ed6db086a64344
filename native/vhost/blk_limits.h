// What one mapped device is and may do, fixed when the NativeVhostBlk is created: the geometry
// from the server's OPEN_RSP, the mapping's options and the session's max IO size. The virtio
// features and the config space are derived from it and from nothing else, so a feature is
// advertised exactly when the device can honour it (SPDK lib/vhost's rule).
#pragma once
#include <cstdint>
#include <string>

#include "vhost/virtio_blk.h"

namespace ibnbd::vhost {

struct BlkLimits {
  uint32_t device_id = 0;       // the server's id for IO messages
  std::string serial;           // GET_ID, ≤ 20 bytes
  uint64_t size_bytes = 0;      // multiple of 512
  uint32_t logical_block_size = 512;
  uint32_t physical_block_size = 512;
  bool read_only = false;
  uint16_t queues = 1;          // 1..16
  uint32_t discard_max_sectors = 0;     // 0: no DISCARD
  uint32_t discard_granularity = 0;     // bytes
  uint32_t write_zeroes_max_sectors = 0;  // 0: no WRITE_ZEROES
  bool secure_erase = false;
  bool writeback = false;       // server has a volatile write cache (initial wce)
  bool fua = false;             // server honours FUA on writes
  uint32_t max_io_size = 128 * 1024;  // the session's negotiated data bytes per request

  uint64_t capacity_sectors() const { return size_bytes >> kSectorShift; }
};

constexpr uint32_t kMaxSegmentsPerRange = 16;  // max_{discard,write_zeroes,secure_erase}_seg
constexpr uint32_t kSegMax = 126;              // data descriptors per request (QEMU queue 128 - 2)
constexpr uint16_t kMaxQueues = 16;

uint64_t BlkFeatures(const BlkLimits& l);
BlkConfig BlkConfigSpace(const BlkLimits& l, bool wce);

}  // namespace ibnbd::vhost
