// ibnbd-vhost-raw: a hand-written vhost-user front-end for tests. It speaks the wire format
// byte by byte (PROTOCOL.md §3.1), including fds in SCM_RIGHTS, so tests can ask for the
// features and config a back-end offers and send it malformed messages that no real front-end
// would.
//
//   ibnbd-vhost-raw --path SOCK [--timeout-ms T] SCENARIO
//   probe            GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_CONFIG (96 bytes)
//                    → {"features":"0x..","protocolFeatures":"0x..","queueNum":N,"config":"hex"}
//   malformed scenarios (each sends a short valid prefix, then one bad message, then reports
//   whether the back-end closed the connection within the timeout):
//     short-header, oversized-payload, truncated-payload, unknown-request, request-zero,
//     reply-flag, bad-version, fd-on-get-features, too-many-fds, memtable-no-fds,
//     memtable-too-many-regions, memtable-region-beyond-file, memtable-not-memfd,
//     vring-index-out-of-range, vring-num-not-pow2, vring-addr-outside-memory,
//     vring-addr-before-num, config-oversized, inflight-bad-geometry, set-log-base
//   → {"scenario":"..","closed":true|false}
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum {
  GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, SET_MEM_TABLE = 5, SET_LOG_BASE = 6,
  SET_VRING_NUM = 8, SET_VRING_ADDR = 9, SET_VRING_BASE = 10, GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16, GET_QUEUE_NUM = 17, GET_CONFIG = 24, GET_INFLIGHT_FD = 31,
};

static int timeout_ms = 3000;
static int sock = -1;

static void fail(const char *what) {
  printf("{\"ok\":false,\"error\":\"%s: %s\"}\n", what, strerror(errno));
  exit(2);
}

