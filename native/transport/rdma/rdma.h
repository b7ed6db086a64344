// The RDMA wire: RTRS (docs/protocol.md, "RTRS transport"; Linux
// drivers/infiniband/ulp/rtrs/rtrs-pri.h) on rdma-core (librdmacm + libibverbs), so that the Linux
// kernel's rtrs-client/rtrs-server (and rnbd on top) are peers of ours. docs/rdma-transport.md
// says what is implemented and how it differs from the kernel. The client: client_session.cc,
// client_path.cc, client_io.cc; the server: server_session.cc, server_path.cc.
//
// The two factories behind ClientSession::Create("rdma", …) and Server::Create("rdma", …),
// registered by wire.cc. Both return nullptr with *err = -ENODEV when the host has no RDMA
// device, -EINVAL for bad options, the reason recorded for transport::LastCreateError().
#pragma once
#include <memory>

#include "transport/transport.h"

namespace ibnbd::rdma {

std::shared_ptr<transport::ClientSession> CreateRdmaClientSession(
    transport::ClientSession::Options options, int* err);

std::unique_ptr<transport::Server> CreateRdmaServer(transport::Server::Options options,
                                                    transport::ServerHandler* handler, int* err);

}  // namespace ibnbd::rdma
