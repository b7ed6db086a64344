// What a wire (tcp/, rdma/) uses to plug into the transport interface: it registers its two
// factories under its name with IBNBD_TRANSPORT_WIRE in a .cc of its own folder, so the interface
// (transport.cc) includes no wire and adding a wire edits no shared file. A factory that fails
// may say why with SetLastCreateError(); callers read it through LastCreateError().
#pragma once
#include <memory>
#include <string>

#include "transport/transport.h"

namespace ibnbd::transport {

struct Wire {
  const char* name;  // the `transport` argument of ClientSession::Create / Server::Create
  std::shared_ptr<ClientSession> (*create_client)(ClientSession::Options options, int* err);
  std::unique_ptr<Server> (*create_server)(Server::Options options, ServerHandler* handler,
                                           int* err);
};

struct WireRegistration {
  explicit WireRegistration(const Wire& wire);
};

// Records why the running Create* on this thread failed (LastCreateError()).
void SetLastCreateError(std::string msg);

}  // namespace ibnbd::transport

#define IBNBD_TRANSPORT_WIRE(id, ...) \
  static ::ibnbd::transport::WireRegistration ibnbd_transport_wire_##id(::ibnbd::transport::Wire{__VA_ARGS__})