// Sends header + payload (+ fds) in one sendmsg.
static int send_msg(uint32_t req, uint32_t flags, uint32_t size, const void *payload, size_t payload_len,
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

static int send_simple(uint32_t req, const void *payload, uint32_t len) {
  return send_msg(req, 1, len, payload, len, NULL, 0);
}

static bool read_full(void *dst, size_t len) {
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
static int read_reply(uint32_t want_req, void *payload, size_t cap) {
  uint32_t hdr[3];
  if (!read_full(hdr, sizeof hdr)) return -1;
  if (hdr[0] != want_req || hdr[2] > cap) return -1;
  if (!read_full(payload, hdr[2])) return -1;
  return (int)hdr[2];
}

static uint64_t get_u64(uint32_t req) {
  uint64_t v = 0;
  if (send_simple(req, NULL, 0) < 0 || read_reply(req, &v, sizeof v) != 8) fail("reply");
  return v;
}

// True when the back-end closes the connection (EOF/ECONNRESET) within the timeout.
static bool closed_by_peer(void) {
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

static int memfd(size_t size) {
  int fd = memfd_create("vhost-raw", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, size) < 0) fail("memfd");
  return fd;
}

struct region {
  uint64_t gpa, size, uva, offset;
};

static void handshake(void) {
  get_u64(GET_FEATURES);
  uint64_t pf = get_u64(GET_PROTOCOL_FEATURES);
  send_simple(SET_PROTOCOL_FEATURES, &pf, 8);
  send_simple(SET_OWNER, NULL, 0);
}

static void good_memtable(uint64_t size, uint64_t uva) {
  int fd = memfd(size);
  uint8_t p[8 + 32] = {0};
  uint32_t n = 1;
  memcpy(p, &n, 4);
  struct region r = {0, size, uva, 0};
  memcpy(p + 8, &r, 32);
  send_msg(SET_MEM_TABLE, 1, sizeof p, p, sizeof p, &fd, 1);
  close(fd);
}

static void scenario(const char *name) {
  handshake();
  uint8_t p[1024] = {0};
  if (!strcmp(name, "short-header")) {
    send_msg(GET_FEATURES, 1, 0, NULL, 0, NULL, 0);  // valid first
    uint8_t h[6] = {1, 0, 0, 0, 1, 0};
    write(sock, h, sizeof h);
    shutdown(sock, SHUT_WR);  // the back-end sees 6 bytes then EOF
  } else if (!strcmp(name, "oversized-payload")) {
    send_msg(GET_FEATURES, 1, 1u << 20, p, 64, NULL, 0);
  } else if (!strcmp(name, "truncated-payload")) {
    send_msg(SET_FEATURES, 1, 8, p, 4, NULL, 0);
    shutdown(sock, SHUT_WR);
  } else if (!strcmp(name, "unknown-request")) {
    send_simple(999, p, 8);
  } else if (!strcmp(name, "request-zero")) {
    send_simple(0, NULL, 0);  // libvhost-user would exit() the process on this one
  } else if (!strcmp(name, "reply-flag")) {
    send_msg(GET_FEATURES, 1 | 4, 0, NULL, 0, NULL, 0);
  } else if (!strcmp(name, "bad-version")) {
    send_msg(GET_FEATURES, 2, 0, NULL, 0, NULL, 0);
  } else if (!strcmp(name, "fd-on-get-features")) {
    int fd = memfd(4096);
    send_msg(GET_FEATURES, 1, 0, NULL, 0, &fd, 1);
    close(fd);
  } else if (!strcmp(name, "too-many-fds")) {
    int fds[12];
    for (int i = 0; i < 12; i++) fds[i] = memfd(4096);
    uint32_t n = 1;
    memcpy(p, &n, 4);
    struct region r = {0, 4096, 0x10000, 0};
    memcpy(p + 8, &r, 32);
    send_msg(SET_MEM_TABLE, 1, 40, p, 40, fds, 12);
    for (int i = 0; i < 12; i++) close(fds[i]);
  } else if (!strcmp(name, "memtable-no-fds")) {
    uint32_t n = 2;
    memcpy(p, &n, 4);
    send_msg(SET_MEM_TABLE, 1, 8 + 64, p, 8 + 64, NULL, 0);
  } else if (!strcmp(name, "memtable-too-many-regions")) {
    uint32_t n = 100;  // libvhost-user would index regions[] and fds[] with it
    memcpy(p, &n, 4);
    int fd = memfd(4096);
    send_msg(SET_MEM_TABLE, 1, 8 + 8 * 32, p, 8 + 8 * 32, &fd, 1);
    close(fd);
  } else if (!strcmp(name, "memtable-region-beyond-file")) {
    int fd = memfd(4096);
    uint32_t n = 1;
    memcpy(p, &n, 4);
    struct region r = {0, 1u << 30, 0x10000, 0};  // 1 GiB claimed on a 4 KiB memfd: SIGBUS later
    memcpy(p + 8, &r, 32);
    send_msg(SET_MEM_TABLE, 1, 40, p, 40, &fd, 1);
    close(fd);
  } else if (!strcmp(name, "memtable-not-memfd")) {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    uint32_t n = 1;
    memcpy(p, &n, 4);
    struct region r = {0, 4096, 0x10000, 0};
    memcpy(p + 8, &r, 32);
    send_msg(SET_MEM_TABLE, 1, 40, p, 40, &sv[0], 1);
    close(sv[0]), close(sv[1]);
  } else if (!strcmp(name, "vring-index-out-of-range")) {
    uint32_t st[2] = {200, 128};
    send_simple(SET_VRING_NUM, st, 8);
  } else if (!strcmp(name, "vring-num-not-pow2")) {
    uint32_t st[2] = {0, 100};
    send_simple(SET_VRING_NUM, st, 8);
  } else if (!strcmp(name, "vring-addr-outside-memory")) {
    good_memtable(1 << 20, 0x100000);
    uint32_t st[2] = {0, 128};
    send_simple(SET_VRING_NUM, st, 8);
    uint64_t a[5] = {0, 0x100000, 0x100000 + 4096, 0x7fff00000000ull, 0};  // avail far outside
    send_simple(SET_VRING_ADDR, a, 40);
  } else if (!strcmp(name, "vring-addr-before-num")) {
    good_memtable(1 << 20, 0x100000);
    uint64_t a[5] = {0, 0x100000, 0x101000, 0x102000, 0};
    send_simple(SET_VRING_ADDR, a, 40);
  } else if (!strcmp(name, "config-oversized")) {
    uint32_t c[3] = {0, 4000, 0};
    memcpy(p, c, 12);
    send_simple(GET_CONFIG, p, 12 + 96);
  } else if (!strcmp(name, "inflight-bad-geometry")) {
    uint8_t in[20] = {0};
    uint16_t nq = 200, qs = 128;
    memcpy(in + 16, &nq, 2);
    memcpy(in + 18, &qs, 2);
    send_simple(GET_INFLIGHT_FD, in, 20);
  } else if (!strcmp(name, "set-log-base")) {
    int fd = memfd(4096);
    uint64_t l[2] = {1u << 30, 0};
    send_msg(SET_LOG_BASE, 1, 16, l, 16, &fd, 1);
    close(fd);
  } else {
    fprintf(stderr, "unknown scenario %s\n", name);
    exit(2);
  }
  printf("{\"scenario\":\"%s\",\"closed\":%s}\n", name, closed_by_peer() ? "true" : "false");
}

static void probe(void) {
  uint64_t f = get_u64(GET_FEATURES);
  uint64_t pf = get_u64(GET_PROTOCOL_FEATURES);
  send_simple(SET_PROTOCOL_FEATURES, &pf, 8);
  uint64_t qn = get_u64(GET_QUEUE_NUM);
  uint8_t p[12 + 96] = {0};
  uint32_t c[3] = {0, 96, 0};
  memcpy(p, c, 12);
  uint8_t r[12 + 256];
  if (send_simple(GET_CONFIG, p, sizeof p) < 0) fail("GET_CONFIG");
  int n = read_reply(GET_CONFIG, r, sizeof r);
  if (n != 12 + 96) fail("GET_CONFIG reply");
  printf("{\"features\":\"0x%" PRIx64 "\",\"protocolFeatures\":\"0x%" PRIx64 "\",\"queueNum\":%" PRIu64 ",\"config\":\"",
         f, pf, qn);
  for (int i = 0; i < 96; i++) printf("%02x", r[12 + i]);
  printf("\"}\n");
}

int main(int argc, char **argv) {
  static const struct option lo[] = {{"path", 1, 0, 'p'}, {"timeout-ms", 1, 0, 't'}, {0, 0, 0, 0}};
  const char *path = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (c == 'p') path = optarg;
    else if (c == 't') timeout_ms = atoi(optarg);
    else return 2;
  }
  if (!path || optind != argc - 1) {
    fprintf(stderr, "usage: ibnbd-vhost-raw --path SOCK [--timeout-ms T] probe|SCENARIO\n");
    return 2;
  }
  sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (connect(sock, (struct sockaddr *)&a, sizeof a) < 0) fail("connect");
  if (!strcmp(argv[optind], "probe")) probe();
  else scenario(argv[optind]);
  close(sock);
  return 0;
}
