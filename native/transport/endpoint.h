// "ip:<v4>" / "ip:<v6>[%zone]" endpoints as socket addresses, shared by the TCP and RDMA
// transports, and the IP form of a "gid:" one (RDMA decides when to use it: native/transport/rdma/gid.h).
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>

#include <string>

#include "transport/transport.h"

namespace ibnbd::transport {

// 0, or -EINVAL for anything but a literal IPv4/IPv6 address (brackets allowed, IPv6 may carry
// a %interface zone). Does not look at ep.kind.
int IpToSockaddr(const Endpoint& ep, sockaddr_storage* ss, socklen_t* len);

// A GID as RoCE derives it from an IP address: IPv4-mapped (::ffff:a.b.c.d, RoCEv2 over IPv4)
// → AF_INET; any other → AF_INET6, a link-local one (fe80::/10) scoped by the endpoint's own
// %zone or else by default_zone (a netdev name; "" = none). 0; -EINVAL for text that is not a
// GID (IPv4 text, bad %zone, a zone on a non-link-local GID); -EDESTADDRREQ for a link-local GID
// with no scope at all (the caller says which one to give).
int GidToIpSockaddr(const Endpoint& ep, const std::string& default_zone, sockaddr_storage* ss,
                    socklen_t* len);

// The GID of a "gid:" endpoint (brackets and a %zone allowed and ignored). 0 or -EINVAL.
int ParseGid(const Endpoint& ep, in6_addr* gid);

}  // namespace ibnbd::transport
