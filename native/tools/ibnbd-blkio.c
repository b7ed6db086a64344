// ibnbd-blkio: a vhost-user-blk client on libblkio (driver virtio-blk-vhost-user) for correctness
// tests without a VM (load is ibnbd-blkio-bench's job, bench/tools/blkio_bench.c). IO buffers
// come from blkio_alloc_mem_region + blkio_map_mem_region (fd-backed, as the driver requires).
// Every wait has a timeout: a dead back-end makes the tool fail with exit code 2 instead of
// hanging.
//
//   ibnbd-blkio --path SOCK [--queues N] [--read-only] [--timeout-ms T] MODE [mode options]
//   MODE
//     info                      capacity and limits as the driver sees them
//     verify | write | check    deterministic pattern: write then read back and compare, write
//                               only, or read and compare only. Options: --seed --count --qd
//                               --min-size --max-size --offset --span --sequential
//     flush
//     discard | write-zeroes    --offset --len [--no-unmap]
//   --reconnect-ms R (pattern modes, one queue): a front-end that rides out a back-end restart,
//     as QEMU does with reconnect=1: when no request completes for R ms, or one fails, the tool
//     drops the connection, dials the socket again (every 100 ms, up to --timeout-ms) and sends
//     every request that was in flight again; a request counts as an error only when it fails
//     on three fresh connections in a row. "reconnects" in the output counts them.
// Output: one JSON object on stdout. Exit 0 ok, 1 IO errors or mismatches, 2 setup/timeout.
//
// The pattern: the 8-byte little-endian word at device byte offset o (o multiple of 8) is
// splitmix64(seed ^ o). Tests recompute it to check the bytes in the server's file.
#define _GNU_SOURCE
#include <blkio.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tools_common.h"

struct opts {
  const char *path, *mode;
  int queues, qd, timeout_ms, reconnect_ms;
  bool read_only, sequential, no_unmap;
  uint64_t seed, count, min_size, max_size, offset, span, len;
};

static struct opts o = {
    .queues = 1, .qd = 1, .timeout_ms = 10000, .seed = 1, .count = 64,
    .min_size = 512, .max_size = 65536, .span = 0};

static struct blkio *b;
static struct blkio_mem_region region;
static uint64_t capacity;

static void die(int code, const char *what, int err) {
  printf("{\"ok\":false,\"error\":\"%s: %s (%s)\"}\n", what, strerror(-err), blkio_get_error_msg());
  fflush(stdout);
  exit(code);
}

static void fill_pattern(uint8_t *buf, uint64_t off, uint64_t len) {
  for (uint64_t i = 0; i < len; i += 8) {
    uint64_t w = splitmix64(o.seed ^ (off + i));
    memcpy(buf + i, &w, 8);
  }
}

// ---- pattern IO -------------------------------------------------------------------------

struct io_desc {
  uint64_t off, len;
};

static struct io_desc *ios;
static uint64_t slot_bytes;  // buffer bytes per in-flight slot

struct qstate {
  int qi;
  struct blkioq *q;
  bool write_phase;
  uint64_t done, errors, mismatches, bytes, reconnects;
  uint64_t first_mismatch;
  char first_error[160];
  int timed_out;
};

struct slot {
  uint64_t idx;  // index into ios
  uint64_t len;
  uint8_t *buf;
  bool busy;        // submitted, not completed
  int failures;     // on fresh connections in a row (--reconnect-ms)
};

static uint8_t *slot_buf(int qi, int s) {
  return (uint8_t *)region.addr + ((uint64_t)qi * o.qd + s) * slot_bytes;
}

static bool wait_some(struct qstate *st, struct blkio_completion *c, int min, int max, int *n) {
  int ms = o.reconnect_ms ? o.reconnect_ms : o.timeout_ms;
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  int r = blkioq_do_io(st->q, c, min, max, &t);
  if (r < 0) {
    if (o.reconnect_ms) return *n = -1, true;  // stalled: the caller reconnects
    st->timed_out = r;
    return false;
  }
  *n = r;
  return true;
}

