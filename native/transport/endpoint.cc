#include "transport/endpoint.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>

namespace ibnbd::transport {

int IpToSockaddr(const Endpoint& ep, sockaddr_storage* ss, socklen_t* len) {
  memset(ss, 0, sizeof(*ss));
  std::string a = ep.addr;
  if (a.size() >= 2 && a.front() == '[' && a.back() == ']') a = a.substr(1, a.size() - 2);
  auto* v4 = reinterpret_cast<sockaddr_in*>(ss);
  if (inet_pton(AF_INET, a.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(ep.port);
    *len = sizeof(*v4);
    return 0;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(ss);
  std::string host = a;
  auto pct = a.find('%');
  if (pct != std::string::npos) {
    host = a.substr(0, pct);
    v6->sin6_scope_id = if_nametoindex(a.substr(pct + 1).c_str());
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

}  // namespace ibnbd::transport
