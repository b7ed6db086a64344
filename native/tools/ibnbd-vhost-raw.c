// ibnbd-vhost-raw: a hand-written vhost-user front-end for tests. It speaks the wire format
// byte by byte (docs/protocol.md, "vhost-user", "Framing"), including fds in SCM_RIGHTS, so
// tests can ask for the features and config a back-end offers and send it malformed messages
// that no real front-end would.
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
//     vring-addr-before-num, config-oversized, inflight-bad-geometry,
//                    set-log-base (a log larger than its fd's file)
//   → {"scenario":"..","closed":true|false}
//   chains           drives virtqueue 0 by hand (memfd guest memory, split ring, eventfds) with
//                    descriptor layouts libblkio never produces: header split across
//                    descriptors, data and status in one descriptor, GET_ID, unknown types,
//                    wrong directions, short headers, no status byte, out-of-range sectors;
//                    finally a descriptor outside guest memory.
//                    → {"results":{name:{"status":N,"len":N,...}}, "closedAfterBadAddr":bool}
//   chain-loop       a descriptor chain that loops → {"closed":bool}
//   drain            SET_MEM_TABLE (NEED_REPLY) while a 4 MiB read is in flight
//                    → {"ack":8,"usedAtAck":1,"status":0,...}
//   unanswered       8 FLUSHes made available, "ready" on stderr, then waits for the back-end
//                    to close → {"closed":bool,"used":N,"statuses":[8 status bytes]}
//   dirty-log, dirty-log-small   migration's dirty log at QD32 (vhost_raw_dirtylog.c)
// The framing and the hand-driven virtqueue are vhost_raw.c.
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
#include <time.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vhost_raw.h"

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
    uint8_t in[24] = {0};  // VhostUserInflight: 20 bytes of fields, sizeof 24
    uint16_t nq = 200, qs = 128;
    memcpy(in + 16, &nq, 2);
    memcpy(in + 18, &qs, 2);
    send_simple(GET_INFLIGHT_FD, in, 24);
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


// ---- a hand-driven split virtqueue -------------------------------------------------------


#define HDR BUF_OFF
#define DATA (BUF_OFF + 0x1000)
#define STATUS (BUF_OFF + 0x800)

static void result(const char *name, int len, bool first, const char *extra) {
  printf("%s\"%s\":{\"len\":%d,\"status\":%d%s}", first ? "" : ",", name, len, len > 0 ? mem[STATUS] : -1,
         extra ? extra : "");
}

