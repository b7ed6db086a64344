#include "common/io_metrics_js.h"

namespace ibnbd {

Napi::Object IoSnapshotToJs(Napi::Env env, const IoSnapshot& s) {
  Napi::Object out = Napi::Object::New(env);
  for (unsigned i = 0; i < kMetricOps; i++) {
    const IoOpSnapshot& o = s.ops[i];
    Napi::Object op = Napi::Object::New(env);
    // doubles: exact up to 2^53, decades of IO at any rate this path reaches
    op.Set("requests", double(o.requests));
    op.Set("bytes", double(o.bytes));
    Napi::Object errors = Napi::Object::New(env);
    for (unsigned k = 0; k < kErrorKinds; k++) errors.Set(kErrorKindNames[k], double(o.errors[k]));
    op.Set("errors", errors);
    op.Set("latencySumSeconds", double(o.latency_ns_sum) / 1e9);
    Napi::Array buckets = Napi::Array::New(env, kLatencyBounds + 1);
    for (unsigned b = 0; b <= kLatencyBounds; b++) buckets[b] = double(o.buckets[b]);
    op.Set("latencyBuckets", buckets);
    out.Set(kMetricOpNames[i], op);
  }
  // the bounds travel with the counts so that the JS side never restates them
  Napi::Array bounds = Napi::Array::New(env, kLatencyBounds);
  for (unsigned b = 0; b < kLatencyBounds; b++) bounds[b] = double(kLatencyFirstBoundUs << b) / 1e6;
  out.Set("latencyBoundsSeconds", bounds);
  return out;
}

}  // namespace ibnbd
