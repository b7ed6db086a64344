// The test addon (ibnbd_test.node): bindings that only tests and benchmarks use, kept out of the
// addon the daemons load. It links against ibnbd.node and so shares its objects (a
// NativeClientSession made by the product addon can be handed to benchReads). Each file here
// exports its functions through one of these, called in order by testing/addon.cc.
#pragma once
#include <napi.h>

namespace ibnbd::testing {

void InitBufferFenceCheck(Napi::Env env, Napi::Object exports);  // bufferFenceCheck
void InitProtoCodec(Napi::Env env, Napi::Object exports);        // the C++ IBNBD codec
void InitTcpFrames(Napi::Env env, Napi::Object exports);         // the C++ TCP frame codec
void InitTransportBench(Napi::Env env, Napi::Object exports);    // benchReads
void InitSessionCoreCheck(Napi::Env env, Napi::Object exports);  // reconnectorRun, heartbeatTicks
void InitRtrsAuth(Napi::Env env, Napi::Object exports);          // the RDMA authentication proof
void InitLogBurst(Napi::Env env, Napi::Object exports);          // logBurst: lines from a native thread

}  // namespace ibnbd::testing
