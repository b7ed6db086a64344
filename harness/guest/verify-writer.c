// verify-writer: a guest-side writer that checks every block it reads against the generation it
// last wrote there. tests/vm/migration.test.ts runs it while the VM is live-migrated: the table of
// expected generations lives in guest RAM and migrates with the VM, so a write lost on the way, or
// a guest page the back-end wrote but did not log as dirty (a read's data, a status byte, the used
// ring), shows up as a mismatch or an error after the switch-over.
//
// Built on the host, static (the guest has busybox only): harness/qemu/static-tool.ts.
//
//   verify-writer fill DEV NBLOCKS SEED
//       writes generation 1 to blocks [0, NBLOCKS) (1 MiB writes), then exits
//   verify-writer run DEV NBLOCKS SEED STOPFILE [QD]
//       QD threads (default 8) pick random blocks: write the next generation, or read and compare
//       with the last one written. A progress line every second; when STOPFILE exists, every
//       block is read once more and compared, and the final line says what was found:
//         VW t=<s> writes=<n> reads=<n> errors=<n> mismatches=<n>
//         VW-FINAL writes=<n> reads=<n> errors=<n> mismatches=<n> blocks=<n> digest=<hex>
//       exit 0 only when errors and mismatches are both 0.
//
// A block (4096 bytes, little-endian): u32 magic "VWB1", u32 0, u64 block index, u64 generation,
// u64 seed, payload (splitmix64 of seed, block and generation) up to byte 4092, then u32 FNV-1a of
// bytes [0, 4092). The digest is FNV-1a 64 of the generations (u64 LE, block order): the host
// computes it again from the server's file to see that the file holds what the guest last wrote.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { BS = 4096, FILL_BLOCKS = 256, FINAL_BLOCKS = 64, MAX_QD = 64, MAX_REPORTS = 20, JOIN_S = 30 };
static const uint32_t MAGIC = 0x31425756; // "VWB1" little-endian

static int fd;
static uint64_t nblocks, seed;
static uint64_t *gen;            // last generation written per block; guarded by busy[b]
static atomic_uchar *busy;       // a block is worked on by one thread at a time
static atomic_int stop;
static atomic_uint_fast64_t writes, reads, errors, mismatches;
static atomic_int reports;

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint32_t fnv1a32(const uint8_t *p, size_t n) {
  uint32_t h = 0x811c9dc5u;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x01000193u;
  return h;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); } // x86-64: little-endian
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/** The block's whole content for generation g. */
static void make_block(uint8_t *p, uint64_t block, uint64_t g) {
  put32(p, MAGIC);
  put32(p + 4, 0);
  put64(p + 8, block);
  put64(p + 16, g);
  put64(p + 24, seed);
  uint64_t s = seed ^ (block * 0x100000001b3ULL) ^ (g << 40) ^ g;
  for (size_t o = 32; o < BS - 4; o += 8) put64(p + o, splitmix64(&s));
  put32(p + BS - 4, fnv1a32(p, BS - 4));
}

/** Says what a wrong block holds: a whole older block (a lost write), a torn one, or another. */
static void report_mismatch(uint64_t block, uint64_t want, const uint8_t *got) {
  if (atomic_fetch_add(&reports, 1) >= MAX_REPORTS) return;
  int sum_ok = fnv1a32(got, BS - 4) == get32(got + BS - 4);
  printf("VW-MISMATCH block=%" PRIu64 " want=%" PRIu64 " magic=%s index=%" PRIu64 " gen=%" PRIu64 " checksum=%s\n", block, want,
         get32(got) == MAGIC ? "ok" : "bad", get64(got + 8), get64(got + 16), sum_ok ? "ok" : "bad");
  fflush(stdout);
}

static void report_error(const char *op, uint64_t block, ssize_t r, int err) {
  if (atomic_fetch_add(&reports, 1) >= MAX_REPORTS) return;
  printf("VW-ERROR op=%s block=%" PRIu64 " ret=%zd errno=%d (%s)\n", op, block, r, err, strerror(err));
  fflush(stdout);
}

