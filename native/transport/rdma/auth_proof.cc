#include "transport/rdma/auth_proof.h"

#include <cstring>

#include "transport/rdma/rtrs_wire.h"

namespace ibnbd::rdma {

bool PathProof(const std::string& secret, transport::core::AuthRole role, const uint8_t* client_nonce,
               const uint8_t* server_nonce, const uint8_t* paths_uuid, const uint8_t* sess_uuid,
               const char* pathname, uint8_t* out) {
  wire::AuthTranscript tr;
  memcpy(tr.paths_uuid, paths_uuid, sizeof(tr.paths_uuid));
  memcpy(tr.sess_uuid, sess_uuid, sizeof(tr.sess_uuid));
  memcpy(tr.pathname, pathname, sizeof(tr.pathname));
  return transport::core::ComputeProof(secret, role, client_nonce, server_nonce,
                                       reinterpret_cast<const uint8_t*>(&tr), sizeof(tr), out);
}

}  // namespace ibnbd::rdma
