// The RDMA transport: RTRS (PROTOCOL.md §2) on rdma-core (librdmacm + libibverbs), so that the
// Linux kernel's rtrs-client/rtrs-server (and rnbd on top) are peers of ours. See
// docs/rdma-transport.md for what is implemented and how it differs from the kernel.
//
// The seam with transport.cc: ClientSession::Create("rdma", …) and Server::Create("rdma", …)
// call these two functions. Both return nullptr with *err = -ENODEV (and log a clear message on
// stderr) when the host has no RDMA device, -EINVAL for bad options.
#pragma once
#include <memory>

#include "transport/transport.h"

namespace ibnbd::rdma {

std::shared_ptr<transport::ClientSession> CreateRdmaClientSession(
    transport::ClientSession::Options options, int* err);

std::unique_ptr<transport::Server> CreateRdmaServer(transport::Server::Options options,
                                                    transport::ServerHandler* handler, int* err);

// The reason the last Create* failed on this thread ("no RDMA device (ibv_get_device_list
// returned 0 devices)", ...), for the JS error message.
const char* LastRdmaError();

}  // namespace ibnbd::rdma