static void note_error(struct qstate *st, const struct blkio_completion *c) {
  st->errors++;
  if (!st->first_error[0])
    snprintf(st->first_error, sizeof st->first_error, "%s (%d)",
             c->error_msg ? c->error_msg : strerror(-c->ret), c->ret);
}

static void submit_pattern(struct qstate *st, struct slot *sl, uint64_t i) {
  sl->idx = i;
  sl->len = ios[i].len;
  if (st->write_phase) {
    fill_pattern(sl->buf, ios[i].off, sl->len);
    blkioq_write(st->q, ios[i].off, sl->buf, sl->len, sl, 0);
  } else {
    memset(sl->buf, 0xa5, sl->len);
    blkioq_read(st->q, ios[i].off, sl->buf, sl->len, sl, 0);
  }
}

static void complete_pattern(struct qstate *st, struct slot *sl, const struct blkio_completion *c) {
  st->done++;
  sl->failures = 0;
  if (c->ret != 0) return note_error(st, c);
  st->bytes += sl->len;
  if (st->write_phase) return;
  uint8_t *want = malloc(sl->len);
  fill_pattern(want, ios[sl->idx].off, sl->len);
  if (memcmp(want, sl->buf, sl->len) != 0) {
    for (uint64_t k = 0; k < sl->len; k++)
      if (want[k] != sl->buf[k]) {
        if (!st->mismatches) st->first_mismatch = ios[sl->idx].off + k;
        break;
      }
    st->mismatches++;
  }
  free(want);
}

static void reconnect(struct qstate *st);

// Requests i ≡ qi (mod queues) go to queue qi, at most qd in flight.
static void *run_pattern(void *arg) {
  struct qstate *st = arg;
  struct slot *slots = calloc(o.qd, sizeof *slots);
  struct slot **free_slots = calloc(o.qd, sizeof *free_slots);
  struct blkio_completion *c = calloc(o.qd, sizeof *c);
  int nfree = o.qd, inflight = 0;
  for (int s = 0; s < o.qd; s++) slots[s].buf = slot_buf(st->qi, s), free_slots[s] = &slots[s];
  uint64_t next = st->qi;
  while (next < o.count || inflight > 0) {
    while (nfree > 0 && next < o.count) {
      struct slot *sl = free_slots[--nfree];
      sl->busy = true;
      submit_pattern(st, sl, next);
      next += o.queues;
      inflight++;
    }
    int n;
    if (!wait_some(st, c, 1, o.qd, &n)) break;
    bool lost = n < 0;  // --reconnect-ms: nothing completed in time
    for (int k = 0; k < n; k++) {
      struct slot *sl = c[k].user_data;
      if (o.reconnect_ms && c[k].ret != 0 && ++sl->failures < 3) {
        lost = true;  // sent again on the next connection, still busy
        continue;
      }
      sl->busy = false;
      complete_pattern(st, sl, &c[k]);
      free_slots[nfree++] = sl;
      inflight--;
    }
    if (lost) {
      reconnect(st);
      for (int s = 0; s < o.qd; s++) {
        slots[s].buf = slot_buf(st->qi, s);
        if (slots[s].busy) submit_pattern(st, &slots[s], slots[s].idx);
      }
    }
  }
  free(slots), free(free_slots), free(c);
  return NULL;
}

// ---- setup ------------------------------------------------------------------------------

static uint64_t region_bytes;

