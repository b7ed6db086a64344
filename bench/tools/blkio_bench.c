// ibnbd-blkio-bench: a load generator for any vhost-user-blk socket, on libblkio's
// virtio-blk-vhost-user driver (the same client the tests use, so ours and the peers are measured
// by one program). One thread per virtqueue, each keeping --qd requests in flight.
// --driver io_uring drives a block device or file instead (libblkio's io_uring driver, O_DIRECT,
// no polling), so a kernel block device (e.g. the kernel rnbd client's /dev/rnbdN) is measured by
// the very same loop, offsets and histogram as a vhost-user socket (bench --interop).
//
//   ibnbd-blkio-bench --path SOCK|DEV [--driver virtio-blk-vhost-user|io_uring]
//       [--rw randread|randwrite|read|write|randrw] [--bs BYTES]
//       [--qd N] [--queues N] [--runtime-ms T] [--ramp-ms T] [--seed S] [--rwmix-read PCT]
//       [--offset BYTES] [--span BYTES] [--timeout-ms T] [--poll]
//
// --poll uses libblkio's poll queues instead (num-queues 0, num-poll-queues --queues): each
// worker busy-polls its used ring instead of sleeping on the notify eventfd, as a Linux guest
// does on virtio_blk's poll_queues with io_uring IOPOLL. It takes a whole CPU per queue, so the
// bench does not use it: on two cores a third poller made the round trip longer
// (docs/performance.md, "Adaptive polling"); it is here for hosts with cores to spare.
//
// Prints one JSON object on stdout: IOPS, MB/s (10^6 bytes), latency mean/p50/p99/p99.9/max in
// microseconds, the IO count, errors and the client's own CPU seconds.
// The first failed request ends the run (the requests in flight are drained, no new one is sent).
// Exit 0 ok, 1 IO errors, 2 set-up failure or a stall.
//
// It never waits without a timeout: every blkioq_do_io has one (--timeout-ms, a stall is an
// error), and a watchdog alarm ends the process if connect/start/teardown hangs.
#define _GNU_SOURCE
#include <blkio.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "latency_histogram.h"
#include "tools_common.h"

enum rw_kind { RW_RANDREAD, RW_RANDWRITE, RW_READ, RW_WRITE, RW_RANDRW };
static const char *const rw_names[] = {"randread", "randwrite", "read", "write", "randrw"};

struct options {
  const char *path;
  const char *driver;
  enum rw_kind rw;
  uint64_t bs, offset, span, seed;
  int qd, queues, runtime_ms, ramp_ms, timeout_ms, rwmix_read;
  bool poll;
};

static struct options opt = {
    .driver = "virtio-blk-vhost-user", .rw = RW_RANDREAD, .bs = 4096, .seed = 1, .qd = 1, .queues = 1,
    .runtime_ms = 3000, .ramp_ms = 0, .timeout_ms = 10000, .rwmix_read = 50};

struct worker {
  pthread_t thread;
  int index;
  struct blkioq *q;
  char *buffers;              // qd slots of bs bytes inside the mapped region
  uint64_t *started_ns;       // per slot: submission time
  uint64_t rng, cursor, span_start, span_len;
  struct lat_hist hist;       // measured phase only
  uint64_t reads, writes, errors;
  int first_error;
  char first_error_msg[160];
  int failure;                // 0, or -errno of a stall / queue failure
};

static struct blkio *b;
static uint64_t t_measure_start, t_measure_end;  // CLOCK_MONOTONIC ns

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

static _Noreturn void fail(const char *what, int err) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s%s%s", what, strerror(err < 0 ? -err : err),
           blkio_get_error_msg()[0] ? ": " : "", blkio_get_error_msg());
  fputs("{\"ok\":false,\"error\":", stdout);
  json_string(stdout, msg);
  fputs("}\n", stdout);
  fflush(stdout);
  exit(2);
}

static void on_watchdog(int sig) {
  (void)sig;
  static const char msg[] = "{\"ok\":false,\"error\":\"watchdog: the run did not finish in time\"}\n";
  ssize_t r = write(STDOUT_FILENO, msg, sizeof msg - 1);
  (void)r;
  _exit(2);
}

static bool slot_is_read(struct worker *w) {
  switch (opt.rw) {
    case RW_RANDREAD: case RW_READ: return true;
    case RW_RANDWRITE: case RW_WRITE: return false;
    case RW_RANDRW: return (int)(splitmix64_next(&w->rng) % 100) < opt.rwmix_read;
  }
  return true;
}

