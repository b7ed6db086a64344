// The interface's out-of-line parts: the registry of wires behind ClientSession::Create and
// Server::Create, the per-thread reason of the last failed Create, and Respond().
#include "transport/transport.h"

#include <cerrno>
#include <cstring>
#include <vector>

#include "transport/wire.h"

namespace ibnbd::transport {
namespace {

// Function-local so that registrations from other translation units' static initializers
// always find it constructed.
std::vector<Wire>& Wires() {
  static std::vector<Wire> wires;
  return wires;
}

const Wire* FindWire(const std::string& name) {
  for (const Wire& w : Wires())
    if (name == w.name) return &w;
  return nullptr;
}

thread_local std::string last_create_error;

}  // namespace

WireRegistration::WireRegistration(const Wire& wire) { Wires().push_back(wire); }

void SetLastCreateError(std::string msg) { last_create_error = std::move(msg); }

const char* LastCreateError() { return last_create_error.c_str(); }

std::shared_ptr<ClientSession> ClientSession::Create(const std::string& transport,
                                                     Options options, int* err) {
  last_create_error.clear();
  const Wire* w = FindWire(transport);
  if (!w) {
    *err = -EPROTONOSUPPORT;
    return nullptr;
  }
  return w->create_client(std::move(options), err);
}

std::unique_ptr<Server> Server::Create(const std::string& transport, Options options,
                                       ServerHandler* handler, int* err) {
  last_create_error.clear();
  const Wire* w = FindWire(transport);
  if (!w) {
    *err = -EPROTONOSUPPORT;
    return nullptr;
  }
  return w->create_server(std::move(options), handler, err);
}

void Respond(ServerIo* io, int err) { io->session->Complete(io, err); }

}  // namespace ibnbd::transport
