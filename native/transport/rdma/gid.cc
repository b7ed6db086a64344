#include "transport/rdma/gid.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <infiniband/ib.h>
#include <rdma/rdma_cma.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include "transport/endpoint.h"

namespace ibnbd::rdma {
namespace {

const char kSysIb[] = "/sys/class/infiniband";

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') out.emplace_back(e->d_name);
  closedir(d);
  return out;
}

std::string FirstLine(const std::string& path) {
  std::ifstream f(path);
  std::string l;
  std::getline(f, l);
  return l;
}

// ports/<p>/link_layer reads "InfiniBand" or "Ethernet"
bool AnyPortWithLinkLayer(const char* ll) {
  for (auto& dev : Entries(kSysIb))
    for (auto& port : Entries(std::string(kSysIb) + "/" + dev + "/ports"))
      if (FirstLine(std::string(kSysIb) + "/" + dev + "/ports/" + port + "/link_layer") == ll)
        return true;
  return false;
}

std::string GidString(const in6_addr& g) {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET6, &g, buf, sizeof(buf));
  return buf;
}

int AfIb(const in6_addr& gid, uint16_t port, sockaddr_storage* ss, socklen_t* len) {
  static_assert(sizeof(sockaddr_ib) <= sizeof(sockaddr_storage));
  memset(ss, 0, sizeof(*ss));
  auto* ib = reinterpret_cast<sockaddr_ib*>(ss);
  ib->sib_family = AF_IB;
  memcpy(&ib->sib_addr, &gid, sizeof(gid));
  ib->sib_pkey = htobe16(0xffff);
  // what the kernel's rtrs-server listens on: the IB port space with the RTRS port
  ib->sib_sid = htobe64(RDMA_IB_PS_IB | port);
  ib->sib_sid_mask = htobe64(RDMA_IB_IP_PS_MASK | RDMA_IB_IP_PORT_MASK);
  *len = sizeof(*ib);
  return 0;
}

}  // namespace

bool FindLocalGid(const in6_addr& gid, LocalGid* out) {
  for (auto& dev : Entries(kSysIb)) {
    std::string ports = std::string(kSysIb) + "/" + dev + "/ports";
    for (auto& port : Entries(ports)) {
      std::string base = ports + "/" + port;
      for (auto& idx : Entries(base + "/gids")) {
        in6_addr g;
        // unused entries read as ::, which no endpoint names
        if (inet_pton(AF_INET6, FirstLine(base + "/gids/" + idx).c_str(), &g) != 1 ||
            memcmp(&g, &gid, sizeof(g)) != 0)
          continue;
        out->device = dev;
        out->port = static_cast<unsigned>(strtoul(port.c_str(), nullptr, 10));
        out->index = static_cast<unsigned>(strtoul(idx.c_str(), nullptr, 10));
        out->link_layer = FirstLine(base + "/link_layer");
        out->netdev = FirstLine(base + "/gid_attrs/ndevs/" + idx);
        return true;
      }
    }
  }
  return false;
}

int ResolveGid(const transport::Endpoint& ep, sockaddr_storage* ss, socklen_t* len,
               std::string* why) {
  in6_addr gid;
  if (transport::ParseGid(ep, &gid)) {
    *why = "'" + ep.addr + "' is not a GID";
    return -EINVAL;
  }
  if (Entries(kSysIb).empty()) {
    *why = "gid:" + ep.addr + " needs an RDMA device and this host has none";
    return -ENODEV;
  }
  LocalGid local;
  bool is_local = FindLocalGid(gid, &local);
  bool ip_shaped = IN6_IS_ADDR_V4MAPPED(&gid) || ep.addr.find('%') != std::string::npos;
  if (is_local ? local.link_layer == "InfiniBand"
               : !ip_shaped && AnyPortWithLinkLayer("InfiniBand"))
    return AfIb(gid, ep.port, ss, len);
  // RoCE / iWARP: the GID's IP form
  std::string zone = is_local ? local.netdev : "";
  int rc = transport::GidToIpSockaddr(ep, zone, ss, len);
  if (rc == -EDESTADDRREQ) {
    if (is_local) {
      *why = "GID " + GidString(gid) + " of " + local.device + " port " +
             std::to_string(local.port) + " has no netdev to reach it through";
      return -ENETUNREACH;
    }
    *why = "link-local GID " + GidString(gid) +
           " is not on this host and RoCE needs its interface: give it as gid:" +
           GidString(gid) + "%<netdev>";
    return -EINVAL;
  }
  if (rc) *why = "bad GID '" + ep.addr + "' (a %<netdev> scope only on a link-local fe80:: GID, naming an existing netdev)";
  return rc;
}

}  // namespace ibnbd::rdma
