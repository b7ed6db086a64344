// The N-API glue of the transport, one file for both wires: NativeClientSession and
// configureIoThreads (binding.cc), the readers of transport options from JS objects that the
// server binding shares, and the one accessor other native components need: the vhost-user-blk
// devices are handed a NativeClientSession object by JS and submit their IO to the C++ session
// behind it, without going through JS per request.
#pragma once
#include <napi.h>

#include <memory>
#include <string>

#include "transport/transport.h"

namespace ibnbd::transport {

// The session behind a NativeClientSession JS object. Throws a JS TypeError (C++ exception,
// NAPI_CPP_EXCEPTIONS) when value is not one, and ENOTCONN when that session was closed.
// The returned pointer keeps the session alive after the JS object is collected.
std::shared_ptr<ClientSession> UnwrapClientSession(Napi::Value value);

// Reading transport options from JS objects (JS validates first; these checks only keep bad
// values from reaching C++ as garbage and name the field in a TypeError/EINVAL).
Endpoint EndpointFromJs(Napi::Env env, Napi::Value v, const char* what);
uint32_t U32Field(Napi::Object o, const char* key, uint32_t dflt, uint32_t min, uint32_t max);
std::string StringField(Napi::Object o, const char* key, const std::string& dflt);
Napi::Object PathInfoToJs(Napi::Env env, const PathInfo& p);
const char* PathStateName(PathState s);

}  // namespace ibnbd::transport
