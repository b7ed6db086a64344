#include "transport/tcp/net.h"

#include "transport/core/liveness.h"
#include "transport/endpoint.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace ibnbd::transport::tcp {

int ToSockaddr(const Endpoint& ep, sockaddr_storage* ss, socklen_t* len) {
  if (ep.kind == "gid") return -EAFNOSUPPORT;
  if (ep.kind != "ip") return -EINVAL;
  return IpToSockaddr(ep, ss, len);
}

Endpoint EndpointOf(const sockaddr_storage& ss) {
  Endpoint ep;
  ep.kind = "ip";
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    auto* v4 = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof(buf));
    ep.port = ntohs(v4->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof(buf));
    ep.port = ntohs(v6->sin6_port);
  }
  ep.addr = buf;
  return ep;
}

std::string FormatSockaddr(const sockaddr_storage& ss) {
  Endpoint ep = EndpointOf(ss);
  if (ss.ss_family == AF_INET6) return "ip:[" + ep.addr + "]:" + std::to_string(ep.port);
  return "ip:" + ep.addr + ":" + std::to_string(ep.port);
}

int SetNoDelay(int fd) {
  int one = 1;
  return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0 ? 0 : -errno;
}

int SetNonBlocking(int fd, bool on) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  return fcntl(fd, F_SETFL, fl) == 0 ? 0 : -errno;
}

uint64_t NowNs() { return core::MonotonicNs(); }

namespace {
// Waits for events on fd until the deadline: 0, or -ETIMEDOUT.
int WaitFd(int fd, short events, uint64_t deadline_ns) {
  for (;;) {
    uint64_t now = NowNs();
    if (now >= deadline_ns) return -ETIMEDOUT;
    int ms = static_cast<int>((deadline_ns - now + 999999) / 1000000);
    pollfd p{fd, events, 0};
    int n = poll(&p, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n > 0) return 0;
  }
}
}  // namespace

int ConnectBefore(int fd, const sockaddr_storage& ss, socklen_t len, uint64_t deadline_ns) {
  int rc = SetNonBlocking(fd, true);
  if (rc) return rc;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&ss), len) == 0) return 0;
  if (errno != EINPROGRESS) return -errno;
  rc = WaitFd(fd, POLLOUT, deadline_ns);
  if (rc) return rc;
  int err = 0;
  socklen_t el = sizeof(err);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
  return err ? -err : 0;
}

int SendAllBefore(int fd, const void* buf, size_t len, uint64_t deadline_ns) {
  auto* p = static_cast<const uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      len -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) return -errno;
    int rc = WaitFd(fd, POLLOUT, deadline_ns);
    if (rc) return rc;
  }
  return 0;
}

int RecvAllBefore(int fd, void* buf, size_t len, uint64_t deadline_ns) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      len -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return -ECONNRESET;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return -errno;
    int rc = WaitFd(fd, POLLIN, deadline_ns);
    if (rc) return rc;
  }
  return 0;
}

ssize_t RecvSome(int fd, void* buf, size_t len) {
  for (;;) {
    ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

ssize_t ReadvSome(int fd, const iovec* iov, size_t cnt) {
  for (;;) {
    ssize_t n = readv(fd, iov, static_cast<int>(cnt));
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

ssize_t SendvSome(int fd, const iovec* iov, size_t cnt) {
  msghdr mh{};
  mh.msg_iov = const_cast<iovec*>(iov);
  mh.msg_iovlen = cnt;
  for (;;) {
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

int PeriodicTimer(uint32_t interval_ms) {
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) return -1;
  itimerspec its{};
  its.it_interval.tv_sec = interval_ms / 1000;
  its.it_interval.tv_nsec = (interval_ms % 1000) * 1000000L;
  its.it_value = its.it_interval;
  timerfd_settime(fd, 0, &its, nullptr);
  return fd;
}

}  // namespace ibnbd::transport::tcp
