#include "vhost/blk_request.h"

#include <algorithm>
#include <cstring>

namespace ibnbd::vhost {
namespace {

uint64_t StreamBytes(const iovec* v, unsigned n) {
  uint64_t s = 0;
  for (unsigned i = 0; i < n; i++) s += v[i].iov_len;
  return s;
}

// Copies up to len bytes starting at byte `skip` of the stream into dst; returns bytes copied.
size_t Gather(const iovec* v, unsigned n, uint64_t skip, void* dst, size_t len) {
  size_t done = 0;
  for (unsigned i = 0; i < n && done < len; i++) {
    uint64_t l = v[i].iov_len;
    if (skip >= l) {
      skip -= l;
      continue;
    }
    size_t take = std::min<uint64_t>(l - skip, len - done);
    std::memcpy(static_cast<uint8_t*>(dst) + done, static_cast<uint8_t*>(v[i].iov_base) + skip, take);
    done += take;
    skip = 0;
  }
  return done;
}

size_t Scatter(const iovec* v, unsigned n, const void* src, size_t len) {
  size_t done = 0;
  for (unsigned i = 0; i < n && done < len; i++) {
    size_t take = std::min<size_t>(v[i].iov_len, len - done);
    std::memcpy(v[i].iov_base, static_cast<const uint8_t*>(src) + done, take);
    done += take;
  }
  return done;
}

// Appends the slices of bytes [skip, skip+len) of the stream to plan->iov, cut into chunks of
// at most `chunk` bytes, each chunk becoming one PlannedIo.
void SplitData(const iovec* v, unsigned n, uint64_t skip, uint64_t len, uint32_t chunk,
               PlannedIo proto_io, uint64_t sector, RequestPlan* plan) {
  unsigned i = 0;
  uint64_t off = skip;
  while (i < n && off >= v[i].iov_len) off -= v[i++].iov_len;
  uint64_t left = len;
  while (left > 0) {
    PlannedIo io = proto_io;
    io.sector = sector;
    io.iov_first = uint32_t(plan->iov.size());
    uint32_t want = uint32_t(std::min<uint64_t>(left, chunk));
    uint32_t got = 0;
    while (got < want && i < n) {
      size_t avail = v[i].iov_len - off;
      size_t take = std::min<size_t>(avail, want - got);
      if (take) plan->iov.push_back({static_cast<uint8_t*>(v[i].iov_base) + off, take});
      got += uint32_t(take);
      off += take;
      if (off == v[i].iov_len) i++, off = 0;
    }
    io.bytes = got;
    io.iov_count = uint32_t(plan->iov.size()) - io.iov_first;
    plan->ios.push_back(io);
    left -= got;
    sector += got >> kSectorShift;
    if (got == 0) break;  // cannot happen when len ≤ stream bytes; guards the loop
  }
}

void Fail(RequestPlan* p, uint8_t status, std::string why) {
  p->local = true;
  p->local_status = status;
  p->used_len = 1;
  p->ios.clear();
  p->iov.clear();
  p->error = std::move(why);
}

}  // namespace

void PlanRequest(const iovec* out, unsigned out_num, const iovec* in, unsigned in_num,
                 const BlkLimits& l, bool wce, RequestPlan* p) {
  PlanRequest(out, out_num, in, in_num, l, l.capacity_sectors(), wce, p);
}

void PlanRequest(const iovec* out, unsigned out_num, const iovec* in, unsigned in_num,
                 const BlkLimits& l, uint64_t cap, bool wce, RequestPlan* p) {
  *p = RequestPlan{};
  const uint64_t out_bytes = StreamBytes(out, out_num);
  const uint64_t in_bytes = StreamBytes(in, in_num);

  // The status byte: the last byte of the device-writable stream, wherever it lies.
  for (unsigned i = in_num; i-- > 0;) {
    if (in[i].iov_len) {
      p->status = static_cast<uint8_t*>(in[i].iov_base) + in[i].iov_len - 1;
      break;
    }
  }
  if (!p->status) return Fail(p, kBlkSIoErr, "no device-writable status byte");

  BlkOutHdr hdr;
  if (Gather(out, out_num, 0, &hdr, sizeof hdr) != sizeof hdr)
    return Fail(p, kBlkSIoErr, "request header shorter than 16 bytes");
  p->type = hdr.type;
  const uint64_t payload_out = out_bytes - sizeof hdr;  // after the header
  const uint64_t payload_in = in_bytes - 1;             // before the status byte

  switch (hdr.type) {
    case kBlkTIn:
    case kBlkTOut: {
      const bool read = hdr.type == kBlkTIn;
      const uint64_t len = read ? payload_in : payload_out;
      if (read ? payload_out != 0 : payload_in != 0)
        return Fail(p, kBlkSIoErr, "data buffers in the wrong direction");
      if (!read && l.read_only) return Fail(p, kBlkSIoErr, "write to a read-only device");
      if (len == 0 || len % kSectorSize) return Fail(p, kBlkSIoErr, "data length not a multiple of 512");
      if (len > kMaxRequestBytes) return Fail(p, kBlkSIoErr, "request larger than 64 MiB");
      if (hdr.sector > cap || (len >> kSectorShift) > cap - hdr.sector)
        return Fail(p, kBlkSIoErr, "beyond the end of the device");
      PlannedIo io;
      io.op = read ? kOpRead : kOpWrite;
      io.read = read;
      if (!read && !wce && l.fua) io.flags = kRwFua;
      SplitData(read ? in : out, read ? in_num : out_num, read ? 0 : sizeof hdr, len,
                l.max_io_size, io, hdr.sector, p);
      p->data_bytes = len;
      p->used_len = uint32_t(read ? len + 1 : 1);
      return;
    }
    case kBlkTFlush: {
      p->used_len = 1;
      if (l.read_only) {
        p->local = true;
        return;
      }
      PlannedIo io;
      io.op = kOpFlush;
      io.flags = kRwSync;
      p->ios.push_back(io);
      return;
    }
    case kBlkTGetId: {
      uint8_t id[kBlkIdBytes] = {};
      std::memcpy(id, l.serial.data(), std::min<size_t>(l.serial.size(), kBlkIdBytes));
      size_t n = Scatter(in, in_num, id, std::min<uint64_t>(payload_in, kBlkIdBytes));
      p->local = true;
      p->used_len = uint32_t(n + 1);
      return;
    }
    case kBlkTDiscard:
    case kBlkTWriteZeroes:
    case kBlkTSecureErase: {
      const uint64_t f = BlkFeatures(l);
      uint8_t op;
      uint32_t max_sectors;
      if (hdr.type == kBlkTDiscard) {
        if (!(f & Bit(kFDiscard))) return Fail(p, kBlkSUnsupp, "discard not offered");
        op = kOpDiscard, max_sectors = l.discard_max_sectors;
      } else if (hdr.type == kBlkTWriteZeroes) {
        if (!(f & Bit(kFWriteZeroes))) return Fail(p, kBlkSUnsupp, "write-zeroes not offered");
        op = kOpWriteZeroes, max_sectors = l.write_zeroes_max_sectors;
      } else {
        if (!(f & Bit(kFSecureErase))) return Fail(p, kBlkSUnsupp, "secure erase not offered");
        op = kOpSecureErase, max_sectors = l.discard_max_sectors;
      }
      if (payload_in != 0) return Fail(p, kBlkSIoErr, "range request with device-writable data");
      if (payload_out == 0 || payload_out % sizeof(BlkSegment))
        return Fail(p, kBlkSIoErr, "range payload not a whole number of 16-byte segments");
      const uint64_t nseg = payload_out / sizeof(BlkSegment);
      if (nseg > kMaxSegmentsPerRange) return Fail(p, kBlkSIoErr, "too many range segments");
      for (uint64_t s = 0; s < nseg; s++) {
        BlkSegment seg;
        Gather(out, out_num, sizeof hdr + s * sizeof seg, &seg, sizeof seg);
        uint32_t allowed = op == kOpWriteZeroes ? kWriteZeroesFlagUnmap : 0;
        if (seg.flags & ~allowed) return Fail(p, kBlkSUnsupp, "unknown range segment flags");
        if (seg.num_sectors == 0 || seg.num_sectors > max_sectors ||
            seg.num_sectors > (UINT32_MAX >> kSectorShift))
          return Fail(p, kBlkSIoErr, "range segment length out of limits");
        if (seg.sector > cap || seg.num_sectors > cap - seg.sector)
          return Fail(p, kBlkSIoErr, "range segment beyond the end of the device");
        PlannedIo io;
        io.op = op;
        io.sector = seg.sector;
        io.bytes = seg.num_sectors << kSectorShift;
        p->ios.push_back(io);
      }
      p->used_len = 1;
      return;
    }
    default:
      return Fail(p, kBlkSUnsupp, "unsupported request type " + std::to_string(hdr.type));
  }
}

}  // namespace ibnbd::vhost
