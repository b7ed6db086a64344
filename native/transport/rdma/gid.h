// "gid:<gid>" endpoints on the device that will carry them. InfiniBand addresses a port by its
// GID (AF_IB); RoCE and iWARP have no AF_IB path: there a GID is derived from an IP address
// (RoCEv2: the IPv4-mapped ::ffff:a.b.c.d or the IPv6 address; RoCEv1 / the default GID: the
// fe80:: link-local address made from the MAC), so rdma_cm is given that IP address instead.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>

#include <string>

#include "transport/transport.h"

namespace ibnbd::rdma {

// A GID found in a local port's GID table (/sys/class/infiniband/<device>/ports/<port>/gids).
struct LocalGid {
  std::string device;
  unsigned port = 0;
  unsigned index = 0;
  std::string link_layer;  // "InfiniBand" | "Ethernet" (RoCE, iWARP)
  std::string netdev;      // gid_attrs/ndevs/<index>: the netdev the GID was derived from
};

// True and *out filled when gid is in some local port's table.
bool FindLocalGid(const in6_addr& gid, LocalGid* out);

// Resolves ep (kind "gid") for rdma_cm: AF_IB when the GID is on a local InfiniBand port, or is
// not local and this host has an InfiniBand port (and the GID is neither IPv4-mapped nor
// scoped); else its IP form (transport::GidToIpSockaddr), a link-local one scoped by its own
// %zone or by the netdev that owns the GID here. 0, or -EINVAL / -ENETUNREACH / -ENODEV with
// the reason in *why.
int ResolveGid(const transport::Endpoint& ep, sockaddr_storage* ss, socklen_t* len,
               std::string* why);

}  // namespace ibnbd::rdma
