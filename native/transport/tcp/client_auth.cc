// The TCP client's side of authentication (docs/tcp-transport.md, "Authentication";
// docs/security.md). A session with a secret sets the auth flag and a fresh nonce in every
// connection's handshake request; the server must answer with an AUTH_CHALLENGE whose proof
// shows it holds the same secret (else the server is not the one we meant: -EACCES), and the
// client's proof goes back before the handshake response is read. The proof binds both nonces
// and the request (session uuid, name, path, connection, incarnation).
//
// Threads: the connecting thread (ConnectPath), blocking sockets with the attempt's deadline.
#include <cerrno>
#include <cstdio>
#include <vector>

#include "common/log.h"
#include "transport/core/auth.h"
#include "transport/tcp/client_internal.h"
#include "transport/tcp/frames.h"
#include "transport/tcp/net.h"

namespace ibnbd::transport::tcp::client {

int TcpClientSession::AnswerChallenge(int fd, const std::vector<uint8_t>& request, uint64_t deadline_ns) {
  uint8_t b[kAuthChallengeSize];
  // a challenge, or a handshake response (kHandshakeRspSize bytes): a refusal, or a server
  // without keys, which cannot prove anything
  int rc = RecvAllBefore(fd, b, kHandshakeRspSize, deadline_ns);
  if (rc) return rc;
  uint16_t kind = 0;
  if ((rc = PeekServerKind(b, &kind)) != 0) return rc;
  if (kind != kAuthKindChallenge) {
    HandshakeRsp rsp;
    if ((rc = DecodeHandshakeRsp(b, &rsp)) != 0) return rc;
    if (rsp.err != 0) return rsp.err;
    LogMsg(LogLevel::kError, {.component = "tcp-session", .session = opt_.sessname.c_str()},
           "session %s: the server did not authenticate itself (it has no keys?)", opt_.sessname.c_str());
    return -EACCES;
  }
  if ((rc = RecvAllBefore(fd, b + kHandshakeRspSize, kAuthChallengeSize - kHandshakeRspSize, deadline_ns)) != 0)
    return rc;
  AuthChallenge ch;
  if ((rc = DecodeAuthChallenge(b, &ch)) != 0) return rc;
  HandshakeReq req;
  uint16_t name_len = 0;
  if (DecodeHandshakeReqFixed(request.data(), &req, &name_len) != 0 ||
      DecodeHandshakeReqTail(request.data() + kHandshakeReqSize, name_len, &req) != 0)
    return -EINVAL;
  const size_t transcript_len = kHandshakeReqSize + name_len;
  uint8_t expect[kAuthProofLen];
  AuthProof proof;
  if (!core::ComputeProof(opt_.auth_secret, core::AuthRole::kServer, req.client_nonce, ch.server_nonce,
                          request.data(), transcript_len, expect) ||
      !core::ComputeProof(opt_.auth_secret, core::AuthRole::kClient, req.client_nonce, ch.server_nonce,
                          request.data(), transcript_len, proof.client_proof))
    return -EACCES;
  if (!core::ProofsEqual(expect, ch.server_proof)) {
    LogMsg(LogLevel::kError, {.component = "tcp-session", .session = opt_.sessname.c_str()},
           "session %s: the server's proof is wrong: it does not hold this session's secret", opt_.sessname.c_str());
    return -EACCES;
  }
  uint8_t out[kAuthProofSize];
  EncodeAuthProof(proof, out);
  return SendAllBefore(fd, out, sizeof(out), deadline_ns);
}

}  // namespace ibnbd::transport::tcp::client
