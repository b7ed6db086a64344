// The JS face of an IoSnapshot (common/io_metrics.h), one shape for the client's vhost devices
// and the server's devices so that src/metrics/ reads both with the same code.
#pragma once
#include <napi.h>

#include "common/io_metrics.h"

namespace ibnbd {

// { read: {requests, bytes, errors: {io, invalid, unsupported, transport}, latencySumSeconds,
//   latencyBuckets: [counts, not cumulative, the last one past the largest bound]}, write: …,
//   latencyBoundsSeconds: [8e-6, 1.6e-5, …] }
Napi::Object IoSnapshotToJs(Napi::Env env, const IoSnapshot& s);

}  // namespace ibnbd
