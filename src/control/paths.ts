// Where the daemons listen unless told otherwise (--control). /run is root-owned tmpfs: the
// sockets are 0600, so only the daemon's user can command it.
export const DEFAULT_CLIENT_SOCKET = '/run/ibnbd/client.sock';
export const DEFAULT_SERVER_SOCKET = '/run/ibnbd/server.sock';
