// Registers the TCP wire ("tcp") with the transport interface.
#include "transport/tcp/tcp.h"
#include "transport/wire.h"

IBNBD_TRANSPORT_WIRE(tcp, "tcp", ibnbd::transport::tcp::CreateClientSession,
                     ibnbd::transport::tcp::CreateServer);