static void chains(void) {
  vq_setup();
  printf("{\"results\":{");
  // GET_ID, standard layout
  hdr_at(HDR, 8, 0);
  memset(mem + DATA, 0xee, 20);
  mem[STATUS] = 0xff;
  struct seg getid[] = {{HDR, 16, false}, {DATA, 20, true}, {STATUS, 1, true}};
  int len = vq_run(getid, 3);
  char extra[128];
  snprintf(extra, sizeof extra, ",\"id\":\"%.*s\",\"padded\":%s", 20, (char *)mem + DATA,
           mem[DATA + 19] == 0 ? "true" : "false");
  result("getId", len, true, extra);
  // GET_ID with data and status in one descriptor
  mem[DATA + 20] = 0xff;
  struct seg getid1[] = {{HDR, 16, false}, {DATA, 21, true}};
  len = vq_run(getid1, 2);
  printf(",\"getIdOneDesc\":{\"len\":%d,\"status\":%d}", len, mem[DATA + 20]);
  // OUT with the header split in three descriptors, data in two, then IN the same way
  for (int i = 0; i < 8192; i++) mem[DATA + i] = (uint8_t)(i * 7 + 3);
  uint8_t hdr[16];
  uint32_t t_out = 1;
  uint64_t sector = 8;
  memcpy(hdr, &t_out, 4), memset(hdr + 4, 0, 4), memcpy(hdr + 8, &sector, 8);
  memcpy(mem + HDR, hdr, 5), memcpy(mem + HDR + 0x100, hdr + 5, 6), memcpy(mem + HDR + 0x200, hdr + 11, 5);
  mem[STATUS] = 0xff;
  struct seg out[] = {{HDR, 5, false}, {HDR + 0x100, 6, false}, {HDR + 0x200, 5, false},
                      {DATA, 3000, false}, {DATA + 3000, 8192 - 3000, false}, {STATUS, 1, true}};
  len = vq_run(out, 6);
  result("outSplitHeader", len, false, NULL);
  uint32_t t_in = 0;
  memcpy(hdr, &t_in, 4);
  memcpy(mem + HDR, hdr, 5), memcpy(mem + HDR + 0x100, hdr + 5, 6), memcpy(mem + HDR + 0x200, hdr + 11, 5);
  uint32_t back = DATA + 0x4000;
  memset(mem + back, 0, 8192 + 1);
  // read into two descriptors, the second holding the tail of the data and the status byte
  struct seg in[] = {{HDR, 5, false}, {HDR + 0x100, 6, false}, {HDR + 0x200, 5, false},
                     {back, 1000, true}, {back + 1000, 8192 - 1000 + 1, true}};
  len = vq_run(in, 5);
  printf(",\"inSplitHeader\":{\"len\":%d,\"status\":%d,\"same\":%s}", len, mem[back + 8192],
         memcmp(mem + back, mem + DATA, 8192) == 0 ? "true" : "false");
  // unknown type
  hdr_at(HDR, 99, 0);
  mem[STATUS] = 0xff;
  struct seg unk[] = {{HDR, 16, false}, {STATUS, 1, true}};
  result("unknownType", vq_run(unk, 2), false, NULL);
  // header shorter than 16 bytes
  hdr_at(HDR, 0, 0);
  mem[STATUS] = 0xff;
  struct seg shorth[] = {{HDR, 8, false}, {DATA, 512, true}, {STATUS, 1, true}};
  result("shortHeader", vq_run(shorth, 3), false, NULL);
  // IN with a device-readable data buffer (wrong direction)
  hdr_at(HDR, 0, 0);
  mem[STATUS] = 0xff;
  struct seg wrongdir[] = {{HDR, 16, false}, {DATA, 512, false}, {STATUS, 1, true}};
  result("wrongDirection", vq_run(wrongdir, 3), false, NULL);
  // data length not a multiple of 512
  hdr_at(HDR, 0, 0);
  mem[STATUS] = 0xff;
  struct seg odd[] = {{HDR, 16, false}, {DATA, 700, true}, {STATUS, 1, true}};
  result("oddLength", vq_run(odd, 3), false, NULL);
  // beyond the end of the device
  hdr_at(HDR, 0, 1ull << 40);
  mem[STATUS] = 0xff;
  struct seg beyond[] = {{HDR, 16, false}, {DATA, 512, true}, {STATUS, 1, true}};
  result("beyondEnd", vq_run(beyond, 3), false, NULL);
  // DISCARD with a flag that is only valid for WRITE_ZEROES
  hdr_at(HDR, 11, 0);
  uint64_t seg_sector = 0;
  uint32_t seg_n = 8, seg_flags = 1;
  memcpy(mem + DATA, &seg_sector, 8), memcpy(mem + DATA + 8, &seg_n, 4), memcpy(mem + DATA + 12, &seg_flags, 4);
  mem[STATUS] = 0xff;
  struct seg dflags[] = {{HDR, 16, false}, {DATA, 16, false}, {STATUS, 1, true}};
  result("discardBadFlags", vq_run(dflags, 3), false, NULL);
  // no device-writable byte at all: nowhere to put a status; consumed with len 0
  hdr_at(HDR, 4, 0);
  struct seg nostatus[] = {{HDR, 16, false}};
  printf(",\"noStatus\":{\"len\":%d}", vq_run(nostatus, 1));
  // FLUSH still works after all that
  hdr_at(HDR, 4, 0);
  mem[STATUS] = 0xff;
  struct seg flush[] = {{HDR, 16, false}, {STATUS, 1, true}};
  result("flushAfter", vq_run(flush, 2), false, NULL);
  printf("}");
  // a descriptor pointing outside guest memory: libvhost-user refuses the chain
  hdr_at(HDR, 0, 0);
  struct vdesc *d = (struct vdesc *)(mem + DESC_OFF);
  struct seg bad[] = {{HDR, 16, false}, {DATA, 512, true}, {STATUS, 1, true}};
  (void)bad;
  d[0] = (struct vdesc){HDR, 16, 1, 1};
  d[1] = (struct vdesc){(uint64_t)MEM_SIZE * 4, 512, 1 | 2, 2};
  d[2] = (struct vdesc){STATUS, 1, 2, 0};
  uint16_t *avail = (uint16_t *)(mem + AVAIL_OFF);
  avail[2 + (avail_idx % QSIZE)] = 0;
  __atomic_store_n(&avail[1], ++avail_idx, __ATOMIC_RELEASE);
  eventfd_write(kick_fd, 1);
  printf(",\"closedAfterBadAddr\":%s}\n", closed_by_peer() ? "true" : "false");
}

