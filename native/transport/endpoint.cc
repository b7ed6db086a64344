#include "transport/endpoint.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>

namespace ibnbd::transport {

namespace {
// An address as written: brackets dropped, the %zone split off (*has_zone: a '%' was there,
// even with nothing after it).
std::string SplitZone(const std::string& addr, std::string* zone, bool* has_zone) {
  std::string a = addr;
  if (a.size() >= 2 && a.front() == '[' && a.back() == ']') a = a.substr(1, a.size() - 2);
  auto pct = a.find('%');
  *has_zone = pct != std::string::npos;
  *zone = *has_zone ? a.substr(pct + 1) : "";
  return *has_zone ? a.substr(0, pct) : a;
}
}  // namespace

int IpToSockaddr(const Endpoint& ep, sockaddr_storage* ss, socklen_t* len) {
  memset(ss, 0, sizeof(*ss));
  std::string zone;
  bool has_zone;
  std::string host = SplitZone(ep.addr, &zone, &has_zone);
  auto* v4 = reinterpret_cast<sockaddr_in*>(ss);
  if (!has_zone && inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(ep.port);
    *len = sizeof(*v4);
    return 0;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(ss);
  if (has_zone) {
    v6->sin6_scope_id = if_nametoindex(zone.c_str());
    if (!v6->sin6_scope_id) return -EINVAL;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(ep.port);
    *len = sizeof(*v6);
    return 0;
  }
  return -EINVAL;
}

int ParseGid(const Endpoint& ep, in6_addr* gid) {
  std::string zone;
  bool has_zone;
  return inet_pton(AF_INET6, SplitZone(ep.addr, &zone, &has_zone).c_str(), gid) == 1 ? 0 : -EINVAL;
}

int GidToIpSockaddr(const Endpoint& ep, const std::string& default_zone, sockaddr_storage* ss,
                    socklen_t* len) {
  std::string zone;
  bool has_zone;
  in6_addr gid;
  std::string text = SplitZone(ep.addr, &zone, &has_zone);
  if (inet_pton(AF_INET6, text.c_str(), &gid) != 1) return -EINVAL;
  bool link_local = IN6_IS_ADDR_LINKLOCAL(&gid);
  if (has_zone && (!link_local || zone.empty())) return -EINVAL;  // a scope only means something there
  if (IN6_IS_ADDR_V4MAPPED(&gid)) {
    char v4[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &gid.s6_addr[12], v4, sizeof(v4));
    return IpToSockaddr({"ip", v4, ep.port}, ss, len);
  }
  if (link_local && zone.empty()) zone = default_zone;
  if (link_local && zone.empty()) return -EDESTADDRREQ;
  return IpToSockaddr({"ip", link_local ? text + "%" + zone : text, ep.port}, ss, len);
}

}  // namespace ibnbd::transport
