// Fault injection for tests, shared by the TCP and RDMA transports: a delay read from the
// environment that widens a race window a test wants to hit (tests/native/server-stop.test.ts).
#pragma once

namespace ibnbd::transport {

// Sleeps for the milliseconds in the environment variable `name` (1..10000); no-op when unset.
// Creates the file named by IBNBD_FAULT_MARK_FILE, when set, as the sleep begins.
void FaultDelay(const char* name);

}  // namespace ibnbd::transport