static void *aligned(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, BS, n) != 0) {
    perror("posix_memalign");
    exit(2);
  }
  return p;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/** Compares a block read back with generation `want`; counts and reports a difference. */
static void check_block(uint64_t block, uint64_t want, const uint8_t *got, uint8_t *scratch) {
  make_block(scratch, block, want);
  if (memcmp(scratch, got, BS) != 0) {
    atomic_fetch_add(&mismatches, 1);
    report_mismatch(block, want, got);
  }
}

static void *worker(void *arg) {
  uint64_t rng = seed ^ (0xa0761d6478bd642fULL * ((uintptr_t)arg + 1));
  uint8_t *buf = aligned(BS), *want = aligned(BS);
  while (!atomic_load(&stop)) {
    uint64_t r = splitmix64(&rng);
    uint64_t b = (r >> 1) % nblocks;
    if (atomic_exchange_explicit(&busy[b], 1, memory_order_acquire)) continue; // another thread has it
    off_t off = (off_t)(b * BS);
    if (r & 1) {
      uint64_t g = gen[b] + 1;
      make_block(buf, b, g);
      ssize_t n = pwrite(fd, buf, BS, off);
      if (n == BS) {
        gen[b] = g;
        atomic_fetch_add(&writes, 1);
      } else {
        // the block now holds g or g-1: count it, the run fails anyway
        atomic_fetch_add(&errors, 1);
        report_error("write", b, n, errno);
      }
    } else {
      ssize_t n = pread(fd, buf, BS, off);
      if (n == BS) {
        atomic_fetch_add(&reads, 1);
        check_block(b, gen[b], buf, want);
      } else {
        atomic_fetch_add(&errors, 1);
        report_error("read", b, n, errno);
      }
    }
    atomic_store_explicit(&busy[b], 0, memory_order_release);
  }
  free(buf);
  free(want);
  return NULL;
}

static void progress(const char *tag, uint64_t t0) {
  printf("%s t=%" PRIu64 " writes=%" PRIuFAST64 " reads=%" PRIuFAST64 " errors=%" PRIuFAST64 " mismatches=%" PRIuFAST64 "\n", tag,
         (now_ms() - t0) / 1000, atomic_load(&writes), atomic_load(&reads), atomic_load(&errors), atomic_load(&mismatches));
  fflush(stdout);
}

static int cmd_fill(void) {
  uint64_t t0 = now_ms();
  uint8_t *buf = aligned((size_t)FILL_BLOCKS * BS);
  for (uint64_t b = 0; b < nblocks; b += FILL_BLOCKS) {
    uint64_t k = nblocks - b < FILL_BLOCKS ? nblocks - b : FILL_BLOCKS;
    for (uint64_t i = 0; i < k; i++) make_block(buf + i * BS, b + i, 1);
    ssize_t n = pwrite(fd, buf, k * BS, (off_t)(b * BS));
    if (n != (ssize_t)(k * BS)) {
      report_error("fill", b, n, errno);
      return 1;
    }
  }
  if (fdatasync(fd) != 0) {
    report_error("fdatasync", 0, -1, errno);
    return 1;
  }
  printf("VW-FILL blocks=%" PRIu64 " ms=%" PRIu64 "\n", nblocks, now_ms() - t0);
  return 0;
}

