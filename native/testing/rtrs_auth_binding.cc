// rtrsAuth: the RDMA authentication proof and layout constants (transport/rdma/rtrs_wire.h,
// auth_proof.h) exposed to JS so tests/native/rtrs-auth.test.ts can hold them to golden vectors
// computed outside the project (test-only).
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "testing/testing.h"
#include "transport/rdma/auth_proof.h"
#include "transport/rdma/rtrs_wire.h"

namespace ibnbd::rdma {
namespace {

Napi::Buffer<uint8_t> Bytes(const Napi::CallbackInfo& info, size_t i, size_t len, const char* what) {
  if (info.Length() <= i || !info[i].IsBuffer() || (len && info[i].As<Napi::Buffer<uint8_t>>().Length() != len))
    ThrowErrno(info.Env(), EINVAL, std::string("pathProof: ") + what);
  return info[i].As<Napi::Buffer<uint8_t>>();
}

// pathProof(secret, role, clientNonce, serverNonce, pathsUuid, sessUuid, sessname)
Napi::Value PathProofJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto secret = Bytes(info, 0, 0, "secret");
  if (info.Length() < 7 || !info[1].IsString() || !info[6].IsString())
    ThrowErrno(env, EINVAL, "pathProof(secret, role, clientNonce, serverNonce, pathsUuid, sessUuid, sessname)");
  std::string role = info[1].As<Napi::String>();
  if (role != "server" && role != "client") ThrowErrno(env, EINVAL, "pathProof: role server or client");
  auto cn = Bytes(info, 2, 32, "32-byte clientNonce"), sn = Bytes(info, 3, 32, "32-byte serverNonce");
  auto pu = Bytes(info, 4, 16, "16-byte pathsUuid"), su = Bytes(info, 5, 16, "16-byte sessUuid");
  std::string name = info[6].As<Napi::String>();
  wire::InfoReq req = {};
  if (name.size() >= sizeof(req.pathname)) ThrowErrno(env, EINVAL, "pathProof: sessname too long");
  memcpy(req.pathname, name.data(), name.size());  // as the info request carries it
  uint8_t out[transport::core::kAuthProofSize];
  if (!PathProof(std::string(reinterpret_cast<const char*>(secret.Data()), secret.Length()),
                 role == "server" ? transport::core::AuthRole::kServer : transport::core::AuthRole::kClient,
                 cn.Data(), sn.Data(), pu.Data(), su.Data(), req.pathname, out))
    ThrowErrno(env, EIO, "pathProof failed");
  return Napi::Buffer<uint8_t>::Copy(env, out, sizeof(out));
}

Napi::Value LayoutJs(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("connReqFlagsOffset", offsetof(wire::ConnReq, flags));
  o.Set("authConnBit", wire::kAuthConn);
  o.Set("knowsRefusalBit", wire::kKnowsRefusal);
  o.Set("connRspFlagsOffset", offsetof(wire::ConnRsp, flags));
  o.Set("connRspReservedOffset", offsetof(wire::ConnRsp, reserved));
  o.Set("flagAuth", wire::kFlagAuth);
  o.Set("infoReqSize", sizeof(wire::InfoReq));
  o.Set("authTailSize", sizeof(wire::AuthTail));
  o.Set("transcriptSize", sizeof(wire::AuthTranscript));
  o.Set("serverProofSize", wire::kServerProofSize);
  o.Set("infoRspAuthFailed", wire::kInfoRspAuthFailed);
  return o;
}

}  // namespace
}  // namespace ibnbd::rdma

void ibnbd::testing::InitRtrsAuth(Napi::Env env, Napi::Object exports) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("pathProof", Napi::Function::New(env, ibnbd::rdma::PathProofJs));
  o.Set("layout", Napi::Function::New(env, ibnbd::rdma::LayoutJs));
  exports.Set("rtrsAuth", o);
}
