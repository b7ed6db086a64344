#include "common/errors.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace ibnbd {

std::string ErrnoName(int err) {
  if (err < 0) err = -err;
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
  return "E" + std::to_string(err);
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& message) {
  if (err < 0) err = -err;
  Napi::Error e = Napi::Error::New(env, ErrnoName(err) + ": " + message);
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, -err));
  return e;
}

void ThrowErrno(Napi::Env env, int err, const std::string& message) {
  throw ErrnoError(env, err, message);
}

}  // namespace ibnbd
