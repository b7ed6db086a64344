// Session rules both wires apply the same way, written once (with path_choice.h, permits.h and
// liveness.h, the shared session core): how long to wait before each reconnect attempt, and
// which request errors mean "lost with the connection" rather than "the server said no".
#pragma once
#include <cerrno>
#include <cstdint>
#include <string>

namespace ibnbd::transport::core {

// The delay before reconnect attempt `attempt` of a lost path, counted from 0 for the first
// attempt after the loss. While the session has no path, IO waits on it: the first attempt goes
// at once (a restarted server is often back already), then 100 ms doubling up to max_ms, like
// NVMe-oF's reconnect_delay with a short start. While another path still carries the session's
// IO nothing waits on this one, and it is dialled every max_ms as RTRS does (rapid attempts at an
// address that is gone also made soft-RoCE's loopback lose the returning path's CM requests far
// more often: docs/rdma-transport.md, "address removal").
inline uint64_t ReconnectBackoffMs(uint32_t attempt, uint32_t max_ms, bool other_path_up) {
  if (other_path_up) return max_ms;
  if (attempt == 0) return 0;
  uint64_t d = 100;
  for (uint32_t i = 1; i < attempt && d < max_ms; i++) d *= 2;
  return d < max_ms ? d : max_ms;
}

// The error a request completes with when its path went away and no other path could take it
// (nothing of it is known to have been executed or not): the caller may send it again once the
// session is back. -ECONNABORTED stays the error of a session closed on purpose.
constexpr int kLostWithPath = -ENOTCONN;

// What becomes of a request its path lost, at the moment it may be sent again (RDMA: at once,
// the server's buffer fence orders the copies; TCP: once the lost path is fenced): a closed
// session aborts it; else it fails over to another path under the same permit (RTRS); with no
// path up it goes back to its caller as kLostWithPath, and the vhost device holds it.
enum class LostFate { kAbort, kFailover, kHandBack };
inline LostFate FateOfLost(bool session_closed, bool path_available) {
  if (session_closed) return LostFate::kAbort;
  return path_available ? LostFate::kFailover : LostFate::kHandBack;
}
// The completion error of a lost request that is not failed over.
inline int LostError(LostFate f) { return f == LostFate::kAbort ? -ECONNABORTED : kLostWithPath; }

}  // namespace ibnbd::transport::core