// Connects and maps the IO buffers; 0, or what failed (*what) with its negative errno.
static int try_setup(uint64_t buf_bytes, const char **what) {
  int r = blkio_create("virtio-blk-vhost-user", &b);
  if (r < 0) return *what = "blkio_create", r;
  if ((r = blkio_set_str(b, "path", o.path)) < 0) return *what = "path", r;
  if (o.read_only && (r = blkio_set_bool(b, "read-only", true)) < 0) return *what = "read-only", r;
  if ((r = blkio_connect(b)) < 0) return *what = "blkio_connect", r;
  if ((r = blkio_set_int(b, "num-queues", o.queues)) < 0) return *what = "num-queues", r;
  if ((r = blkio_start(b)) < 0) return *what = "blkio_start", r;
  if ((r = blkio_get_uint64(b, "capacity", &capacity)) < 0) return *what = "capacity", r;
  region_bytes = buf_bytes;
  if (buf_bytes) {
    int align = 0;
    blkio_get_int(b, "mem-region-alignment", &align);
    if (align > 0) buf_bytes = (buf_bytes + align - 1) / align * align;
    if ((r = blkio_alloc_mem_region(b, &region, buf_bytes)) < 0) return *what = "alloc_mem_region", r;
    if ((r = blkio_map_mem_region(b, &region)) < 0) return *what = "map_mem_region", r;
  }
  return 0;
}

static void setup(uint64_t buf_bytes) {
  const char *what = "";
  int r = try_setup(buf_bytes, &what);
  if (r < 0) die(2, what, r);
}

// --reconnect-ms: the old connection goes (its buffers with it), a new one is dialled until it
// answers; the caller sends what was in flight again.
static void reconnect(struct qstate *st) {
  blkio_destroy(&b);
  memset(&region, 0, sizeof region);
  uint64_t until = now_ns() + (uint64_t)o.timeout_ms * 1000000ull;
  const char *what = "";
  int r;
  while ((r = try_setup(region_bytes, &what)) < 0) {
    if (b) blkio_destroy(&b);
    if (now_ns() > until) die(2, what, r);
    struct timespec t = {0, 100 * 1000000L};
    nanosleep(&t, NULL);
  }
  st->q = blkio_get_queue(b, 0);
  st->reconnects++;
}

static struct qstate *queues_state(void) {
  struct qstate *st = calloc(o.queues, sizeof *st);
  for (int i = 0; i < o.queues; i++) {
    st[i].qi = i;
    st[i].q = blkio_get_queue(b, i);
    if (!st[i].q) die(2, "blkio_get_queue", -EINVAL);
  }
  return st;
}

static void run_threads(struct qstate *st, void *(*fn)(void *)) {
  pthread_t *t = calloc((unsigned)o.queues, sizeof *t);
  for (int i = 0; i < o.queues; i++) pthread_create(&t[i], NULL, fn, &st[i]);
  for (int i = 0; i < o.queues; i++) pthread_join(t[i], NULL);
  free(t);
}

// One phase of pattern IO over every queue; prints the phase's JSON member.
static bool pattern_phase(bool write_phase, const char *name, bool comma) {
  struct qstate *st = queues_state();
  for (int i = 0; i < o.queues; i++) st[i].write_phase = write_phase;
  uint64_t t0 = now_ns();
  run_threads(st, run_pattern);
  uint64_t t1 = now_ns();
  uint64_t done = 0, errors = 0, mism = 0, bytes = 0, reconnects = 0;
  int timed_out = 0;
  const char *err = "";
  uint64_t first_mismatch = UINT64_MAX;
  for (int i = 0; i < o.queues; i++) {
    done += st[i].done, errors += st[i].errors, mism += st[i].mismatches, bytes += st[i].bytes;
    reconnects += st[i].reconnects;
    if (st[i].timed_out) timed_out = st[i].timed_out;
    if (!err[0] && st[i].first_error[0]) err = st[i].first_error;
    if (st[i].mismatches && st[i].first_mismatch < first_mismatch) first_mismatch = st[i].first_mismatch;
  }
  printf("%s\"%s\":{\"requests\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"errors\":%" PRIu64
         ",\"mismatches\":%" PRIu64 ",\"firstMismatch\":%" PRId64 ",\"firstError\":\"%s\",\"timedOut\":%s,\"reconnects\":%" PRIu64 ",\"ms\":%.3f}",
         comma ? "," : "", name, done, bytes, errors, mism,
         mism ? (int64_t)first_mismatch : (int64_t)-1, err, timed_out ? "true" : "false", reconnects,
         (t1 - t0) / 1e6);
  if (timed_out) {
    printf("}\n");
    fflush(stdout);
    exit(2);
  }
  free(st);
  return errors == 0 && mism == 0 && done == o.count;
}

