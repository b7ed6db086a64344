// Translation of one virtio-blk request (a popped descriptor chain, already mapped to our
// address space by libvhost-user) into the IBNBD IO messages that carry it. Pure: no socket,
// no transport, so every malformed layout can be tested byte by byte.
//
// The chain is read as two byte streams, never as "descriptor 0 is the header": the
// device-readable stream is [16-byte header][OUT data or range segments], the device-writable
// stream is [IN data or GET_ID bytes][1 status byte]. Each may be cut anywhere across
// descriptors.
//
// virtio-blk → IBNBD (docs/protocol.md, "virtio-blk"; the IBNBD ops and flags: "Messages"):
//   IN            → READ, data received straight into the guest buffers
//   OUT           → WRITE (| FUA when the guest turned the write cache off and the server
//                   honours FUA), data sent straight from the guest buffers
//   FLUSH         → FLUSH | SYNC (answered OK locally on a read-only device: nothing to flush)
//   DISCARD       → one DISCARD per segment (flags must be 0)
//   WRITE_ZEROES  → one WRITE_ZEROES per segment. UNMAP set: the server may deallocate.
//                   UNMAP clear: IBNBD has no NOUNMAP flag in the negotiated protocol, so the
//                   request is still WRITE_ZEROES; our server implements it without
//                   deallocating (zero range), which is exactly "no unmap"; with an RNBD
//                   server that punches holes the guest still reads zeroes, the only
//                   observable guarantee virtio gives.
//   SECURE_ERASE  → one SECURE_ERASE per segment (flags must be 0)
//   GET_ID        → answered here: serial, NUL-padded to 20 bytes
//   anything else → VIRTIO_BLK_S_UNSUPP
// IN/OUT longer than the session's max IO size become several IBNBD requests (chunks) of at
// most max_io_size bytes each; the request completes once, when the last chunk does.
#pragma once
#include <sys/uio.h>

#include <cstdint>
#include <string>
#include <vector>

#include "vhost/blk_limits.h"

namespace ibnbd::vhost {

// One IBNBD request to send. op/flags use the IO wire values (docs/protocol.md, "Messages").
struct PlannedIo {
  uint8_t op = 0;
  uint32_t flags = 0;
  uint64_t sector = 0;
  uint32_t bytes = 0;      // bi_size
  bool read = false;       // transport direction: data comes back from the server
  uint32_t iov_first = 0;  // into RequestPlan::iov
  uint32_t iov_count = 0;  // 0 for FLUSH / range operations (no data on the wire)
};

struct RequestPlan {
  uint32_t type = 0;
  uint8_t* status = nullptr;  // the last device-writable byte; nullptr: nowhere to answer
  uint8_t local_status = kBlkSOk;
  bool local = false;         // answered without any IO (GET_ID, errors, UNSUPP)
  uint32_t used_len = 0;      // bytes written to device-writable buffers on success, status incl.
  uint64_t data_bytes = 0;    // IN/OUT payload
  std::vector<iovec> iov;     // chunk slices of guest memory, chunk after chunk
  std::vector<PlannedIo> ios;
  std::string error;          // why local_status is IOERR (for the log)
};

// The IBNBD wire values used by the plan (same as native/proto/ibnbd_proto.h IoOp / flags).
constexpr uint8_t kOpRead = 0, kOpWrite = 1, kOpFlush = 2, kOpDiscard = 3, kOpSecureErase = 4,
                  kOpWriteZeroes = 5;
constexpr uint32_t kRwSync = 1u << 8, kRwFua = 1u << 9;

// Largest data payload we accept in one request (guards the arithmetic, not a virtio limit).
constexpr uint64_t kMaxRequestBytes = 64ull << 20;

void PlanRequest(const iovec* out, unsigned out_num, const iovec* in, unsigned in_num,
                 const BlkLimits& limits, bool wce, RequestPlan* plan);
// The same with the device's current capacity (a re-OPEN after reconnect may change it).
void PlanRequest(const iovec* out, unsigned out_num, const iovec* in, unsigned in_num,
                 const BlkLimits& limits, uint64_t capacity_sectors, bool wce, RequestPlan* plan);

}  // namespace ibnbd::vhost
