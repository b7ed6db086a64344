// Respond() belongs to no single transport: each one stores its own answer function in the
// ServerIo it hands to the handler, so the IBNBD server layer stays transport-agnostic.
#include "transport/transport.h"

namespace ibnbd::transport {

void Respond(ServerIo* io, int err) { io->respond(io, err); }

}  // namespace ibnbd::transport
