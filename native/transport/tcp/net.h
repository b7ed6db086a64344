// Socket plumbing shared by the TCP client and server: endpoint parsing, address formatting,
// blocking-with-deadline helpers for the handshake, and the per-socket options we always set.
#pragma once
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cstdint>
#include <string>

#include "transport/transport.h"

#include "transport/uuid.h"

namespace ibnbd::transport::tcp {

// "ip" endpoints only (v4 or v6, brackets allowed); gid → -EAFNOSUPPORT, bad text → -EINVAL.
int ToSockaddr(const Endpoint& ep, sockaddr_storage* ss, socklen_t* len);
std::string FormatSockaddr(const sockaddr_storage& ss);  // "ip:1.2.3.4:port", "ip:[::1]:port"
Endpoint EndpointOf(const sockaddr_storage& ss);

int SetNoDelay(int fd);
int SetNonBlocking(int fd, bool on);

uint64_t NowNs();  // CLOCK_MONOTONIC

// Blocking socket helpers bounded by an absolute CLOCK_MONOTONIC deadline (ns). 0 or -errno
// (-ETIMEDOUT at the deadline, -ECONNRESET when the peer closed).
int ConnectBefore(int fd, const sockaddr_storage& ss, socklen_t len, uint64_t deadline_ns);
int SendAllBefore(int fd, const void* buf, size_t len, uint64_t deadline_ns);
int RecvAllBefore(int fd, void* buf, size_t len, uint64_t deadline_ns);

// One non-blocking step of an event loop's socket IO, EINTR retried: bytes moved (> 0), 0 when
// the peer closed (receives only), -EAGAIN when there is nothing to read / no room to write now,
// or -errno.
ssize_t RecvSome(int fd, void* buf, size_t len);
ssize_t ReadvSome(int fd, const iovec* iov, size_t cnt);
ssize_t SendvSome(int fd, const iovec* iov, size_t cnt);

// A non-blocking CLOCK_MONOTONIC timerfd that fires every interval_ms (first after one
// interval): its fd, or -1 with errno set, as timerfd_create.
int PeriodicTimer(uint32_t interval_ms);


}  // namespace ibnbd::transport::tcp
