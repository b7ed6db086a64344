// Fault injection for tests, shared by the TCP and RDMA transports: a delay read from the
// environment that widens a race window a test wants to hit (tests/native/server-stop.test.ts).
#pragma once
#include <cstddef>
#include <cstdint>

namespace ibnbd::transport {

// Sleeps for the milliseconds in the environment variable `name` (1..10000); no-op when unset.
// Creates the file named by IBNBD_FAULT_MARK_FILE, when set, as the sleep begins.
void FaultDelay(const char* name);

// IBNBD_FAULT_STALL_WRITE="<byte offset>:<ms>": true (once per process) for the first WRITE at
// that offset, which the server then runs that many ms late, in the background (a write stalled
// in the server while its path is lost: tests/daemons/fault-fence.test.ts). Creates
// IBNBD_FAULT_MARK_FILE, when set, as the stall begins; *ms gets the delay.
bool FaultStallWrite(uint64_t offset, unsigned* ms);

// IBNBD_FAULT_REPLAY_AUTH="<file>": a client's authentication message (`len` bytes at `msg`) is
// recorded in that file the first time and, from then on, replaced by the recording: a replay of
// a handshake captured from a good one (tests/rdma/rdma-daemons.test.ts, I). False when not set.
bool FaultReplayAuth(uint8_t* msg, size_t len);

}  // namespace ibnbd::transport
