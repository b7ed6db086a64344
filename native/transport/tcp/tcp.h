// Factories of the TCP transport, called by ClientSession::Create / Server::Create.
#pragma once
#include <memory>

#include "transport/transport.h"

namespace ibnbd::transport::tcp {

constexpr size_t kMaxPaths = 128;  // RTRS MAX_PATHS_NUM

std::shared_ptr<ClientSession> CreateClientSession(ClientSession::Options options, int* err);
std::unique_ptr<Server> CreateServer(Server::Options options, ServerHandler* handler, int* err);

}  // namespace ibnbd::transport::tcp
