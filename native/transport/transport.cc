// Transport selection by name: "tcp" (transport/tcp/) or "rdma" (RTRS, rdma/).
#include "transport/transport.h"

#include <cerrno>

#include "rdma/rdma_transport.h"
#include "transport/tcp/tcp.h"

namespace ibnbd::transport {

std::shared_ptr<ClientSession> ClientSession::Create(const std::string& transport,
                                                     Options options, int* err) {
  if (transport == "tcp") return tcp::CreateClientSession(std::move(options), err);
  if (transport == "rdma") return rdma::CreateRdmaClientSession(std::move(options), err);
  *err = -EPROTONOSUPPORT;
  return nullptr;
}

std::unique_ptr<Server> Server::Create(const std::string& transport, Options options,
                                       ServerHandler* handler, int* err) {
  if (transport == "tcp") return tcp::CreateServer(std::move(options), handler, err);
  if (transport == "rdma") return rdma::CreateRdmaServer(std::move(options), handler, err);
  *err = -EPROTONOSUPPORT;
  return nullptr;
}

}  // namespace ibnbd::transport

namespace ibnbd::transport {
void Respond(ServerIo* io, int err) { io->session->Complete(io, err); }
}  // namespace ibnbd::transport
