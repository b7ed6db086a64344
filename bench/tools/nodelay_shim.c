// LD_PRELOAD shim: sets TCP_NODELAY on every socket a program accepts.
// qemu-nbd 7.2 (and qsd's NBD server) leave Nagle on for accepted connections, so pipelined
// replies wait for delayed ACKs (tens of ms stalls at QD32). The benchmark compares against the
// peer's best TCP configuration, which is this one. On unix sockets the setsockopt fails and the
// failure is ignored; errno is preserved so the program sees exactly what accept returned.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
  int saved = errno, one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  errno = saved;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
  static int (*real)(int, struct sockaddr *, socklen_t *);
  if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
  int r = real(fd, addr, len);
  if (r >= 0) nodelay(r);
  return r;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
  int r = real(fd, addr, len, flags);
  if (r >= 0) nodelay(r);
  return r;
}
