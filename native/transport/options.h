// Reading transport options from JS objects (JS validates first; these checks only keep bad
// values from reaching C++ as garbage and name the field in a TypeError/EINVAL).
#pragma once
#include <napi.h>

#include <string>

#include "transport/transport.h"

namespace ibnbd::transport {

Endpoint EndpointFromJs(Napi::Env env, Napi::Value v, const char* what);
uint32_t U32Field(Napi::Object o, const char* key, uint32_t dflt, uint32_t min, uint32_t max);
std::string StringField(Napi::Object o, const char* key, const std::string& dflt);
Napi::Object PathInfoToJs(Napi::Env env, const PathInfo& p);
const char* PathStateName(PathState s);

}  // namespace ibnbd::transport
