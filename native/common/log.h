// The one way native code logs (docs/operations.md, "Logs"). A daemon registers a sink
// (`setLogSink`, src/backend/native-log.ts) and every line reaches its pino logger, with its level
// and the session/device/path it is about, as one JSON line among the daemon's own. Without a
// sink (the native test tier loads the addon alone) lines go to stderr as plain text.
//
// LogMsg may be called from any thread, IO threads included: it formats into a fixed buffer on
// the caller's stack, copies it into a bounded ring under a short lock and wakes the JS thread.
// It never blocks on JS and never allocates; a full ring drops the line and counts it, and the
// next line delivered says how many were dropped.
#pragma once

namespace ibnbd {

// pino's numbers, so the JS side passes them through unchanged.
enum class LogLevel : int { kTrace = 10, kDebug = 20, kInfo = 30, kWarn = 40, kError = 50 };

// What a line is about; null fields are left out. `component` names the part of the addon
// ("tcp-server", "rdma-session", "vhost-blk", ...): it replaces the old "ibnbd: tcp server:"
// prefixes of the text.
struct LogFields {
  const char* component;
  const char* session = nullptr;
  const char* device = nullptr;
  const char* path = nullptr;
};

// Below the daemon's --log-level: formatting and queueing are skipped altogether.
bool LogEnabled(LogLevel level);

void LogMsg(LogLevel level, const LogFields& fields, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

}  // namespace ibnbd
