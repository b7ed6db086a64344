#define _GNU_SOURCE
#include "vhost_raw.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int timeout_ms = 3000;
int sock = -1;

void fail(const char *what) {
  printf("{\"ok\":false,\"error\":\"%s: %s\"}\n", what, strerror(errno));
  exit(2);
}

// Sends header + payload (+ fds) in one sendmsg.
int send_msg(uint32_t req, uint32_t flags, uint32_t size, const void *payload, size_t payload_len,
                    const int *fds, int nfds) {
  uint8_t buf[12 + 1024];
  memcpy(buf, &req, 4);
  memcpy(buf + 4, &flags, 4);
  memcpy(buf + 8, &size, 4);
  if (payload_len) memcpy(buf + 12, payload, payload_len);
  struct iovec iov = {buf, 12 + payload_len};
  char control[CMSG_SPACE(16 * sizeof(int))];
  struct msghdr mh = {0};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  if (nfds) {
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
  }
  return sendmsg(sock, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

int send_simple(uint32_t req, const void *payload, uint32_t len) {
  return send_msg(req, 1, len, payload, len, NULL, 0);
}

bool read_full(void *dst, size_t len) {
  size_t got = 0;
  while (got < len) {
    struct pollfd p = {sock, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return false;
    ssize_t n = read(sock, (uint8_t *)dst + got, len - got);
    if (n <= 0) return false;
    got += n;
  }
  return true;
}

// Reads one reply; returns payload size or -1.
int read_reply(uint32_t want_req, void *payload, size_t cap) {
  uint32_t hdr[3];
  if (!read_full(hdr, sizeof hdr)) return -1;
  if (hdr[0] != want_req || hdr[2] > cap) return -1;
  if (!read_full(payload, hdr[2])) return -1;
  return (int)hdr[2];
}

uint64_t get_u64(uint32_t req) {
  uint64_t v = 0;
  if (send_simple(req, NULL, 0) < 0 || read_reply(req, &v, sizeof v) != 8) fail("reply");
  return v;
}

// True when the back-end closes the connection (EOF/ECONNRESET) within the timeout.
bool closed_by_peer(void) {
  uint8_t junk[4096];
  for (;;) {
    struct pollfd p = {sock, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r <= 0) return false;
    ssize_t n = read(sock, junk, sizeof junk);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
    if (n < 0) return false;
  }
}

int memfd(size_t size) {
  int fd = memfd_create("vhost-raw", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, size) < 0) fail("memfd");
  return fd;
}


void handshake(void) {
  get_u64(GET_FEATURES);
  uint64_t pf = get_u64(GET_PROTOCOL_FEATURES);
  send_simple(SET_PROTOCOL_FEATURES, &pf, 8);
  send_simple(SET_OWNER, NULL, 0);
}

void good_memtable(uint64_t size, uint64_t uva) {
  int fd = memfd(size);
  uint8_t p[8 + 32] = {0};
  uint32_t n = 1;
  memcpy(p, &n, 4);
  struct region r = {0, size, uva, 0};
  memcpy(p + 8, &r, 32);
  send_msg(SET_MEM_TABLE, 1, sizeof p, p, sizeof p, &fd, 1);
  close(fd);
}



uint8_t *mem;  // guest memory: gpa 0 .. MEM_SIZE, also our own mapping
int mem_fd = -1;
bool reply_ack;
int kick_fd, call_fd;
uint16_t avail_idx, used_seen;
uint64_t extra_protocol_features, extra_features, acked_features;

void send_memtable(int fd, uint32_t flags) {
  uint8_t p[40] = {0};
  uint32_t n = 1;
  memcpy(p, &n, 4);
  struct region r = {0, MEM_SIZE, (uint64_t)(uintptr_t)mem, 0};
  memcpy(p + 8, &r, 32);
  send_msg(SET_MEM_TABLE, flags, sizeof p, p, sizeof p, &fd, 1);
}

void vq_setup(void) {
  int fd = memfd(MEM_SIZE);
  mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mem == MAP_FAILED) fail("mmap");
  uint64_t f = get_u64(GET_FEATURES);
  // VERSION_1 and PROTOCOL_FEATURES; EVENT_IDX too in drain mode, to see when a request was
  // popped (the back-end publishes avail_event as it pops).
  uint64_t ack = f & ((1ull << 32) | (1ull << 30) | (reply_ack ? 1ull << 29 : 0) | extra_features);
  send_simple(SET_FEATURES, &ack, 8);
  acked_features = ack;
  uint64_t pf = get_u64(GET_PROTOCOL_FEATURES) &
                ((1ull << 0) | (1ull << 9) | (reply_ack ? 1ull << 3 : 0) | extra_protocol_features);
  send_simple(SET_PROTOCOL_FEATURES, &pf, 8);
  send_simple(SET_OWNER, NULL, 0);
  send_memtable(fd, 1);
  mem_fd = fd;
  uint32_t st[2] = {0, QSIZE};
  send_simple(SET_VRING_NUM, st, 8);
  st[1] = 0;
  send_simple(SET_VRING_BASE, st, 8);
  uint64_t base = (uint64_t)(uintptr_t)mem;
  uint64_t a[5] = {0, base + DESC_OFF, base + USED_OFF, base + AVAIL_OFF, 0};
  send_simple(SET_VRING_ADDR, a, 40);
  kick_fd = eventfd(0, EFD_CLOEXEC);
  call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  uint64_t idx = 0;
  send_msg(SET_VRING_CALL, 1, 8, &idx, 8, &call_fd, 1);
  send_msg(SET_VRING_KICK, 1, 8, &idx, 8, &kick_fd, 1);
  uint32_t en[2] = {0, 1};
  send_simple(SET_VRING_ENABLE, en, 8);
}

// Submits one chain and waits for it on the used ring. Returns used len, or -1 on timeout.
int vq_run(const struct seg *segs, int n) {
  struct vdesc *d = (struct vdesc *)(mem + DESC_OFF);
  for (int i = 0; i < n; i++) {
    d[i].addr = segs[i].off;
    d[i].len = segs[i].len;
    d[i].flags = (i + 1 < n ? 1 : 0) | (segs[i].write ? 2 : 0);
    d[i].next = i + 1 < n ? i + 1 : 0;
  }
  uint16_t *avail = (uint16_t *)(mem + AVAIL_OFF);
  avail[2 + (avail_idx % QSIZE)] = 0;
  __atomic_store_n(&avail[1], ++avail_idx, __ATOMIC_RELEASE);
  eventfd_write(kick_fd, 1);
  uint16_t *used_idx = (uint16_t *)(mem + USED_OFF + 2);
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    eventfd_t v;
    eventfd_read(call_fd, &v);  // non-blocking: clear notifications, then check the ring
    if (__atomic_load_n(used_idx, __ATOMIC_ACQUIRE) != used_seen) {
      uint32_t *elem = (uint32_t *)(mem + USED_OFF + 4 + 8 * (used_seen % QSIZE));
      used_seen++;
      return (int)elem[1];
    }
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >= timeout_ms) return -1;
    struct pollfd p = {call_fd, POLLIN, 0};
    poll(&p, 1, 10);
  }
}

void hdr_at(uint32_t off, uint32_t type, uint64_t sector) {
  memcpy(mem + off, &type, 4);
  memset(mem + off + 4, 0, 4);
  memcpy(mem + off + 8, &sector, 8);
}
