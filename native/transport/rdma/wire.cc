// Registers the RDMA wire ("rdma": RTRS on rdma-core) with the transport interface.
#include "transport/rdma/rdma.h"
#include "transport/wire.h"

IBNBD_TRANSPORT_WIRE(rdma, "rdma", ibnbd::rdma::CreateRdmaClientSession,
                     ibnbd::rdma::CreateRdmaServer);
