// virtio-blk as the vhost-user-blk back-end sees it (docs/protocol.md, "virtio-blk"; the
// values and layouts are Linux include/uapi/linux/virtio_blk.h): request types, status codes,
// feature bits and the config space. Declared here rather than taken from <linux/virtio_blk.h>
// so the layout we answer GET_CONFIG with is pinned by static_assert and does not move with the
// build host's kernel headers.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ibnbd::vhost {

constexpr uint32_t kSectorShift = 9;  // virtio-blk sectors are always 512 bytes
constexpr uint32_t kSectorSize = 1u << kSectorShift;

// Request types (virtio_blk_outhdr.type)
constexpr uint32_t kBlkTIn = 0;
constexpr uint32_t kBlkTOut = 1;
constexpr uint32_t kBlkTFlush = 4;
constexpr uint32_t kBlkTGetId = 8;
constexpr uint32_t kBlkTDiscard = 11;
constexpr uint32_t kBlkTWriteZeroes = 13;
constexpr uint32_t kBlkTSecureErase = 14;

// Status byte
constexpr uint8_t kBlkSOk = 0;
constexpr uint8_t kBlkSIoErr = 1;
constexpr uint8_t kBlkSUnsupp = 2;

constexpr uint32_t kBlkIdBytes = 20;  // GET_ID: serial, NUL-padded, not necessarily terminated
constexpr uint32_t kWriteZeroesFlagUnmap = 1;

// Feature bits
constexpr unsigned kFSizeMax = 1;
constexpr unsigned kFSegMax = 2;
constexpr unsigned kFRo = 5;
constexpr unsigned kFBlkSize = 6;
constexpr unsigned kFFlush = 9;
constexpr unsigned kFTopology = 10;
constexpr unsigned kFConfigWce = 11;
constexpr unsigned kFMq = 12;
constexpr unsigned kFDiscard = 13;
constexpr unsigned kFWriteZeroes = 14;
constexpr unsigned kFSecureErase = 16;
constexpr unsigned kFIndirectDesc = 28;
constexpr unsigned kFEventIdx = 29;
constexpr unsigned kFVersion1 = 32;

constexpr uint64_t Bit(unsigned b) { return uint64_t(1) << b; }

#pragma pack(push, 1)
struct BlkOutHdr {  // the first 16 device-readable bytes of every request
  uint32_t type;
  uint32_t ioprio;
  uint64_t sector;
};

struct BlkSegment {  // DISCARD / WRITE_ZEROES / SECURE_ERASE payload element
  uint64_t sector;
  uint32_t num_sectors;
  uint32_t flags;
};

struct BlkConfig {
  uint64_t capacity;
  uint32_t size_max;
  uint32_t seg_max;
  uint16_t cylinders;
  uint8_t heads;
  uint8_t sectors;
  uint32_t blk_size;
  uint8_t physical_block_exp;
  uint8_t alignment_offset;
  uint16_t min_io_size;
  uint32_t opt_io_size;
  uint8_t wce;
  uint8_t unused0;
  uint16_t num_queues;
  uint32_t max_discard_sectors;
  uint32_t max_discard_seg;
  uint32_t discard_sector_alignment;
  uint32_t max_write_zeroes_sectors;
  uint32_t max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
  uint32_t max_secure_erase_sectors;
  uint32_t max_secure_erase_seg;
  uint32_t secure_erase_sector_alignment;
  uint8_t zoned[21];
  uint8_t unused2[3];
};
#pragma pack(pop)

static_assert(sizeof(BlkOutHdr) == 16);
static_assert(sizeof(BlkSegment) == 16);
static_assert(sizeof(BlkConfig) == 96);
static_assert(offsetof(BlkConfig, blk_size) == 20 && offsetof(BlkConfig, wce) == 32 &&
              offsetof(BlkConfig, num_queues) == 34 && offsetof(BlkConfig, max_discard_sectors) == 36 &&
              offsetof(BlkConfig, max_write_zeroes_sectors) == 48 &&
              offsetof(BlkConfig, write_zeroes_may_unmap) == 56 &&
              offsetof(BlkConfig, max_secure_erase_sectors) == 60 &&
              offsetof(BlkConfig, zoned) == 72);

}  // namespace ibnbd::vhost