static uint64_t next_offset(struct worker *w) {
  uint64_t blocks = w->span_len / opt.bs;
  if (opt.rw == RW_READ || opt.rw == RW_WRITE) {
    uint64_t off = w->cursor;
    w->cursor = (w->cursor + 1) % blocks;
    return w->span_start + off * opt.bs;
  }
  return w->span_start + (splitmix64_next(&w->rng) % blocks) * opt.bs;
}

static void submit(struct worker *w, int slot) {
  char *buf = w->buffers + (uint64_t)slot * opt.bs;
  uint64_t off = next_offset(w);
  w->started_ns[slot] = now_ns();
  // user_data carries the slot (+1 so it is never NULL)
  void *tag = (void *)(uintptr_t)(slot + 1);
  if (slot_is_read(w)) {
    blkioq_read(w->q, off, buf, opt.bs, tag, 0);
    w->reads++;
  } else {
    blkioq_write(w->q, off, buf, opt.bs, tag, 0);
    w->writes++;
  }
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  struct blkio_completion *done = calloc((size_t)opt.qd, sizeof *done);
  if (!done) { w->failure = -ENOMEM; return NULL; }
  for (int s = 0; s < opt.qd; s++) submit(w, s);
  int inflight = opt.qd;
  bool stopping = false;
  while (inflight > 0) {
    struct timespec timeout = {.tv_sec = opt.timeout_ms / 1000, .tv_nsec = (opt.timeout_ms % 1000) * 1000000L};
    int n = blkioq_do_io(w->q, done, 1, opt.qd, &timeout);
    if (n < 0) { w->failure = n; break; }
    if (n == 0) { w->failure = -ETIMEDOUT; break; }
    uint64_t t = now_ns();
    if (t >= t_measure_end) stopping = true;
    for (int i = 0; i < n; i++) {
      int slot = (int)(uintptr_t)done[i].user_data - 1;
      uint64_t started = w->started_ns[slot];
      if (started >= t_measure_start && t <= t_measure_end) lat_record(&w->hist, t - started);
      if (done[i].ret < 0) {
        // a failed request ends the run: what is in flight is drained, nothing new is sent (the
        // device may be gone, e.g. unmapped by force: new requests would only wait out the timeout)
        stopping = true;
        if (w->errors++ == 0) {
          w->first_error = done[i].ret;
          snprintf(w->first_error_msg, sizeof w->first_error_msg, "%s", done[i].error_msg ? done[i].error_msg : "");
        }
      }
      inflight--;
      if (!stopping) { submit(w, slot); inflight++; }
    }
  }
  free(done);
  return NULL;
}

static uint64_t parse_size(const char *s, const char *name) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s) { fprintf(stderr, "%s: not a number: %s\n", name, s); exit(2); }
  switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
  }
  if (*end) { fprintf(stderr, "%s: trailing characters: %s\n", name, s); exit(2); }
  return v;
}

static int parse_int(const char *s, const char *name, int min, int max) {
  uint64_t v = parse_size(s, name);
  if (v < (uint64_t)min || v > (uint64_t)max) { fprintf(stderr, "%s must be in [%d, %d]\n", name, min, max); exit(2); }
  return (int)v;
}