// A 4 MiB read is in flight when a new memory table arrives (NEED_REPLY): the back-end must
// finish the read before it remaps, so when the ack comes the request is already in the used
// ring with its data.
static void drain(void) {
  reply_ack = true;
  vq_setup();
  hdr_at(HDR, 0, 0);
  mem[STATUS] = 0xff;
  const uint32_t big = 4u << 20;
  uint32_t buf = 1u << 20;
  memset(mem + buf, 0xa5, big);
  struct vdesc *d = (struct vdesc *)(mem + DESC_OFF);
  d[0] = (struct vdesc){HDR, 16, 1, 1};
  d[1] = (struct vdesc){buf, big, 1 | 2, 2};
  d[2] = (struct vdesc){STATUS, 1, 2, 0};
  uint16_t *avail = (uint16_t *)(mem + AVAIL_OFF);
  avail[2] = 0;
  __atomic_store_n(&avail[1], ++avail_idx, __ATOMIC_RELEASE);
  eventfd_write(kick_fd, 1);
  // wait until the back-end popped the read (avail_event, after used->ring[QSIZE], moves to 1)
  volatile uint16_t *avail_event = (uint16_t *)(mem + USED_OFF + 4 + 8 * QSIZE);
  for (int i = 0; i < timeout_ms * 10 && *avail_event != 1; i++) usleep(100);
  bool popped = *avail_event == 1;
  bool in_flight_at_send = __atomic_load_n((uint16_t *)(mem + USED_OFF + 2), __ATOMIC_ACQUIRE) == 0;
  send_memtable(mem_fd, 1 | 8);  // NEED_REPLY
  uint64_t ack = 1;
  int n = read_reply(SET_MEM_TABLE, &ack, sizeof ack);
  uint16_t used = __atomic_load_n((uint16_t *)(mem + USED_OFF + 2), __ATOMIC_ACQUIRE);
  uint32_t used_len = *(uint32_t *)(mem + USED_OFF + 4 + 4);
  printf("{\"popped\":%s,\"inFlightAtSend\":%s,\"ack\":%d,\"ackValue\":%" PRIu64 ",\"usedAtAck\":%u,\"usedLen\":%u,\"status\":%d,\"dataOverwritten\":%s",
         popped ? "true" : "false", in_flight_at_send ? "true" : "false", n, ack, used, used_len, mem[STATUS], mem[buf] != 0xa5 || mem[buf + big - 1] != 0xa5 ? "true" : "false");
  // the queue keeps working on the new table
  hdr_at(HDR, 4, 0);
  mem[STATUS] = 0xff;
  used_seen = used;
  struct seg flush[] = {{HDR, 16, false}, {STATUS, 1, true}};
  int len = vq_run(flush, 2);
  printf(",\"flushAfter\":{\"len\":%d,\"status\":%d}}\n", len, mem[STATUS]);
}

// Eight FLUSHes made available (and kicked) in one go; "ready" on stderr once they are in the
// ring; then it waits for the back-end to close the connection and reports what the used ring
// says of them. A test pauses the back-end's rings first, so none is popped before it
// disconnects the front-end: every one must still come back answered (IOERR).
static void unanswered(void) {
  enum { N = 8 };
  vq_setup();
  struct vdesc *d = (struct vdesc *)(mem + DESC_OFF);
  uint16_t *avail = (uint16_t *)(mem + AVAIL_OFF);
  for (int i = 0; i < N; i++) {
    uint32_t hdr = HDR + 32 * i, status = STATUS + i;
    hdr_at(hdr, 4, 0);
    mem[status] = 0xff;
    d[2 * i] = (struct vdesc){hdr, 16, 1, (uint16_t)(2 * i + 1)};
    d[2 * i + 1] = (struct vdesc){status, 1, 2, 0};
    avail[2 + i] = (uint16_t)(2 * i);
  }
  avail_idx = N;
  __atomic_store_n(&avail[1], avail_idx, __ATOMIC_RELEASE);
  eventfd_write(kick_fd, 1);
  fputs("ready\n", stderr);
  fflush(stderr);
  bool closed = closed_by_peer();
  uint16_t used = __atomic_load_n((uint16_t *)(mem + USED_OFF + 2), __ATOMIC_ACQUIRE);
  printf("{\"closed\":%s,\"used\":%u,\"statuses\":[", closed ? "true" : "false", used);
  for (int i = 0; i < N; i++) printf("%s%d", i ? "," : "", mem[STATUS + i]);
  printf("]}\n");
}

