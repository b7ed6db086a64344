// probeDevice(fd): the geometry OPEN_RSP reports, asked of the kernel through the descriptor.
// Block devices: ioctls for size and block sizes, sysfs queue limits for discard/write-zeroes,
// rotational, write cache and FUA. Regular files: 512/4096 block sizes and a real fallocate
// probe (just past EOF, KEEP_SIZE, undone) for punch-hole and zero-range support.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>

#include "common/errors.h"
#include "common/module.h"

namespace ibnbd::server {
namespace {

std::string ReadSysfs(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (!f || !std::getline(f, s)) return "";
  return s;
}

uint64_t SysfsNum(const std::string& path, uint64_t dflt) {
  std::string s = ReadSysfs(path);
  if (s.empty()) return dflt;
  return strtoull(s.c_str(), nullptr, 10);
}

// The queue directory of a block device (a partition's is its parent's).
std::string QueueDir(dev_t rdev) {
  std::string base = "/sys/dev/block/" + std::to_string(major(rdev)) + ":" + std::to_string(minor(rdev));
  if (access((base + "/queue").c_str(), F_OK) == 0) return base + "/queue";
  return base + "/../queue";
}

Napi::Value ProbeDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) ThrowErrno(env, EINVAL, "probeDevice(fd)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowErrno(env, errno, "fstat");
  Napi::Object o = Napi::Object::New(env);
  if (S_ISBLK(st.st_mode)) {
    uint64_t size = 0;
    int lbs = 512;
    unsigned int pbs = 512;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) ThrowErrno(env, errno, "BLKGETSIZE64");
    ioctl(fd, BLKSSZGET, &lbs);
    ioctl(fd, BLKPBSZGET, &pbs);
    std::string q = QueueDir(st.st_rdev);
    uint64_t discard_max = SysfsNum(q + "/discard_max_bytes", 0);
    uint64_t wz_max = SysfsNum(q + "/write_zeroes_max_bytes", 0);
    uint64_t secure = SysfsNum(q + "/max_secure_erase_sectors", 0);
    o.Set("sizeBytes", static_cast<double>(size));
    o.Set("logicalBlockSize", lbs);
    o.Set("physicalBlockSize", pbs);
    o.Set("maxHwSectors", static_cast<double>(SysfsNum(q + "/max_hw_sectors_kb", 128) * 2));
    o.Set("maxDiscardSectors", static_cast<double>(std::min<uint64_t>(discard_max / 512, 0xffffffffu)));
    o.Set("discardGranularity", static_cast<double>(SysfsNum(q + "/discard_granularity", 0)));
    o.Set("discardAlignment", 0);
    o.Set("maxWriteZeroesSectors", static_cast<double>(std::min<uint64_t>(wz_max / 512, 0xffffffffu)));
    o.Set("secureDiscard", secure > 0);
    o.Set("rotational", SysfsNum(q + "/rotational", 0) != 0);
    o.Set("writeCache", ReadSysfs(q + "/write_cache") == "write back");
    o.Set("fua", SysfsNum(q + "/fua", 0) != 0);
    o.Set("isBlockDevice", true);
    return o;
  }
  if (!S_ISREG(st.st_mode)) ThrowErrno(env, ENODEV, "neither a block device nor a regular file");
  // fallocate just past EOF with KEEP_SIZE: the file's contents and size are untouched; the
  // zero-range probe may allocate a block there, which the punch then frees again.
  off_t past = (st.st_size + 4095) & ~static_cast<off_t>(4095);
  bool zero = fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, past, 4096) == 0;
  bool punch = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, past, 4096) == 0;
  constexpr uint32_t kFileRangeSectors = (1u << 30) / 512;
  o.Set("sizeBytes", static_cast<double>(st.st_size));
  o.Set("logicalBlockSize", 512);
  o.Set("physicalBlockSize", 4096);
  o.Set("maxHwSectors", 256);
  o.Set("maxDiscardSectors", punch ? kFileRangeSectors : 0);
  o.Set("discardGranularity", punch ? 4096 : 0);
  o.Set("discardAlignment", 0);
  o.Set("maxWriteZeroesSectors", zero ? kFileRangeSectors : 0);
  o.Set("secureDiscard", false);
  o.Set("rotational", false);
  o.Set("writeCache", true);  // the page cache: FLUSH (fdatasync) is meaningful
  o.Set("fua", true);         // RWF_DSYNC per write
  o.Set("isBlockDevice", false);
  return o;
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probeDevice", Napi::Function::New(env, ProbeDevice, "probeDevice"));
}

}  // namespace
}  // namespace ibnbd::server

IBNBD_MODULE(server_probe, ibnbd::server::Init);
