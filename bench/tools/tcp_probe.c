// ibnbd-tcp-probe: the physical floor of a TCP loopback hop for block IO, without any block layer.
// A client sends fixed-size requests (32-byte header + optional payload, like a write), a server
// answers each with a fixed-size reply (like a read's data), one thread a side, TCP_NODELAY on both
// ends. --qd 1 gives the bare round trip; --qd 32 keeps 32 requests pipelined on the connection.
//
//   ibnbd-tcp-probe server --listen HOST:PORT        prints {"port":N} once listening, then serves
//                                                    connections one after another until killed
//   ibnbd-tcp-probe client --connect HOST:PORT [--qd N] [--req-payload BYTES] [--resp-bytes BYTES]
//                          [--runtime-ms T] [--ramp-ms T] [--timeout-ms T]
//
// The client prints one JSON object (IOPS, MB/s, latency mean/p50/p99/p99.9 in µs, its own CPU
// seconds). Every wait of the client is bounded (poll timeouts, socket timeouts, a watchdog alarm).
//
// Request header (32 bytes, little-endian): u64 tag, u32 payload_len, u32 resp_len, 16 bytes zero.
// Reply: resp_len bytes, the first 8 of which echo the tag.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "latency_histogram.h"
#include "tools_common.h"

#define HEADER_BYTES 32
#define MAX_MESSAGE (2u << 20)      // payload and reply cap: 2 MiB
#define MAX_BATCH 256               // replies/requests gathered into one writev

struct header {
  uint64_t tag;
  uint32_t payload_len;
  uint32_t resp_len;
  uint8_t zero[16];
};
_Static_assert(sizeof(struct header) == HEADER_BYTES, "request header is 32 bytes");

static _Noreturn void die(const char *what) {
  printf("{\"ok\":false,\"error\":\"%s: %s\"}\n", what, strerror(errno));
  fflush(stdout);
  exit(2);
}

static void on_watchdog(int sig) {
  (void)sig;
  static const char msg[] = "{\"ok\":false,\"error\":\"watchdog: the probe did not finish in time\"}\n";
  ssize_t r = write(STDOUT_FILENO, msg, sizeof msg - 1);
  (void)r;
  _exit(2);
}


static void split_host_port(char *spec, char **host, char **port) {
  char *colon = strrchr(spec, ':');
  if (!colon) { fprintf(stderr, "expected HOST:PORT, got %s\n", spec); exit(2); }
  *colon = 0;
  *host = spec;
  *port = colon + 1;
}

static void set_nodelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) die("TCP_NODELAY");
}

// writev until every byte of iov[0..n) is out (blocking socket; bounded by SO_SNDTIMEO)
static int write_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    while (n > 0 && (size_t)w >= iov->iov_len) { w -= (ssize_t)iov->iov_len; iov++; n--; }
    if (n > 0) { iov->iov_base = (char *)iov->iov_base + w; iov->iov_len -= (size_t)w; }
  }
  return 0;
}

// ---- server ----

static void serve_connection(int fd, char *buf, size_t cap, const char *reply_body) {
  size_t have = 0;
  uint64_t tags[MAX_BATCH];
  struct iovec iov[2 * MAX_BATCH];
  for (;;) {
    ssize_t r = read(fd, buf + have, cap - have);
    if (r == 0) return;
    if (r < 0) {
      if (errno == EINTR) continue;
      return;
    }
    have += (size_t)r;
    size_t pos = 0;
    int batch = 0;
    for (;;) {
      if (have - pos < HEADER_BYTES) break;
      struct header h;
      memcpy(&h, buf + pos, sizeof h);
      if (h.payload_len > MAX_MESSAGE || h.resp_len < 8 || h.resp_len > MAX_MESSAGE) return;  // not our client
      if (have - pos < HEADER_BYTES + (size_t)h.payload_len) break;
      pos += HEADER_BYTES + h.payload_len;
      tags[batch] = h.tag;
      iov[2 * batch] = (struct iovec){&tags[batch], 8};
      iov[2 * batch + 1] = (struct iovec){(void *)reply_body, h.resp_len - 8};
      if (++batch == MAX_BATCH) {
        if (write_all(fd, iov, 2 * batch) < 0) return;
        batch = 0;
      }
    }
    if (batch && write_all(fd, iov, 2 * batch) < 0) return;
    memmove(buf, buf + pos, have - pos);
    have -= pos;
  }
}