static void parse_options(int argc, char **argv) {
  static const struct option longopts[] = {
      {"path", required_argument, 0, 'p'},       {"rw", required_argument, 0, 'w'},
      {"bs", required_argument, 0, 'b'},         {"qd", required_argument, 0, 'q'},
      {"queues", required_argument, 0, 'Q'},     {"runtime-ms", required_argument, 0, 't'},
      {"ramp-ms", required_argument, 0, 'r'},    {"seed", required_argument, 0, 's'},
      {"rwmix-read", required_argument, 0, 'm'}, {"offset", required_argument, 0, 'o'},
      {"span", required_argument, 0, 'S'},       {"timeout-ms", required_argument, 0, 'T'},
      {"driver", required_argument, 0, 'd'},     {"help", no_argument, 0, 'h'},
      {"poll", no_argument, 0, 'P'},
      {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
      case 'p': opt.path = optarg; break;
      case 'd':
        if (strcmp(optarg, "virtio-blk-vhost-user") && strcmp(optarg, "io_uring")) {
          fprintf(stderr, "--driver: virtio-blk-vhost-user or io_uring\n");
          exit(2);
        }
        opt.driver = optarg;
        break;
      case 'w': {
        bool found = false;
        for (int i = 0; i < 5; i++)
          if (!strcmp(optarg, rw_names[i])) { opt.rw = (enum rw_kind)i; found = true; }
        if (!found) { fprintf(stderr, "--rw: one of randread randwrite read write randrw\n"); exit(2); }
        break;
      }
      case 'b': opt.bs = parse_size(optarg, "--bs"); break;
      case 'q': opt.qd = parse_int(optarg, "--qd", 1, 1024); break;
      case 'Q': opt.queues = parse_int(optarg, "--queues", 1, 64); break;
      case 't': opt.runtime_ms = parse_int(optarg, "--runtime-ms", 1, 3600000); break;
      case 'r': opt.ramp_ms = parse_int(optarg, "--ramp-ms", 0, 600000); break;
      case 's': opt.seed = parse_size(optarg, "--seed"); break;
      case 'm': opt.rwmix_read = parse_int(optarg, "--rwmix-read", 0, 100); break;
      case 'o': opt.offset = parse_size(optarg, "--offset"); break;
      case 'S': opt.span = parse_size(optarg, "--span"); break;
      case 'T': opt.timeout_ms = parse_int(optarg, "--timeout-ms", 1, 600000); break;
      case 'P': opt.poll = true; break;
      default:
        fprintf(stderr, "usage: ibnbd-blkio-bench --path SOCK|DEV [--driver virtio-blk-vhost-user|io_uring] [--rw randread|randwrite|read|write|randrw] "
                        "[--bs B] [--qd N] [--queues N] [--runtime-ms T] [--ramp-ms T] [--seed S] "
                        "[--rwmix-read PCT] [--offset B] [--span B] [--timeout-ms T] [--poll]\n");
        exit(c == 'h' ? 0 : 2);
    }
  }
  if (!opt.path) { fprintf(stderr, "--path is required\n"); exit(2); }
  if (opt.bs == 0 || opt.bs % 512) { fprintf(stderr, "--bs must be a non-zero multiple of 512\n"); exit(2); }
}