static void chain_loop(void) {
  vq_setup();
  struct vdesc *d = (struct vdesc *)(mem + DESC_OFF);
  hdr_at(HDR, 0, 0);
  d[0] = (struct vdesc){HDR, 16, 1, 1};
  d[1] = (struct vdesc){DATA, 512, 1 | 2, 0};  // back to the head: a loop
  uint16_t *avail = (uint16_t *)(mem + AVAIL_OFF);
  avail[2] = 0;
  __atomic_store_n(&avail[1], ++avail_idx, __ATOMIC_RELEASE);
  eventfd_write(kick_fd, 1);
  printf("{\"closed\":%s}\n", closed_by_peer() ? "true" : "false");
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
  printf("\"");
  // SET_CONFIG: writeback (offset 32) is writable, capacity (offset 0) is not; then read back.
  uint8_t sc[12 + 8] = {0};
  uint32_t wce_hdr[3] = {32, 1, 0};
  memcpy(sc, wce_hdr, 12);
  sc[12] = r[12 + 32] ? 0 : 1;  // flip it
  send_simple(25, sc, 12 + 1);
  uint32_t cap_hdr[3] = {0, 8, 0};
  memcpy(sc, cap_hdr, 12);
  memset(sc + 12, 0x7f, 8);
  send_simple(25, sc, 12 + 8);
  if (send_simple(GET_CONFIG, p, sizeof p) < 0 || read_reply(GET_CONFIG, r + 0, sizeof r) != 12 + 96) fail("GET_CONFIG after SET_CONFIG");
  printf(",\"configAfterSet\":\"");
  for (int i = 0; i < 96; i++) printf("%02x", r[12 + i]);
  printf("\"");
  // GET_INFLIGHT_FD (INFLIGHT_SHMFD): a shared buffer for 1 queue of 128 descriptors
  if (pf & (1ull << 12)) {
    uint8_t in[24] = {0};
    uint16_t nq = 1, qs = 128;
    memcpy(in + 16, &nq, 2), memcpy(in + 18, &qs, 2);
    send_simple(GET_INFLIGHT_FD, in, 24);
    uint32_t hdr[3];
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {hdr, sizeof hdr};
    struct msghdr mh = {0};
    mh.msg_iov = &iov, mh.msg_iovlen = 1, mh.msg_control = control, mh.msg_controllen = sizeof control;
    struct pollfd pl = {sock, POLLIN, 0};
    int fd = -1;
    uint8_t body[24] = {0};
    if (poll(&pl, 1, timeout_ms) > 0 && recvmsg(sock, &mh, 0) == sizeof hdr) {
      struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
      if (cm && cm->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(cm), sizeof fd);
      if (hdr[2] == 24) read_full(body, 24);
    }
    uint64_t msize;
    memcpy(&msize, body, 8);
    printf(",\"inflightMmapSize\":%" PRIu64 ",\"inflightFd\":%s", msize, fd >= 0 ? "true" : "false");
    if (fd >= 0) close(fd);
  }
  printf("}\n");
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
  else if (!strcmp(argv[optind], "chains")) chains();
  else if (!strcmp(argv[optind], "chain-loop")) chain_loop();
  else if (!strcmp(argv[optind], "drain")) drain();
  else if (!strcmp(argv[optind], "unanswered")) unanswered();
  else if (!strcmp(argv[optind], "dirty-log")) dirty_log();
  else if (!strcmp(argv[optind], "dirty-log-small")) dirty_log_small();
  else scenario(argv[optind]);
  close(sock);
  return 0;
}