static int run_server(char *listen_spec) {
  char *host, *port;
  split_host_port(listen_spec, &host, &port);
  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
  if (getaddrinfo(host, port, &hints, &ai) != 0) { errno = EINVAL; die("getaddrinfo"); }
  int lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, ai->ai_addr, ai->ai_addrlen) < 0) die("bind");
  if (listen(lfd, 4) < 0) die("listen");
  struct sockaddr_in bound;
  socklen_t len = sizeof bound;
  getsockname(lfd, (struct sockaddr *)&bound, &len);
  printf("{\"ok\":true,\"port\":%u}\n", ntohs(bound.sin_port));
  fflush(stdout);
  size_t cap = 2 * (HEADER_BYTES + MAX_MESSAGE);
  char *buf = malloc(cap);
  char *reply_body = calloc(1, MAX_MESSAGE);
  if (!buf || !reply_body) die("malloc");
  memset(reply_body, 0xa5, MAX_MESSAGE);
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      die("accept");
    }
    set_nodelay(fd);
    serve_connection(fd, buf, cap, reply_body);
    close(fd);
  }
}

// ---- client ----

struct client_opts {
  int qd, runtime_ms, ramp_ms, timeout_ms;
  uint32_t payload, resp;
};

static int run_client(char *connect_spec, struct client_opts o) {
  signal(SIGALRM, on_watchdog);
  alarm((unsigned)((o.ramp_ms + o.runtime_ms + 3 * o.timeout_ms) / 1000 + 5));
  char *host, *port;
  split_host_port(connect_spec, &host, &port);
  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
  if (getaddrinfo(host, port, &hints, &ai) != 0) { errno = EINVAL; die("getaddrinfo"); }
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  struct timeval tv = {.tv_sec = o.timeout_ms / 1000, .tv_usec = (o.timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) die("connect");
  set_nodelay(fd);

  struct header *headers = calloc((size_t)o.qd, sizeof *headers);
  uint64_t *started = calloc((size_t)o.qd, sizeof *started);
  char *payload = malloc(o.payload ? o.payload : 1);
  size_t cap = (size_t)o.resp * (size_t)o.qd + 65536;
  char *buf = malloc(cap);
  struct iovec *iov = calloc(2 * (size_t)o.qd, sizeof *iov);
  struct lat_hist *hist = calloc(1, sizeof *hist);
  if (!headers || !started || !payload || !buf || !iov || !hist) die("malloc");
  memset(payload, 0x5a, o.payload ? o.payload : 1);

  int niov = 0;
  uint64_t sent = 0;
  for (int s = 0; s < o.qd; s++) {
    headers[s] = (struct header){.tag = (uint64_t)s, .payload_len = o.payload, .resp_len = o.resp};
    started[s] = now_ns();
    iov[niov++] = (struct iovec){&headers[s], HEADER_BYTES};
    if (o.payload) iov[niov++] = (struct iovec){payload, o.payload};
    sent++;
  }

  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  uint64_t t0 = now_ns();
  uint64_t measure_start = t0 + (uint64_t)o.ramp_ms * 1000000ull;
  uint64_t measure_end = measure_start + (uint64_t)o.runtime_ms * 1000000ull;
  if (write_all(fd, iov, niov) < 0) die("send");
  int inflight = o.qd;
  bool stopping = false;
  size_t have = 0;
  while (inflight > 0) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, o.timeout_ms);
    if (pr == 0) { errno = ETIMEDOUT; die("no reply within --timeout-ms"); }
    if (pr < 0) { if (errno == EINTR) continue; die("poll"); }
    ssize_t r = read(fd, buf + have, cap - have);
    if (r == 0) { errno = ECONNRESET; die("server closed the connection"); }
    if (r < 0) { if (errno == EINTR || errno == EAGAIN) continue; die("read"); }
    have += (size_t)r;
    uint64_t t = now_ns();
    if (t >= measure_end) stopping = true;
    size_t pos = 0;
    niov = 0;
    while (have - pos >= o.resp) {
      uint64_t tag;
      memcpy(&tag, buf + pos, 8);
      pos += o.resp;
      if (tag >= (uint64_t)o.qd) { errno = EPROTO; die("reply with an unknown tag"); }
      if (started[tag] >= measure_start && t <= measure_end) lat_record(hist, t - started[tag]);
      inflight--;
      if (!stopping) {
        started[tag] = t;
        iov[niov++] = (struct iovec){&headers[tag], HEADER_BYTES};
        if (o.payload) iov[niov++] = (struct iovec){payload, o.payload};
        inflight++;
        sent++;
      }
    }
    memmove(buf, buf + pos, have - pos);
    have -= pos;
    if (niov && write_all(fd, iov, niov) < 0) die("send");
  }
  getrusage(RUSAGE_SELF, &ru1);
  close(fd);

  double seconds = (double)(measure_end - measure_start) / 1e9;
  double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
               (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
  double iops = (double)hist->count / seconds;
  uint32_t data = o.payload > o.resp ? o.payload : o.resp;
  printf("{\"ok\":true,\"tool\":\"ibnbd-tcp-probe\",\"qd\":%d,\"req_bytes\":%u,\"resp_bytes\":%u,\"runtime_s\":%.3f,"
         "\"ios\":%" PRIu64 ",\"submitted\":%" PRIu64 ",\"iops\":%.1f,\"mbps\":%.2f,"
         "\"lat_us\":{\"mean\":%.2f,\"p50\":%.2f,\"p99\":%.2f,\"p999\":%.2f,\"max\":%.2f},\"errors\":0,\"client_cpu_s\":%.3f}\n",
         o.qd, HEADER_BYTES + o.payload, o.resp, seconds, hist->count, sent, iops, iops * data / 1e6, lat_mean(hist) / 1e3,
         lat_percentile(hist, 0.5) / 1e3, lat_percentile(hist, 0.99) / 1e3, lat_percentile(hist, 0.999) / 1e3,
         (double)hist->max_ns / 1e3, cpu);
  return 0;
}

