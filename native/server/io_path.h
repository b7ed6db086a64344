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

// A regular file on tmpfs/ramfs: READ/WRITE are copied on the IO thread instead of io_uring.
bool IsMemoryBacked(int fd);

// Creates every IO thread's ring now, at the server's start (on those threads): a ring takes
// descriptors, and later, with the process out of them (a flood of connections), the first IO
// of a session would fail. 0 or -errno.
int PrepareIoRings();

}  // namespace ibnbd::server
