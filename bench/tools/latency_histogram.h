// Latency histogram shared by the bench tools (C, header-only, no allocation).
// Log-linear buckets: exact below 128 ns, then 64 buckets per power of two, so any percentile is
// within 1/64 (1.6 %) of the true value, while recording stays one clz and one increment on the
// IO path. Covers up to 2^42 ns (~73 min); longer values land in the last bucket.
#ifndef IBNBD_TOOLS_LATENCY_HISTOGRAM_H
#define IBNBD_TOOLS_LATENCY_HISTOGRAM_H

#include <stdint.h>
#include <string.h>

#define LAT_SUB_BITS 6
#define LAT_SUB (1u << LAT_SUB_BITS)
#define LAT_MAX_SHIFT 36
#define LAT_BUCKETS ((LAT_MAX_SHIFT + 2) * LAT_SUB)

struct lat_hist {
  uint64_t count;
  uint64_t sum_ns;
  uint64_t max_ns;
  uint64_t buckets[LAT_BUCKETS];
};

static inline unsigned lat_bucket(uint64_t ns) {
  if (ns < 2 * LAT_SUB) return (unsigned)ns;
  unsigned msb = 63u - (unsigned)__builtin_clzll(ns);
  unsigned shift = msb - LAT_SUB_BITS;
  if (shift > LAT_MAX_SHIFT) return LAT_BUCKETS - 1;
  return shift * LAT_SUB + (unsigned)(ns >> shift);
}

// Midpoint of a bucket: the value reported for a percentile that falls in it.
static inline double lat_bucket_value(unsigned idx) {
  if (idx < 2 * LAT_SUB) return idx;
  unsigned shift = idx / LAT_SUB - 1;
  uint64_t low = (uint64_t)(idx % LAT_SUB + LAT_SUB) << shift;
  return (double)low + (double)((uint64_t)1 << shift) / 2.0;
}

static inline void lat_record(struct lat_hist *h, uint64_t ns) {
  h->count++;
  h->sum_ns += ns;
  if (ns > h->max_ns) h->max_ns = ns;
  h->buckets[lat_bucket(ns)]++;
}

static inline void lat_merge(struct lat_hist *into, const struct lat_hist *from) {
  into->count += from->count;
  into->sum_ns += from->sum_ns;
  if (from->max_ns > into->max_ns) into->max_ns = from->max_ns;
  for (unsigned i = 0; i < LAT_BUCKETS; i++) into->buckets[i] += from->buckets[i];
}

// Value (ns) below which a fraction q of the samples lie.
static inline double lat_percentile(const struct lat_hist *h, double q) {
  if (h->count == 0) return 0;
  uint64_t rank = (uint64_t)(q * (double)h->count);
  if (rank >= h->count) rank = h->count - 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < LAT_BUCKETS; i++) {
    seen += h->buckets[i];
    if (seen > rank) {
      double v = lat_bucket_value(i);
      return v > (double)h->max_ns ? (double)h->max_ns : v;
    }
  }
  return (double)h->max_ns;
}

static inline double lat_mean(const struct lat_hist *h) {
  return h->count ? (double)h->sum_ns / (double)h->count : 0;
}

#endif
