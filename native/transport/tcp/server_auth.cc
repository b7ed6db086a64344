// Authentication of a TCP connection by the server (docs/tcp-transport.md, "Authentication";
// docs/security.md). With keys required, a complete handshake request gets an AUTH_CHALLENGE:
// the server's fresh nonce and its proof, so the client learns it talks to a holder of the
// secret; the client's proof must follow before the server looks at sessions at all, so a
// client without the secret never creates, joins or squats a session, and nothing is opened.
// A request for a name without a secret is challenged like any other (with a random secret no
// proof can match): the refusal is the same EACCES, whichever part was wrong.
// Without keys the server handshakes as before; a client that asked for authentication then gets
// a plain response and refuses it itself.
//
// Threads: loop 0, like every pending connection (server.cc).
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "transport/core/auth.h"
#include "transport/tcp/net.h"
#include "transport/tcp/server_internal.h"

namespace ibnbd::transport::tcp::server {

void TcpServer::Authenticate(Pending* p, HandshakeReq& req, uint16_t sessname_len) {
  const core::AuthKeys* keys = opt_.auth.get();
  if (keys == nullptr || !keys->required()) return Handshake(p, req);
  if (!(req.flags & kHandshakeFlagAuth))
    return Reject(p, -EACCES, "authentication failed: session '" + req.sessname + "' offered no proof");
  std::string secret = keys->Find(req.sessname);
  if (secret.empty()) {
    secret.resize(core::kAuthMinSecret);
    if (!core::RandomBytes(reinterpret_cast<uint8_t*>(secret.data()), secret.size()))
      return Reject(p, -EACCES, "no random bytes for a challenge");
  }
  AuthChallenge ch;
  const uint8_t* transcript = p->buf;  // the request as sent, without the nonce
  const size_t transcript_len = kHandshakeReqSize + sessname_len;
  if (!core::RandomBytes(ch.server_nonce, sizeof(ch.server_nonce)) ||
      !core::ComputeProof(secret, core::AuthRole::kServer, req.client_nonce, ch.server_nonce, transcript,
                          transcript_len, ch.server_proof) ||
      !core::ComputeProof(secret, core::AuthRole::kClient, req.client_nonce, ch.server_nonce, transcript,
                          transcript_len, p->expect))
    return Reject(p, -EACCES, "cannot compute a challenge");
  uint8_t b[kAuthChallengeSize];
  EncodeAuthChallenge(ch, b);
  // the first bytes on a fresh socket: they fit its send buffer, or the peer is not worth waiting for
  if (send(p->fd, b, sizeof(b), MSG_NOSIGNAL | MSG_DONTWAIT) != ssize_t(sizeof(b))) return ClosePending(p->fd);
  p->req = req;
  p->awaiting_proof = true;
  p->have = 0;
  p->need = kAuthProofSize;
}

void TcpServer::CheckProof(Pending* p) {
  AuthProof proof;
  if (DecodeAuthProof(p->buf, &proof) != 0)
    return Reject(p, -EACCES, "authentication failed: malformed proof for session '" + p->req.sessname + "'");
  if (!core::ProofsEqual(proof.client_proof, p->expect))
    return Reject(p, -EACCES, "authentication failed for session '" + p->req.sessname + "'");
  p->awaiting_proof = false;
  HandshakeReq req = p->req;
  Handshake(p, req);
}

}  // namespace ibnbd::transport::tcp::server
