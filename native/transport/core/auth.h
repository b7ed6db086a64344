// Session authentication, the primitives both sides of a wire use (docs/security.md): a secret
// per session name, fresh nonces from both sides, and HMAC-SHA256 proofs over a transcript that
// names the session (its uuid, name, path and connection), from OpenSSL (the copy Node carries,
// whose symbols the addon resolves against the running node binary). Nothing here is
// hand-written cryptography: HMAC, the random bytes and the constant-time compare are OpenSSL's.
//
// A proof is HMAC-SHA256(secret, label || client_nonce || server_nonce || transcript); the two
// labels keep a server's proof from ever serving as a client's, and the fresh server nonce makes
// a captured client proof worthless on the next connection.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace ibnbd::transport::core {

constexpr size_t kAuthNonceSize = 32;
constexpr size_t kAuthProofSize = 32;
constexpr size_t kAuthMinSecret = 32;
constexpr size_t kAuthMaxSecret = 1024;

using Nonce = uint8_t[kAuthNonceSize];
using Proof = uint8_t[kAuthProofSize];

enum class AuthRole { kServer, kClient };

// Fills n bytes from OpenSSL's CSPRNG; false when it has none to give.
bool RandomBytes(uint8_t* out, size_t n);

// The proof of `role` for this exchange; false if OpenSSL failed.
bool ComputeProof(const std::string& secret, AuthRole role, const uint8_t* client_nonce,
                  const uint8_t* server_nonce, const uint8_t* transcript, size_t transcript_len,
                  uint8_t* out);

// Constant time.
bool ProofsEqual(const uint8_t* a, const uint8_t* b);

// The server's secrets by session name, replaced whole on a reload (SIGHUP) while handshakes
// read it: a handshake keeps the snapshot it started with. `open` names the sessions the keys
// file lets in without a proof over RDMA, for the kernel's RNBD client, which cannot give one.
class AuthKeys {
 public:
  using Map = std::map<std::string, std::string>;
  void Replace(Map keys, std::set<std::string> open, bool required);
  // Whether sessions must authenticate at all (a keys file was given).
  bool required() const;
  // The secret of a name, or empty.
  std::string Find(const std::string& sessname) const;
  bool OpenOverRdma(const std::string& sessname) const;

 private:
  struct Snapshot {
    Map keys;
    std::set<std::string> open;
  };
  std::shared_ptr<const Snapshot> Get() const;
  mutable std::mutex mu_;
  std::shared_ptr<const Snapshot> snap_ = std::make_shared<Snapshot>();
  bool required_ = false;
};

}  // namespace ibnbd::transport::core
