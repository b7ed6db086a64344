// "ip:<v4>" / "ip:<v6>[%zone]" endpoints as socket addresses, shared by the TCP and RDMA
// transports (RDMA adds "gid:" itself, as AF_IB).
#pragma once
#include <sys/socket.h>

#include "transport/transport.h"

namespace ibnbd::transport {

// 0, or -EINVAL for anything but a literal IPv4/IPv6 address (brackets allowed, IPv6 may carry
// a %interface zone). Does not look at ep.kind.
int IpToSockaddr(const Endpoint& ep, sockaddr_storage* ss, socklen_t* len);

}  // namespace ibnbd::transport