static void plan_pattern(void) {
  if (o.min_size < 512 || o.max_size < o.min_size || o.min_size % 512 || o.max_size % 512) {
    fprintf(stderr, "sizes must be multiples of 512, min ≤ max\n");
    exit(2);
  }
  uint64_t span = o.span ? o.span : capacity - o.offset;
  ios = calloc(o.count, sizeof *ios);
  uint64_t rng = o.seed;
  uint64_t steps = (o.max_size - o.min_size) / 512 + 1;
  if (o.sequential) {
    uint64_t off = o.offset;
    for (uint64_t i = 0; i < o.count; i++) {
      rng = splitmix64(rng);
      ios[i].len = o.min_size + (rng % steps) * 512;
      ios[i].off = off;
      off += ios[i].len;
    }
    if (off > o.offset + span) {
      fprintf(stderr, "sequential pattern does not fit in the span\n");
      exit(2);
    }
  } else {
    // Non-overlapping random placement: one slot of max_size per request, slots shuffled,
    // request at a random 512-aligned position inside its slot.
    uint64_t nslots = span / o.max_size;
    if (nslots < o.count) {
      fprintf(stderr, "span too small for %" PRIu64 " requests of up to %" PRIu64 " bytes\n", o.count, o.max_size);
      exit(2);
    }
    uint64_t *perm = malloc(nslots * sizeof *perm);
    for (uint64_t i = 0; i < nslots; i++) perm[i] = i;
    for (uint64_t i = 0; i < o.count; i++) {
      rng = splitmix64(rng);
      uint64_t j = i + rng % (nslots - i);
      uint64_t t = perm[i];
      perm[i] = perm[j], perm[j] = t;
      rng = splitmix64(rng);
      ios[i].len = o.min_size + (rng % steps) * 512;
      rng = splitmix64(rng);
      uint64_t room = (o.max_size - ios[i].len) / 512 + 1;
      ios[i].off = o.offset + perm[i] * o.max_size + (rng % room) * 512;
    }
    free(perm);
  }
}