static uint32_t parse_u32(const char *s, const char *name, uint32_t min, uint32_t max) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (*end == 'k' || *end == 'K') { v <<= 10; end++; }
  if (errno || end == s || *end || v < min || v > max) {
    fprintf(stderr, "%s must be a number in [%u, %u]\n", name, min, max);
    exit(2);
  }
  return (uint32_t)v;
}

int main(int argc, char **argv) {
  if (argc < 2 || (strcmp(argv[1], "server") && strcmp(argv[1], "client"))) {
    fprintf(stderr, "usage: ibnbd-tcp-probe server --listen HOST:PORT | client --connect HOST:PORT [--qd N] "
                    "[--req-payload B] [--resp-bytes B] [--runtime-ms T] [--ramp-ms T] [--timeout-ms T]\n");
    return 2;
  }
  bool server = !strcmp(argv[1], "server");
  static const struct option longopts[] = {
      {"listen", required_argument, 0, 'l'},      {"connect", required_argument, 0, 'c'},
      {"qd", required_argument, 0, 'q'},          {"req-payload", required_argument, 0, 'p'},
      {"resp-bytes", required_argument, 0, 'r'},  {"runtime-ms", required_argument, 0, 't'},
      {"ramp-ms", required_argument, 0, 'R'},     {"timeout-ms", required_argument, 0, 'T'},
      {0, 0, 0, 0}};
  char *addr = NULL;
  struct client_opts o = {.qd = 1, .runtime_ms = 3000, .ramp_ms = 0, .timeout_ms = 10000, .payload = 0, .resp = 4096};
  int c;
  optind = 2;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
      case 'l': case 'c': addr = optarg; break;
      case 'q': o.qd = (int)parse_u32(optarg, "--qd", 1, 1024); break;
      case 'p': o.payload = parse_u32(optarg, "--req-payload", 0, MAX_MESSAGE); break;
      case 'r': o.resp = parse_u32(optarg, "--resp-bytes", 8, MAX_MESSAGE); break;
      case 't': o.runtime_ms = (int)parse_u32(optarg, "--runtime-ms", 1, 3600000); break;
      case 'R': o.ramp_ms = (int)parse_u32(optarg, "--ramp-ms", 0, 600000); break;
      case 'T': o.timeout_ms = (int)parse_u32(optarg, "--timeout-ms", 1, 600000); break;
      default: return 2;
    }
  }
  if (!addr) { fprintf(stderr, "%s is required\n", server ? "--listen" : "--connect"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  return server ? run_server(addr) : run_client(addr, o);
}
