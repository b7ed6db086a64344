// How a session reaches its server, in the words both the map string (src/proto/map-string.ts)
// and the native transport (src/backend/transport.ts) use: the wire, the paths and the multipath
// policy. Described once here so a parsed map request can be handed to the transport as it is.

export type TransportKind = 'tcp' | 'rdma';
export type MpPolicy = 'round-robin' | 'min-inflight' | 'min-latency';

export interface Endpoint {
  kind: 'ip' | 'gid';
  /** Textual address without brackets: IPv4, IPv6 (may carry a %zone) or a GID in IPv6 form. */
  addr: string;
  /** Destination: the RTRS port (default 1234). Source: always 0, the kernel picks the port. */
  port: number;
}

/** One RTRS path: an optional source address and the server's address. */
export interface PathSpec {
  src?: Endpoint;
  dst: Endpoint;
}
