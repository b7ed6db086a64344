// uring-blk-bench: 4 KiB-style random O_DIRECT IO on a block device at a fixed queue depth, with
// io_uring, for the all-kernel RNBD figures inside a test guest (busybox dd only gives QD1).
//
//   uring-blk-bench DEV randread|randwrite BS QD MILLISECONDS
//
// Prints one line: "rw=… bs=… qd=… ios=… seconds=… iops=… mean_us=…". Offsets come from a fixed
// seed so every run touches the same blocks. A diagnostic, not part of the addon.
#include <fcntl.h>
#include <linux/fs.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s DEV randread|randwrite BS QD MILLISECONDS\n", argv[0]);
    return 2;
  }
  int is_write = !strcmp(argv[2], "randwrite");
  unsigned bs = atoi(argv[3]), qd = atoi(argv[4]);
  double seconds = atoi(argv[5]) / 1000.0;
  if (!bs || bs % 512 || !qd || qd > 256 || seconds <= 0) return 2;
  int fd = open(argv[1], (is_write ? O_RDWR : O_RDONLY) | O_DIRECT);
  uint64_t size = 0;
  if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) || size < bs) { perror(argv[1]); return 1; }
  uint64_t blocks = size / bs;

  struct io_uring ring;
  if (io_uring_queue_init(qd, &ring, 0)) { perror("io_uring_queue_init"); return 1; }
  char *bufs;
  if (posix_memalign((void **)&bufs, 4096, (size_t)bs * qd)) return 1;
  memset(bufs, 0xa5, (size_t)bs * qd);
  double *started = calloc(qd, sizeof *started);
  srand48(1);

  unsigned long ios = 0;
  double lat_sum = 0, t0 = now(), end = t0 + seconds;
  for (unsigned i = 0; i < qd; i++) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    off_t off = (off_t)(lrand48() % blocks) * bs;
    if (is_write) io_uring_prep_write(sqe, fd, bufs + (size_t)i * bs, bs, off);
    else io_uring_prep_read(sqe, fd, bufs + (size_t)i * bs, bs, off);
    io_uring_sqe_set_data64(sqe, i);
    started[i] = now();
  }
  io_uring_submit(&ring);
  unsigned inflight = qd;
  while (inflight) {
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = {.tv_sec = 5};
    if (io_uring_wait_cqe_timeout(&ring, &cqe, &ts)) { fprintf(stderr, "no completion within 5 s\n"); return 1; }
    if (cqe->res != (int)bs) { fprintf(stderr, "io failed: %s\n", strerror(-cqe->res)); return 1; }
    unsigned slot = io_uring_cqe_get_data64(cqe);
    io_uring_cqe_seen(&ring, cqe);
    double t = now();
    lat_sum += t - started[slot];
    ios++;
    inflight--;
    if (t < end) {
      struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
      off_t off = (off_t)(lrand48() % blocks) * bs;
      if (is_write) io_uring_prep_write(sqe, fd, bufs + (size_t)slot * bs, bs, off);
      else io_uring_prep_read(sqe, fd, bufs + (size_t)slot * bs, bs, off);
      io_uring_sqe_set_data64(sqe, slot);
      started[slot] = t;
      io_uring_submit(&ring);
      inflight++;
    }
  }
  double elapsed = now() - t0;
  printf("rw=%s bs=%u qd=%u ios=%lu seconds=%.3f iops=%.0f mean_us=%.1f\n", argv[2], bs, qd, ios, elapsed,
         ios / elapsed, lat_sum / ios * 1e6);
  return 0;
}
