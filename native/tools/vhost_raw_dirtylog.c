// ibnbd-vhost-raw's migration scenarios: what QEMU does to a back-end while it migrates a VM
// (SET_LOG_BASE with a shared-memory log, SET_VRING_ADDR with the log flag, SET_FEATURES with
// VHOST_F_LOG_ALL), done at QD32 while reads and writes are in flight, so the log can be held
// against the pages the back-end wrote. Each request puts its read data in a random page of one
// area and its status byte in a random page of another, so a missed mark shows as a clear bit.
#define _GNU_SOURCE
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tools_common.h"
#include "vhost_raw.h"

#define LOG_ALL (1ull << 26)         // VHOST_F_LOG_ALL
#define PF_LOG_SHMFD (1ull << 1)     // VHOST_USER_PROTOCOL_F_LOG_SHMFD
#define NEED_REPLY 8                 // header flag (with REPLY_ACK)
#define PAGE 4096u
#define PAGES (MEM_SIZE / PAGE)
#define LOG_BYTES (PAGES / 8)
#define DEPTH 32
#define HDRS 0x4000u                 // DEPTH request headers of 16 bytes
#define DATA_BASE (1u << 20)         // read/write data: one page each, 1 MiB .. 5 MiB
#define DATA_PAGES 1024u
#define STATUS_BASE (5u << 20)       // status bytes: 5 MiB .. 8 MiB
#define STATUS_PAGES 768u

struct slot {
  bool busy, read;
  uint32_t data, status;
};
static struct slot slots[DEPTH];
static uint8_t must_log[PAGES];  // pages the back-end wrote while logging was on
static uint64_t rng = 0x5eed;
static uint64_t span_sectors;    // requests stay in the first span_sectors of the device

static uint64_t capacity_sectors(void) {
  uint8_t p[12 + 8] = {0};
  uint32_t c[3] = {0, 8, 0};
  memcpy(p, c, 12);
  uint8_t r[12 + 8];
  if (send_simple(GET_CONFIG, p, sizeof p) < 0 || read_reply(GET_CONFIG, r, sizeof r) != 20) fail("GET_CONFIG");
  uint64_t cap;
  memcpy(&cap, r + 12, 8);
  return cap;
}

static void submit_as(int s, bool read) {
  struct slot *sl = &slots[s];
  sl->busy = true;
  sl->read = read;
  sl->data = DATA_BASE + (uint32_t)(splitmix64_next(&rng) % DATA_PAGES) * PAGE;
  sl->status = STATUS_BASE + (uint32_t)(splitmix64_next(&rng) % (STATUS_PAGES * PAGE));
  uint64_t sector = (splitmix64_next(&rng) % (span_sectors / 8)) * 8;
  hdr_at(HDRS + 16 * s, sl->read ? 0 : 1, sector);
  mem[sl->status] = 0xff;
  struct vdesc *d = (struct vdesc *)(mem + DESC_OFF) + 3 * s;
  d[0] = (struct vdesc){HDRS + 16 * s, 16, 1, (uint16_t)(3 * s + 1)};
  d[1] = (struct vdesc){sl->data, PAGE, (uint16_t)(1 | (sl->read ? 2 : 0)), (uint16_t)(3 * s + 2)};
  d[2] = (struct vdesc){sl->status, 1, 2, 0};
  uint16_t *avail = (uint16_t *)(mem + AVAIL_OFF);
  avail[2 + (avail_idx % QSIZE)] = (uint16_t)(3 * s);
  __atomic_store_n(&avail[1], ++avail_idx, __ATOMIC_RELEASE);
}

static void submit(int s) { submit_as(s, splitmix64_next(&rng) & 1); }

static uint16_t used_idx_now(void) {
  return __atomic_load_n((uint16_t *)(mem + USED_OFF + 2), __ATOMIC_ACQUIRE);
}

// Reaps every answered request, noting the pages it wrote when it was answered at used
// position >= log_from while `logging`; returns how many were reaped, -1 on a bad answer.
static int reap(bool logging, uint16_t log_from, uint64_t *errors) {
  int n = 0;
  uint16_t end = used_idx_now();
  while (used_seen != end) {
    uint32_t *elem = (uint32_t *)(mem + USED_OFF + 4 + 8 * (used_seen % QSIZE));
    uint32_t s = elem[0] / 3;
    if (elem[0] % 3 || s >= DEPTH || !slots[s].busy) return -1;
    if (mem[slots[s].status] != 0) (*errors)++;
    if (logging && (int16_t)(used_seen - log_from) >= 0) {
      if (slots[s].read) must_log[slots[s].data / PAGE] = 1;
      must_log[slots[s].status / PAGE] = 1;
    }
    slots[s].busy = false;
    used_seen++;
    n++;
  }
  return n;
}

// Keeps DEPTH requests in flight until `total` more were sent and answered.
static bool run(int total, bool logging, uint16_t log_from, uint64_t *errors) {
  int done = 0, sent = 0;
  uint64_t t0 = now_ns();
  while (done < total) {
    int n = reap(logging, log_from, errors);
    if (n < 0) return false;
    done += n;
    bool kicked = false;
    for (int s = 0; s < DEPTH && sent < total; s++)
      if (!slots[s].busy) submit(s), sent++, kicked = true;
    if (kicked) eventfd_write(kick_fd, 1);
    if (now_ns() - t0 > (uint64_t)timeout_ms * 1000000ull * 10) return false;
    struct pollfd p = {call_fd, POLLIN, 0};
    if (poll(&p, 1, 10) > 0) {
      eventfd_t v;
      eventfd_read(call_fd, &v);
    }
  }
  return true;
}

