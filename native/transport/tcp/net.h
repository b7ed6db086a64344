// Socket plumbing shared by the TCP client and server: endpoint parsing, address formatting,
// blocking-with-deadline helpers for the handshake, and the per-socket options we always set.
#pragma once
#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "transport/transport.h"

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

void RandomUuid(uint8_t out[16]);
std::string UuidString(const uint8_t uuid[16]);

}  // namespace ibnbd::transport::tcp
