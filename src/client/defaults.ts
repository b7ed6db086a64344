// The client daemon's defaults, apart from the daemon (src/client/daemon.ts): `ibnbd client
// --help` prints them, and the CLI's other commands load none of the daemon's modules.
import { RECONNECT_DEFAULTS } from '../proto/map-string.js';

/** --admin-timeout's range (s). */
export const ADMIN_TIMEOUT_MAX = 3600;

export const CLIENT_DEFAULTS = {
  control: '/run/ibnbd/client.sock',
  runDir: '/run/ibnbd',
  stateDir: '/var/lib/ibnbd/client',
  ioThreads: 1,
  pollUs: 0,
  reconnectDelayMs: RECONNECT_DEFAULTS.reconnectDelay * 1000,
  maxReconnectAttempts: -1,
  ctrlLossTmo: RECONNECT_DEFAULTS.ctrlLossTmo,
  fastIoFailTmo: RECONNECT_DEFAULTS.fastIoFailTmo,
  ioTimeout: RECONNECT_DEFAULTS.ioTimeout,
  adminTimeout: 30,
} as const;
