#include "vhost/blk_limits.h"

#include <cstring>

namespace ibnbd::vhost {

uint64_t BlkFeatures(const BlkLimits& l) {
  uint64_t f = Bit(kFVersion1) | Bit(kFIndirectDesc) | Bit(kFEventIdx) | Bit(kFSizeMax) |
               Bit(kFSegMax) | Bit(kFBlkSize) | Bit(kFTopology) | Bit(kFMq) | Bit(kFFlush) |
               Bit(kFConfigWce);
  if (l.read_only) f |= Bit(kFRo);
  // Range operations change data, so a read-only device offers none of them.
  if (!l.read_only && l.discard_max_sectors) f |= Bit(kFDiscard);
  if (!l.read_only && l.write_zeroes_max_sectors) f |= Bit(kFWriteZeroes);
  if (!l.read_only && l.secure_erase && l.discard_max_sectors) f |= Bit(kFSecureErase);
  return f;
}

static uint8_t Log2(uint32_t v) {
  uint8_t n = 0;
  while (v > 1) v >>= 1, n++;
  return n;
}

BlkConfig BlkConfigSpace(const BlkLimits& l, bool wce) {
  BlkConfig c;
  std::memset(&c, 0, sizeof c);
  uint64_t f = BlkFeatures(l);
  c.capacity = l.capacity_sectors();
  // One segment never exceeds a transport request; larger requests are split by us anyway.
  c.size_max = l.max_io_size;
  c.seg_max = kSegMax;
  c.blk_size = l.logical_block_size;
  c.physical_block_exp = Log2(l.physical_block_size / l.logical_block_size);
  c.min_io_size = 1;
  c.opt_io_size = l.max_io_size / l.logical_block_size;
  c.wce = wce ? 1 : 0;
  c.num_queues = l.queues;
  if (f & Bit(kFDiscard)) {
    c.max_discard_sectors = l.discard_max_sectors;
    c.max_discard_seg = kMaxSegmentsPerRange;
    uint32_t g = l.discard_granularity ? l.discard_granularity : l.logical_block_size;
    c.discard_sector_alignment = g >> kSectorShift;
  }
  if (f & Bit(kFWriteZeroes)) {
    c.max_write_zeroes_sectors = l.write_zeroes_max_sectors;
    c.max_write_zeroes_seg = kMaxSegmentsPerRange;
    c.write_zeroes_may_unmap = 1;
  }
  if (f & Bit(kFSecureErase)) {
    // RNBD's convention: secure erase shares the discard limits (Linux
    // drivers/block/rnbd/rnbd-clt.c sets max_secure_erase_sectors from max_discard_sectors).
    c.max_secure_erase_sectors = l.discard_max_sectors;
    c.max_secure_erase_seg = kMaxSegmentsPerRange;
    uint32_t g = l.discard_granularity ? l.discard_granularity : l.logical_block_size;
    c.secure_erase_sector_alignment = g >> kSectorShift;
  }
  return c;
}

}  // namespace ibnbd::vhost
