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

#include <algorithm>
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

// What the probe found, gathered off the JS thread (no N-API in here).
struct Geometry {
  int err = 0;             // positive errno when the probe failed
  const char* where = "";  // the call that failed
  bool block = false;
  uint64_t size = 0;
  int lbs = 512;
  unsigned int pbs = 512;
  uint64_t max_hw_sectors = 0, max_discard_sectors = 0, discard_granularity = 0, max_write_zeroes_sectors = 0;
  bool secure_discard = false, rotational = false, write_cache = false, fua = false;
};

void Probe(int fd, Geometry* g) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    g->err = errno;
    g->where = "fstat";
    return;
  }
  if (S_ISBLK(st.st_mode)) {
    g->block = true;
    if (ioctl(fd, BLKGETSIZE64, &g->size) != 0) {
      g->err = errno;
      g->where = "BLKGETSIZE64";
      return;
    }
    ioctl(fd, BLKSSZGET, &g->lbs);
    ioctl(fd, BLKPBSZGET, &g->pbs);
    std::string q = QueueDir(st.st_rdev);
    g->max_discard_sectors = std::min<uint64_t>(SysfsNum(q + "/discard_max_bytes", 0) / 512, 0xffffffffu);
    g->max_write_zeroes_sectors = std::min<uint64_t>(SysfsNum(q + "/write_zeroes_max_bytes", 0) / 512, 0xffffffffu);
    g->secure_discard = SysfsNum(q + "/max_secure_erase_sectors", 0) > 0;
    g->max_hw_sectors = SysfsNum(q + "/max_hw_sectors_kb", 128) * 2;
    g->discard_granularity = SysfsNum(q + "/discard_granularity", 0);
    g->rotational = SysfsNum(q + "/rotational", 0) != 0;
    g->write_cache = ReadSysfs(q + "/write_cache") == "write back";
    g->fua = SysfsNum(q + "/fua", 0) != 0;
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    g->err = ENODEV;
    g->where = "neither a block device nor a regular file";
    return;
  }
  // fallocate just past EOF with KEEP_SIZE: the file's contents and size are untouched; the
  // zero-range probe may allocate a block there, which the punch then frees again.
  off_t past = (st.st_size + 4095) & ~static_cast<off_t>(4095);
  bool zero = fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, past, 4096) == 0;
  bool punch = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, past, 4096) == 0;
  constexpr uint32_t kFileRangeSectors = (1u << 30) / 512;
  g->size = st.st_size;
  g->lbs = 512;
  g->pbs = 4096;
  g->max_hw_sectors = 256;
  g->max_discard_sectors = punch ? kFileRangeSectors : 0;
  g->discard_granularity = punch ? 4096 : 0;
  g->max_write_zeroes_sectors = zero ? kFileRangeSectors : 0;
  g->write_cache = true;  // the page cache: FLUSH (fdatasync) is meaningful
  g->fua = true;          // RWF_DSYNC per write
}

Napi::Object ToJs(Napi::Env env, const Geometry& g) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("sizeBytes", static_cast<double>(g.size));
  o.Set("logicalBlockSize", g.lbs);
  o.Set("physicalBlockSize", g.pbs);
  o.Set("maxHwSectors", static_cast<double>(g.max_hw_sectors));
  o.Set("maxDiscardSectors", static_cast<double>(g.max_discard_sectors));
  o.Set("discardGranularity", static_cast<double>(g.discard_granularity));
  o.Set("discardAlignment", 0);
  o.Set("maxWriteZeroesSectors", static_cast<double>(g.max_write_zeroes_sectors));
  o.Set("secureDiscard", g.secure_discard);
  o.Set("rotational", g.rotational);
  o.Set("writeCache", g.write_cache);
  o.Set("fua", g.fua);
  o.Set("isBlockDevice", g.block);
  return o;
}

// On libuv's thread pool: an ioctl or fallocate on a hung device or filesystem holds a pool
// thread, never the event loop (docs/security.md, "A hung device").
class ProbeWork : public Napi::AsyncWorker {
 public:
  ProbeWork(Napi::Env env, int fd) : Napi::AsyncWorker(env, "ibnbd:probeDevice"), fd_(fd), deferred_(env) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { Probe(fd_, &g_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (g_.err) {
      deferred_.Reject(ErrnoError(env, g_.err, g_.where).Value());
      return;
    }
    deferred_.Resolve(ToJs(env, g_));
  }

 private:
  int fd_;
  Geometry g_;
  Napi::Promise::Deferred deferred_;
};

// probeDevice(fd): Promise<geometry>
Napi::Value ProbeDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) ThrowErrno(env, EINVAL, "probeDevice(fd)");
  auto* work = new ProbeWork(env, info[0].As<Napi::Number>().Int32Value());
  Napi::Promise p = work->Promise();
  work->Queue();
  return p;
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probeDevice", Napi::Function::New(env, ProbeDevice, "probeDevice"));
}

}  // namespace
}  // namespace ibnbd::server

IBNBD_MODULE(server_probe, ibnbd::server::Init);
