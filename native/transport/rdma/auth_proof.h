// The proofs of session authentication over RDMA between our own daemons (rtrs_wire.h has where
// they travel; docs/rdma-transport.md, "Authentication"): core/auth.h's HMAC-SHA256 over both
// nonces and the path's AuthTranscript. The one place client and server build that transcript.
#pragma once
#include <cstdint>
#include <string>

#include "transport/core/auth.h"

namespace ibnbd::rdma {

// The proof of `role` for a path: paths_uuid names the session, sess_uuid the path, pathname the
// 255-byte name field of its info request (NUL-padded). False if OpenSSL failed.
bool PathProof(const std::string& secret, transport::core::AuthRole role, const uint8_t* client_nonce,
               const uint8_t* server_nonce, const uint8_t* paths_uuid, const uint8_t* sess_uuid,
               const char* pathname, uint8_t* out);

}  // namespace ibnbd::rdma
