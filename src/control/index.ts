// The control socket shared by both daemons and the CLI.
export { ControlServer, type ControlHandler, type ControlServerOptions } from './server.js';
export { controlRequest, type ControlRequestOptions } from './client.js';
export { MAX_LINE_BYTES } from './framing.js';
export { DEFAULT_CLIENT_SOCKET, DEFAULT_SERVER_SOCKET } from './paths.js';
export type { ControlRequest, ControlResult } from './protocol.js';
