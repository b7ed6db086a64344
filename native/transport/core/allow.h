// `--allow CIDR`: which peer addresses may connect at all, checked by both wires before a
// handshake is read (TCP: at accept; RDMA: at the connect request), so a refused host costs one
// accept and one close. Empty: every address. IPv4 peers that arrive on an IPv6 socket as
// ::ffff:a.b.c.d are matched as IPv4. Immutable once the server starts.
#pragma once
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ibnbd::transport::core {

class AllowList {
 public:
  // "ADDR/PREFIX" or "ADDR" (a single host); false for anything else.
  bool Add(const std::string& cidr);
  bool empty() const { return nets_.empty(); }
  bool Allows(const sockaddr* peer) const;

 private:
  struct Net {
    int family;  // AF_INET or AF_INET6
    uint8_t addr[16];
    unsigned prefix;
  };
  std::vector<Net> nets_;
};

}  // namespace ibnbd::transport::core
