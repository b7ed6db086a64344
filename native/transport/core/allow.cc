// The peer address filter of `--allow` (allow.h).
#include "transport/core/allow.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace ibnbd::transport::core {
namespace {

bool PrefixMatch(const uint8_t* a, const uint8_t* b, unsigned bits) {
  const unsigned bytes = bits / 8, rest = bits % 8;
  if (memcmp(a, b, bytes) != 0) return false;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[bytes] & mask) == (b[bytes] & mask);
}

}  // namespace

bool AllowList::Add(const std::string& cidr) {
  std::string addr = cidr;
  int prefix = -1;
  if (auto slash = cidr.find('/'); slash != std::string::npos) {
    addr = cidr.substr(0, slash);
    const std::string p = cidr.substr(slash + 1);
    if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string::npos) return false;
    prefix = std::stoi(p);
  }
  Net n{};
  if (inet_pton(AF_INET, addr.c_str(), n.addr) == 1) {
    n.family = AF_INET;
    if (prefix > 32) return false;
    n.prefix = prefix < 0 ? 32 : unsigned(prefix);
  } else if (inet_pton(AF_INET6, addr.c_str(), n.addr) == 1) {
    n.family = AF_INET6;
    if (prefix > 128) return false;
    n.prefix = prefix < 0 ? 128 : unsigned(prefix);
  } else {
    return false;
  }
  nets_.push_back(n);
  return true;
}

bool AllowList::Allows(const sockaddr* peer) const {
  if (nets_.empty()) return true;
  if (peer == nullptr) return false;
  int family = peer->sa_family;
  const uint8_t* a = nullptr;
  if (family == AF_INET) {
    a = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(peer)->sin_addr);
  } else if (family == AF_INET6) {
    a = reinterpret_cast<const sockaddr_in6*>(peer)->sin6_addr.s6_addr;
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, kMapped, 12) == 0) family = AF_INET, a += 12;  // ::ffff:a.b.c.d
  } else {
    return false;
  }
  for (const Net& n : nets_)
    if (n.family == family && PrefixMatch(a, n.addr, n.prefix)) return true;
  return false;
}

}  // namespace ibnbd::transport::core
