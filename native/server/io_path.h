// The server's native IO path: an IBNBD IO message is validated against the session's device
// table and executed with io_uring (one ring per IO thread, its eventfd in that thread's
// EventLoop). Block-device ioctls io_uring lacks (BLKDISCARD, BLKZEROOUT, BLKSECDISCARD) run on
// one helper thread and complete back on the IO thread.
#pragma once
#include "server/device.h"
#include "transport/transport.h"

namespace ibnbd::server {

// Executes io (usr = an IBNBD IO message) and Respond()s it exactly once, with 0 or -errno.
// Must run on an IO thread.
void ExecuteIo(transport::ServerIo* io, SessionDevices* devices);

}  // namespace ibnbd::server
