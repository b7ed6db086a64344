// The JS face of the transport (NativeClientSession, NativeServer), and the one accessor other
// native components need: the vhost-user-blk devices are handed a NativeClientSession object by
// JS and submit their IO to the C++ session behind it, without going through JS per request.
#pragma once
#include <napi.h>

#include <memory>

#include "transport/transport.h"

namespace ibnbd::transport {

// The session behind a NativeClientSession JS object. Throws a JS TypeError (C++ exception,
// NAPI_CPP_EXCEPTIONS) when value is not one, and ENOTCONN when that session was closed.
// The returned pointer keeps the session alive after the JS object is collected.
std::shared_ptr<ClientSession> UnwrapClientSession(Napi::Value value);

}  // namespace ibnbd::transport
