// Errors crossing into JS carry a stable code: the errno name (EINVAL, ENOENT, EPROTO, ...).
// src/errors.ts turns them into IbnbdError instances with the same code.
#pragma once
#include <napi.h>
#include <string>

namespace ibnbd {

// "EINVAL" for EINVAL; "E<number>" for anything glibc does not name.
std::string ErrnoName(int err);

// A JS Error whose .code is ErrnoName(err) and .errno is -err (Node's convention).
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& message);

// Throws ErrnoError as a C++ exception (NAPI_CPP_EXCEPTIONS), so binding code can just return.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const std::string& message);

}  // namespace ibnbd
