// Transport selection by name. "rdma" is built in native/rdma/ by another change; until it
// registers itself here the name is known but the device is not.
#include "transport/transport.h"

#include <cerrno>

#include "transport/tcp/tcp.h"

namespace ibnbd::transport {

std::shared_ptr<ClientSession> ClientSession::Create(const std::string& transport,
                                                     Options options, int* err) {
  if (transport == "tcp") return tcp::CreateClientSession(std::move(options), err);
  *err = transport == "rdma" ? -ENODEV : -EPROTONOSUPPORT;
  return nullptr;
}

std::unique_ptr<Server> Server::Create(const std::string& transport, Options options,
                                       ServerHandler* handler, int* err) {
  if (transport == "tcp") return tcp::CreateServer(std::move(options), handler, err);
  *err = transport == "rdma" ? -ENODEV : -EPROTONOSUPPORT;
  return nullptr;
}

}  // namespace ibnbd::transport

namespace ibnbd::transport {
void Respond(ServerIo* io, int err) { io->session->Complete(io, err); }
}  // namespace ibnbd::transport