static int cmd_run(const char *stopfile, int qd) {
  gen = calloc(nblocks, sizeof *gen);
  busy = calloc(nblocks, sizeof *busy);
  if (!gen || !busy) {
    perror("calloc");
    return 2;
  }
  for (uint64_t b = 0; b < nblocks; b++) gen[b] = 1; // what `fill` wrote
  uint64_t t0 = now_ms();
  pthread_t th[MAX_QD];
  for (int i = 0; i < qd; i++) {
    if (pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i) != 0) {
      perror("pthread_create");
      return 2;
    }
  }
  printf("VW-RUN blocks=%" PRIu64 " qd=%d\n", nblocks, qd);
  fflush(stdout);
  uint64_t next = t0 + 1000;
  while (access(stopfile, F_OK) != 0) {
    usleep(100 * 1000);
    if (now_ms() >= next) {
      progress("VW", t0);
      next += 1000;
    }
  }
  atomic_store(&stop, 1);
  // a request the device never completes (a used-ring update lost at a migration's switch-over)
  // leaves its thread blocked for ever: say so and go on, rather than hang
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += JOIN_S;
  int stuck = 0;
  for (int i = 0; i < qd; i++) stuck += pthread_timedjoin_np(th[i], NULL, &deadline) != 0;
  if (stuck) {
    atomic_fetch_add(&errors, (uint64_t)stuck);
    printf("VW-ERROR op=join threads=%d still in a request after %d s\n", stuck, JOIN_S);
  }
  progress("VW-STOP", t0);

  // the final pass: every block, in 256 KiB reads
  uint8_t *buf = aligned((size_t)FINAL_BLOCKS * BS), *want = aligned(BS);
  for (uint64_t b = 0; b < nblocks; b += FINAL_BLOCKS) {
    uint64_t k = nblocks - b < FINAL_BLOCKS ? nblocks - b : FINAL_BLOCKS;
    ssize_t n = pread(fd, buf, k * BS, (off_t)(b * BS));
    if (n != (ssize_t)(k * BS)) {
      atomic_fetch_add(&errors, 1);
      report_error("final-read", b, n, errno);
      continue;
    }
    for (uint64_t i = 0; i < k; i++) {
      // a stuck thread's block may hold either generation: it is counted as an error already
      if (!atomic_load(&busy[b + i])) check_block(b + i, gen[b + i], buf + i * BS, want);
    }
    atomic_fetch_add(&reads, k);
  }
  if (fdatasync(fd) != 0) {
    atomic_fetch_add(&errors, 1);
    report_error("fdatasync", 0, -1, errno);
  }
  uint64_t digest = 0xcbf29ce484222325ULL;
  for (uint64_t b = 0; b < nblocks; b++) {
    uint8_t le[8];
    put64(le, gen[b]);
    for (int i = 0; i < 8; i++) digest = (digest ^ le[i]) * 0x100000001b3ULL;
  }
  uint64_t e = atomic_load(&errors), m = atomic_load(&mismatches);
  printf("VW-FINAL writes=%" PRIuFAST64 " reads=%" PRIuFAST64 " errors=%" PRIu64 " mismatches=%" PRIu64 " blocks=%" PRIu64 " digest=%016" PRIx64 "\n",
         atomic_load(&writes), atomic_load(&reads), e, m, nblocks, digest);
  fflush(stdout);
  // _exit: a stuck thread must not keep the process from ending
  _exit(e == 0 && m == 0 ? 0 : 1);
}

static uint64_t number(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || *end || end == s) {
    fprintf(stderr, "verify-writer: bad %s: %s\n", what, s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  const char *usage = "usage: verify-writer fill DEV NBLOCKS SEED | run DEV NBLOCKS SEED STOPFILE [QD]\n";
  if (argc < 5) {
    fputs(usage, stderr);
    return 2;
  }
  nblocks = number(argv[3], "NBLOCKS");
  seed = number(argv[4], "SEED");
  if (nblocks == 0) {
    fputs("verify-writer: NBLOCKS must be > 0\n", stderr);
    return 2;
  }
  fd = open(argv[2], O_RDWR | O_DIRECT);
  if (fd < 0) {
    fprintf(stderr, "verify-writer: open %s: %s\n", argv[2], strerror(errno));
    return 2;
  }
  if (strcmp(argv[1], "fill") == 0 && argc == 5) return cmd_fill();
  if (strcmp(argv[1], "run") == 0 && (argc == 6 || argc == 7)) {
    uint64_t qd = argc == 7 ? number(argv[6], "QD") : 8;
    if (qd < 1 || qd > MAX_QD) {
      fprintf(stderr, "verify-writer: QD must be in 1..%d\n", MAX_QD);
      return 2;
    }
    return cmd_run(argv[5], (int)qd);
  }
  fputs(usage, stderr);
  return 2;
}
