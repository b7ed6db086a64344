// The server's config file (docs/operations.md, "Config files"): /etc/ibnbd/server.toml unless
// --config names another; a key per command-line option, each value held to the same checks.
import { readConfigFile, type ConfigKey, type ConfigValues } from '../config/config-file.js';
import { DEFAULT_SERVER_CONFIG } from '../config/default-files.js';
import { validateServerOptions, type RawServerOptions } from './options.js';

export const SERVER_CONFIG_KEYS: readonly ConfigKey[] = [
  { key: 'listen', prop: 'listen', type: 'strings' },
  { key: 'dev-search-path', prop: 'devSearchPath', type: 'string' },
  // [export] name = "PATH" or name = { path = "PATH", read-only = true }: the --export options
  { key: 'export', prop: 'export', type: 'table' },
  { key: 'control', prop: 'control', type: 'string' },
  { key: 'transport', prop: 'transport', type: 'string' },
  { key: 'queue-depth', prop: 'queueDepth', type: 'integer' },
  { key: 'max-io-size', prop: 'maxIoSize', type: 'integer' },
  { key: 'io-threads', prop: 'ioThreads', type: 'integer' },
  { key: 'poll-us', prop: 'pollUs', type: 'integer' },
  { key: 'auth-keys', prop: 'authKeys', type: 'string' },
  { key: 'allow', prop: 'allow', type: 'strings' },
  { key: 'max-sessions', prop: 'maxSessions', type: 'integer' },
  { key: 'max-conns-per-session', prop: 'maxConnsPerSession', type: 'integer' },
  { key: 'max-pending-handshakes', prop: 'maxPendingHandshakes', type: 'integer' },
  { key: 'handshake-timeout-ms', prop: 'handshakeTimeoutMs', type: 'integer' },
  { key: 'max-buffer-memory', prop: 'maxBufferMemory', type: 'size' },
  { key: 'max-devices-per-session', prop: 'maxDevicesPerSession', type: 'integer' },
  { key: 'open-timeout-ms', prop: 'openTimeoutMs', type: 'integer' },
  { key: 'metrics', prop: 'metrics', type: 'string' },
  { key: 'log-level', prop: 'logLevel', type: 'string' },
];

/** Each value on its own, as the daemon checks it (a search path stands in for the required one). */
function checkServerValue(prop: string, value: unknown): void {
  validateServerOptions({ devSearchPath: '/', [prop]: value } as RawServerOptions);
}

/** The file's options, or null when the default file is not there. */
export function readServerConfig(file: string | undefined): ConfigValues | null {
  return readConfigFile(file ?? DEFAULT_SERVER_CONFIG, SERVER_CONFIG_KEYS, checkServerValue, file !== undefined);
}
