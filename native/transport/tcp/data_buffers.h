// Data buffers of server requests, recycled per thread. A fresh aligned_alloc of 128 KiB is an
// mmap() + 32 page faults + munmap() per request in glibc (above its mmap threshold): measured
// as a third of the server's CPU at 128 KiB reads (docs/performance.md, "Where the time goes").
// Buffers are 4 KiB aligned (usable for O_DIRECT) and rounded up to a power of two; each thread
// keeps a few per size, up to a byte budget, and frees the rest.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ibnbd::transport::tcp {

// Returns a buffer of at least len bytes (contents undefined), or nullptr.
uint8_t* TakeDataBuffer(size_t len);
// Gives back a buffer from TakeDataBuffer(len) (same len), from any thread.
void GiveDataBuffer(uint8_t* buf, size_t len);

}  // namespace ibnbd::transport::tcp