static bool wait_idle(uint64_t *errors) {
  for (int i = 0; i < timeout_ms; i++) {
    if (reap(false, 0, errors) < 0) return false;
    bool busy = false;
    for (int s = 0; s < DEPTH; s++) busy |= slots[s].busy;
    if (!busy) return true;
    usleep(1000);
  }
  return false;
}

static bool ack(uint32_t req) {
  uint64_t v = 1;
  return read_reply(req, &v, sizeof v) == 8 && v == 0;
}

static bool set_features(uint64_t f) {
  return send_msg(SET_FEATURES, 1 | NEED_REPLY, 8, &f, 8, NULL, 0) == 0 && ack(SET_FEATURES);
}

// SET_VRING_ADDR again, as QEMU does when it turns logging on: the same rings, flag LOG_USED.
static bool log_used_ring(bool on) {
  uint64_t base = (uint64_t)(uintptr_t)mem;
  uint64_t a[5] = {on ? 1ull << 32 : 0, base + DESC_OFF, base + USED_OFF, base + AVAIL_OFF, USED_OFF};
  return send_msg(SET_VRING_ADDR, 1 | NEED_REPLY, 40, a, 40, NULL, 0) == 0 && ack(SET_VRING_ADDR);
}

static uint8_t *log_base(uint64_t bytes) {
  int fd = memfd(bytes);
  uint8_t *log = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (log == MAP_FAILED) fail("mmap log");
  uint64_t l[2] = {bytes, 0};
  send_msg(SET_LOG_BASE, 1, 16, l, 16, &fd, 1);
  close(fd);
  uint64_t v;
  if (read_reply(SET_LOG_BASE, &v, sizeof v) != 8) fail("SET_LOG_BASE reply");
  return log;
}

static unsigned bits_set(const uint8_t *log) {
  unsigned n = 0;
  for (unsigned i = 0; i < LOG_BYTES; i++) n += __builtin_popcount(log[i]);
  return n;
}

//   dirty-log   → {"offered":{"logAll":bool,"logShmfd":bool},"requests":N,"errors":N,
//                  "pagesExpected":N,"missing":N,"usedRingLogged":bool,"logKicks":N,
//                  "pagesMarked":N,"markedAfterOff":N}
void dirty_log(void) {
  reply_ack = true;
  uint64_t f = get_u64(GET_FEATURES), pf = get_u64(GET_PROTOCOL_FEATURES);
  extra_protocol_features = PF_LOG_SHMFD;
  vq_setup();
  span_sectors = capacity_sectors();
  if (span_sectors > 16384) span_sectors = 16384;
  if (span_sectors < 8) fail("device too small");
  uint64_t errors = 0;
  // logging off, then on while DEPTH requests are in flight
  bool ok = run(4 * DEPTH, false, 0, &errors) && wait_idle(&errors);
  for (int s = 0; s < DEPTH; s++) submit(s);
  eventfd_write(kick_fd, 1);
  uint8_t *log = log_base(LOG_BYTES);
  int log_call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  send_msg(SET_LOG_FD, 1, 0, NULL, 0, &log_call, 1);
  ok = ok && log_used_ring(true) && set_features(acked_features | LOG_ALL);
  uint16_t log_from = used_idx_now();  // answered from here on: after LOG_ALL was acked
  ok = ok && run(16 * DEPTH, true, log_from, &errors) && wait_idle(&errors);
  unsigned expected = 0, missing = 0;
  for (unsigned p = 0; p < PAGES; p++) {
    if (!must_log[p]) continue;
    expected++;
    if (!(log[p / 8] & (1u << (p % 8)))) missing++;
  }
  bool used_logged = log[(USED_OFF / PAGE) / 8] & (1u << ((USED_OFF / PAGE) % 8));
  eventfd_t kicks = 0;
  eventfd_read(log_call, &kicks);
  unsigned marked = bits_set(log);
  // logging off: nothing more may be marked
  ok = ok && set_features(acked_features) && log_used_ring(false);
  memset(log, 0, LOG_BYTES);
  ok = ok && run(4 * DEPTH, false, 0, &errors) && wait_idle(&errors);
  printf("{\"ok\":%s,\"offered\":{\"logAll\":%s,\"logShmfd\":%s},\"errors\":%" PRIu64
         ",\"pagesExpected\":%u,\"missing\":%u,\"usedRingLogged\":%s,\"logKicks\":%" PRIu64
         ",\"pagesMarked\":%u,\"markedAfterOff\":%u}\n",
         ok ? "true" : "false", f & LOG_ALL ? "true" : "false", pf & PF_LOG_SHMFD ? "true" : "false", errors,
         expected, missing, used_logged ? "true" : "false", (uint64_t)kicks, marked, bits_set(log));
}

//   dirty-log-small   a log covering only the first 32 KiB of guest memory, then a read into
//                     a page beyond it → {"closed":bool}
void dirty_log_small(void) {
  reply_ack = true;
  extra_protocol_features = PF_LOG_SHMFD;
  vq_setup();
  span_sectors = 8;
  log_base(1);
  bool ok = log_used_ring(true) && set_features(acked_features | LOG_ALL);
  submit_as(0, true);
  eventfd_write(kick_fd, 1);
  printf("{\"acked\":%s,\"closed\":%s}\n", ok ? "true" : "false", closed_by_peer() ? "true" : "false");
}
