// Helpers every C tool here needs alike (header-only): the monotonic clock in nanoseconds and
// splitmix64, which both generates the tools' pseudo-random numbers and defines the data pattern
// of ibnbd-blkio (word at device offset o = splitmix64(seed ^ o); tests/support/vhost-helpers.ts
// expectedPattern recomputes it in TypeScript).
#ifndef IBNBD_TOOLS_COMMON_H
#define IBNBD_TOOLS_COMMON_H

#include <stdint.h>
#include <time.h>

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define SPLITMIX64_GAMMA 0x9e3779b97f4a7c15ull

/** splitmix64 of x: a well-mixed 64-bit word, the same for the same x. */
static inline uint64_t splitmix64(uint64_t x) {
  x += SPLITMIX64_GAMMA;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/** The next number of the splitmix64 generator whose state is *state. */
static inline uint64_t splitmix64_next(uint64_t *state) {
  uint64_t x = splitmix64(*state);
  *state += SPLITMIX64_GAMMA;
  return x;
}

#endif
