// Session authentication primitives (auth.h), on OpenSSL.
#include "transport/core/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <climits>
#include <cstring>

namespace ibnbd::transport::core {
namespace {

constexpr char kServerLabel[] = "ibnbd auth v1 server";
constexpr char kClientLabel[] = "ibnbd auth v1 client";

}  // namespace

bool RandomBytes(uint8_t* out, size_t n) { return n <= INT_MAX && RAND_bytes(out, int(n)) == 1; }

bool ComputeProof(const std::string& secret, AuthRole role, const uint8_t* client_nonce,
                  const uint8_t* server_nonce, const uint8_t* transcript, size_t transcript_len,
                  uint8_t* out) {
  if (secret.empty() || secret.size() > kAuthMaxSecret) return false;
  const char* label = role == AuthRole::kServer ? kServerLabel : kClientLabel;
  std::string msg(label, sizeof(kServerLabel) - 1);
  msg.append(reinterpret_cast<const char*>(client_nonce), kAuthNonceSize);
  msg.append(reinterpret_cast<const char*>(server_nonce), kAuthNonceSize);
  msg.append(reinterpret_cast<const char*>(transcript), transcript_len);
  unsigned int len = 0;
  const unsigned char* r =
      HMAC(EVP_sha256(), secret.data(), int(secret.size()), reinterpret_cast<const unsigned char*>(msg.data()),
           msg.size(), out, &len);
  return r != nullptr && len == kAuthProofSize;
}

bool ProofsEqual(const uint8_t* a, const uint8_t* b) { return CRYPTO_memcmp(a, b, kAuthProofSize) == 0; }

void AuthKeys::Replace(Map keys, std::set<std::string> open, bool required) {
  auto next = std::make_shared<const Snapshot>(Snapshot{std::move(keys), std::move(open)});
  std::lock_guard<std::mutex> lk(mu_);
  snap_ = std::move(next);
  required_ = required;
}

std::shared_ptr<const AuthKeys::Snapshot> AuthKeys::Get() const {
  std::lock_guard<std::mutex> lk(mu_);
  return snap_;
}

bool AuthKeys::required() const {
  std::lock_guard<std::mutex> lk(mu_);
  return required_;
}

std::string AuthKeys::Find(const std::string& sessname) const {
  auto s = Get();
  auto it = s->keys.find(sessname);
  return it == s->keys.end() ? std::string() : it->second;
}

bool AuthKeys::OpenOverRdma(const std::string& sessname) const { return Get()->open.count(sessname) != 0; }

}  // namespace ibnbd::transport::core