int main(int argc, char **argv) {
  parse_options(argc, argv);
  signal(SIGALRM, on_watchdog);
  // connect + start + ramp + run + drain, each bounded; the alarm is the last resort
  alarm((unsigned)((opt.ramp_ms + opt.runtime_ms + 4 * opt.timeout_ms) / 1000 + 5));

  int r = blkio_create(opt.driver, &b);
  if (r < 0) fail("blkio_create", r);
  if ((r = blkio_set_str(b, "path", opt.path)) < 0) fail("path", r);
  // O_DIRECT: the page cache would answer repeated reads without reaching the device
  if (!strcmp(opt.driver, "io_uring") && (r = blkio_set_bool(b, "direct", true)) < 0) fail("direct", r);
  // a read-only workload attaches read-only, so a device mapped read-only can be measured too
  // (libblkio refuses to start a writable attachment to a read-only device)
  if ((opt.rw == RW_RANDREAD || opt.rw == RW_READ) && (r = blkio_set_bool(b, "read-only", true)) < 0) fail("read-only", r);
  if ((r = blkio_connect(b)) < 0) fail("blkio_connect", r);
  if (opt.poll) {
    bool can_poll = false;
    if ((r = blkio_get_bool(b, "supports-poll-queues", &can_poll)) < 0) fail("supports-poll-queues", r);
    if (!can_poll) fail("--poll: this driver has no poll queues here", -ENOTSUP);
    if ((r = blkio_set_int(b, "num-queues", 0)) < 0) fail("num-queues", r);
    if ((r = blkio_set_int(b, "num-poll-queues", opt.queues)) < 0) fail("num-poll-queues", r);
  } else if ((r = blkio_set_int(b, "num-queues", opt.queues)) < 0) {
    fail("num-queues", r);
  }
  if ((r = blkio_start(b)) < 0) fail("blkio_start", r);

  uint64_t capacity;
  if ((r = blkio_get_uint64(b, "capacity", &capacity)) < 0) fail("capacity", r);
  if (opt.offset >= capacity) fail("--offset beyond capacity", -EINVAL);
  uint64_t span = opt.span ? opt.span : capacity - opt.offset;
  if (opt.offset + span > capacity) fail("--offset + --span beyond capacity", -EINVAL);
  uint64_t per_queue_span = (span / (uint64_t)opt.queues) / opt.bs * opt.bs;
  if (per_queue_span < opt.bs) fail("span too small for bs x queues", -EINVAL);

  // one fd-backed region for every slot of every queue (the driver needs mapped, fd-backed memory)
  uint64_t align = 1;
  blkio_get_uint64(b, "mem-region-alignment", &align);
  uint64_t bytes = (uint64_t)opt.queues * (uint64_t)opt.qd * opt.bs;
  bytes = (bytes + align - 1) / align * align;
  struct blkio_mem_region region;
  if ((r = blkio_alloc_mem_region(b, &region, bytes)) < 0) fail("blkio_alloc_mem_region", r);
  if ((r = blkio_map_mem_region(b, &region)) < 0) fail("blkio_map_mem_region", r);
  // written data is not all zeroes, so no back-end can take a zero-detection shortcut
  uint64_t fill = opt.seed ^ 0x5bd1e995u;
  for (uint64_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t v = splitmix64_next(&fill);
    memcpy((char *)region.addr + i, &v, 8);
  }

  struct worker *workers = calloc((size_t)opt.queues, sizeof *workers);
  if (!workers) fail("calloc", -ENOMEM);
  for (int i = 0; i < opt.queues; i++) {
    struct worker *w = &workers[i];
    w->index = i;
    w->q = opt.poll ? blkio_get_poll_queue(b, i) : blkio_get_queue(b, i);
    if (!w->q) fail("blkio_get_queue", -EINVAL);
    w->buffers = (char *)region.addr + (uint64_t)i * (uint64_t)opt.qd * opt.bs;
    w->started_ns = calloc((size_t)opt.qd, sizeof(uint64_t));
    if (!w->started_ns) fail("calloc", -ENOMEM);
    w->rng = opt.seed * 0x100000001b3ull + (uint64_t)i;
    w->span_start = opt.offset + (uint64_t)i * per_queue_span;
    w->span_len = per_queue_span;
  }

  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  uint64_t t0 = now_ns();
  t_measure_start = t0 + (uint64_t)opt.ramp_ms * 1000000ull;
  t_measure_end = t_measure_start + (uint64_t)opt.runtime_ms * 1000000ull;
  for (int i = 0; i < opt.queues; i++)
    if ((r = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i])) != 0) fail("pthread_create", -r);
  for (int i = 0; i < opt.queues; i++) pthread_join(workers[i].thread, NULL);
  getrusage(RUSAGE_SELF, &ru1);

  struct lat_hist *total = calloc(1, sizeof *total);
  uint64_t reads = 0, writes = 0, errors = 0;
  int failure = 0, first_error = 0;
  const char *first_error_msg = "";
  for (int i = 0; i < opt.queues; i++) {
    lat_merge(total, &workers[i].hist);
    reads += workers[i].reads;
    writes += workers[i].writes;
    if (workers[i].errors && !errors) { first_error = workers[i].first_error; first_error_msg = workers[i].first_error_msg; }
    errors += workers[i].errors;
    if (workers[i].failure && !failure) failure = workers[i].failure;
  }
  if (failure) fail(failure == -ETIMEDOUT ? "no completion within --timeout-ms (stalled back-end)" : "blkioq_do_io", failure);

  double seconds = (double)(t_measure_end - t_measure_start) / 1e9;
  double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
               (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
  double iops = (double)total->count / seconds;
  printf("{\"ok\":%s,\"tool\":\"ibnbd-blkio-bench\",\"rw\":\"%s\",\"bs\":%" PRIu64 ",\"qd\":%d,\"queues\":%d,"
         "\"seed\":%" PRIu64 ",\"capacity\":%" PRIu64 ",\"runtime_s\":%.3f,\"ios\":%" PRIu64 ","
         "\"submitted_reads\":%" PRIu64 ",\"submitted_writes\":%" PRIu64 ",\"iops\":%.1f,\"mbps\":%.2f,"
         "\"lat_us\":{\"mean\":%.2f,\"p50\":%.2f,\"p99\":%.2f,\"p999\":%.2f,\"max\":%.2f},"
         "\"errors\":%" PRIu64 ",\"client_cpu_s\":%.3f,\"poll\":%s",
         errors ? "false" : "true", rw_names[opt.rw], opt.bs, opt.qd, opt.queues, opt.seed, capacity, seconds,
         total->count, reads, writes, iops, iops * (double)opt.bs / 1e6, lat_mean(total) / 1e3,
         lat_percentile(total, 0.50) / 1e3, lat_percentile(total, 0.99) / 1e3, lat_percentile(total, 0.999) / 1e3,
         (double)total->max_ns / 1e3, errors, cpu, opt.poll ? "true" : "false");
  if (errors) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s%s%s", strerror(-first_error), first_error_msg[0] ? ": " : "", first_error_msg);
    fputs(",\"error\":", stdout);
    json_string(stdout, msg);
  }
  fputs("}\n", stdout);
  fflush(stdout);
  blkio_unmap_mem_region(b, &region);
  blkio_free_mem_region(b, &region);
  blkio_destroy(&b);
  return errors ? 1 : 0;
}