static int one_op(const char *name) {
  struct blkioq *q = blkio_get_queue(b, 0);
  if (!strcmp(name, "flush")) blkioq_flush(q, NULL, 0);
  else if (!strcmp(name, "discard")) blkioq_discard(q, o.offset, o.len, NULL, 0);
  else blkioq_write_zeroes(q, o.offset, o.len, NULL, o.no_unmap ? BLKIO_REQ_NO_UNMAP : 0);
  struct blkio_completion c;
  struct timespec t = {o.timeout_ms / 1000, (o.timeout_ms % 1000) * 1000000L};
  int r = blkioq_do_io(q, &c, 1, 1, &t);
  if (r < 0) die(2, "blkioq_do_io", r);
  printf("{\"ok\":%s,\"ret\":%d,\"error\":\"%s\"}\n", c.ret == 0 ? "true" : "false", c.ret,
         c.ret ? (c.error_msg ? c.error_msg : strerror(-c.ret)) : "");
  return c.ret == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  static const struct option lo[] = {
      {"path", 1, 0, 'p'}, {"queues", 1, 0, 'q'}, {"read-only", 0, 0, 'R'},
      {"timeout-ms", 1, 0, 't'}, {"seed", 1, 0, 's'}, {"count", 1, 0, 'n'}, {"qd", 1, 0, 'd'},
      {"min-size", 1, 0, 'm'}, {"max-size", 1, 0, 'M'}, {"offset", 1, 0, 'o'},
      {"span", 1, 0, 'S'}, {"sequential", 0, 0, 'Q'}, {"len", 1, 0, 'l'},
      {"no-unmap", 0, 0, 'U'}, {"reconnect-ms", 1, 0, 'r'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    switch (c) {
      case 'p': o.path = optarg; break;
      case 'q': o.queues = atoi(optarg); break;
      case 'R': o.read_only = true; break;
      case 't': o.timeout_ms = atoi(optarg); break;
      case 's': o.seed = strtoull(optarg, 0, 0); break;
      case 'n': o.count = strtoull(optarg, 0, 0); break;
      case 'd': o.qd = atoi(optarg); break;
      case 'm': o.min_size = strtoull(optarg, 0, 0); break;
      case 'M': o.max_size = strtoull(optarg, 0, 0); break;
      case 'o': o.offset = strtoull(optarg, 0, 0); break;
      case 'S': o.span = strtoull(optarg, 0, 0); break;
      case 'Q': o.sequential = true; break;
      case 'l': o.len = strtoull(optarg, 0, 0); break;
      case 'U': o.no_unmap = true; break;
      case 'r': o.reconnect_ms = atoi(optarg); break;
      default: fprintf(stderr, "unknown option\n"); return 2;
    }
  }
  if (!o.path || optind != argc - 1 || o.queues < 1 || o.qd < 1 || o.timeout_ms < 1 || o.reconnect_ms < 0 ||
      (o.reconnect_ms && o.queues != 1)) {
    fprintf(stderr, "usage: ibnbd-blkio --path SOCK [options] info|verify|write|check|flush|discard|write-zeroes\n");
    return 2;
  }
  o.mode = argv[optind];
  int rc = 0;
  if (!strcmp(o.mode, "info")) {
    setup(0);
    int max_transfer = 0, max_segments = 0, align = 0, opt_io = 0;
    bool ro = false;
    blkio_get_int(b, "max-transfer", &max_transfer);
    blkio_get_int(b, "max-segments", &max_segments);
    blkio_get_int(b, "request-alignment", &align);
    blkio_get_int(b, "optimal-io-size", &opt_io);
    blkio_get_bool(b, "read-only", &ro);
    printf("{\"ok\":true,\"capacity\":%" PRIu64 ",\"maxTransfer\":%d,\"maxSegments\":%d,\"requestAlignment\":%d,\"optimalIoSize\":%d,\"readOnly\":%s}\n",
           capacity, max_transfer, max_segments, align, opt_io, ro ? "true" : "false");
  } else if (!strcmp(o.mode, "verify") || !strcmp(o.mode, "write") || !strcmp(o.mode, "check")) {
    slot_bytes = (o.max_size + 4095) / 4096 * 4096;
    setup(slot_bytes * o.qd * o.queues);
    plan_pattern();
    printf("{");
    bool ok = true;
    bool comma = false;
    if (strcmp(o.mode, "check")) ok = pattern_phase(true, "write", false) && ok, comma = true;
    if (strcmp(o.mode, "write")) ok = pattern_phase(false, "read", comma) && ok;
    printf(",\"ok\":%s}\n", ok ? "true" : "false");
    rc = ok ? 0 : 1;
  } else if (!strcmp(o.mode, "flush") || !strcmp(o.mode, "discard") || !strcmp(o.mode, "write-zeroes")) {
    setup(0);
    rc = one_op(o.mode);
  } else {
    fprintf(stderr, "unknown mode %s\n", o.mode);
    return 2;
  }
  fflush(stdout);
  // No blkio_destroy on purpose after a timeout path (exit above); here the queues are idle.
  if (region.addr) {
    blkio_unmap_mem_region(b, &region);
    blkio_free_mem_region(b, &region);
  }
  blkio_destroy(&b);
  return rc;
}
