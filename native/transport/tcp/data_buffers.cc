#include "transport/tcp/data_buffers.h"

#include <cstdlib>
#include <vector>

namespace ibnbd::transport::tcp {
namespace {

constexpr unsigned kMinShift = 12;                  // 4 KiB
constexpr unsigned kClasses = 13;                   // 4 KiB .. 16 MiB (kMaxMaxIoSize)
constexpr size_t kCacheBytesPerThread = 8u << 20;   // QD32 × 128 KiB = 4 MiB fits twice

unsigned ClassOf(size_t len) {
  unsigned c = 0;
  while ((size_t{1} << (kMinShift + c)) < len) c++;
  return c;
}

struct Cache {
  std::vector<uint8_t*> free[kClasses];
  size_t bytes = 0;
  ~Cache() {
    for (auto& v : free)
      for (uint8_t* b : v) std::free(b);
  }
};

Cache& ThisThread() {
  thread_local Cache cache;
  return cache;
}

}  // namespace

uint8_t* TakeDataBuffer(size_t len) {
  unsigned c = ClassOf(len);
  size_t cap = size_t{1} << (kMinShift + c);
  if (c < kClasses) {
    Cache& cache = ThisThread();
    if (!cache.free[c].empty()) {
      uint8_t* b = cache.free[c].back();
      cache.free[c].pop_back();
      cache.bytes -= cap;
      return b;
    }
  }
  return static_cast<uint8_t*>(aligned_alloc(4096, cap));
}

void GiveDataBuffer(uint8_t* buf, size_t len) {
  if (!buf) return;
  unsigned c = ClassOf(len);
  size_t cap = size_t{1} << (kMinShift + c);
  Cache& cache = ThisThread();
  if (c >= kClasses || cache.bytes + cap > kCacheBytesPerThread) return std::free(buf);
  cache.free[c].push_back(buf);
  cache.bytes += cap;
}

}  // namespace ibnbd::transport::tcp
