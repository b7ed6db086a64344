// The client daemon's config file (docs/operations.md, "Config files"): /etc/ibnbd/client.toml
// unless --config names another; a key per command-line option, each value held to the same checks.
import { readConfigFile, type ConfigKey, type ConfigValues } from '../config/config-file.js';
import { DEFAULT_CLIENT_CONFIG } from '../config/default-files.js';
import { validateClientOptions, type ClientDaemonOptions } from './daemon.js';

export const CLIENT_CONFIG_KEYS: readonly ConfigKey[] = [
  { key: 'control', prop: 'control', type: 'string' },
  { key: 'run-dir', prop: 'runDir', type: 'string' },
  { key: 'state-dir', prop: 'stateDir', type: 'string' },
  { key: 'io-threads', prop: 'ioThreads', type: 'integer' },
  { key: 'poll-us', prop: 'pollUs', type: 'integer' },
  { key: 'heartbeat-ms', prop: 'heartbeatMs', type: 'integer' },
  { key: 'heartbeat-missed-max', prop: 'heartbeatMissedMax', type: 'integer' },
  { key: 'reconnect-delay', prop: 'reconnectDelay', type: 'integer' },
  { key: 'reconnect-delay-ms', prop: 'reconnectDelayMs', type: 'integer' },
  { key: 'max-reconnect-attempts', prop: 'maxReconnectAttempts', type: 'integer' },
  { key: 'ctrl-loss-tmo', prop: 'ctrlLossTmo', type: 'integer' },
  { key: 'fast-io-fail-tmo', prop: 'fastIoFailTmo', type: 'integer' },
  { key: 'io-timeout', prop: 'ioTimeout', type: 'integer' },
  { key: 'admin-timeout', prop: 'adminTimeout', type: 'integer' },
  { key: 'auth-keys', prop: 'authKeys', type: 'string' },
  { key: 'metrics', prop: 'metrics', type: 'string' },
  { key: 'log-level', prop: 'logLevel', type: 'string' },
];

function checkClientValue(prop: string, value: unknown): void {
  validateClientOptions({ [prop]: value } as Partial<ClientDaemonOptions>);
}

/** The file's options, or null when the default file is not there. */
export function readClientConfig(file: string | undefined): ConfigValues | null {
  return readConfigFile(file ?? DEFAULT_CLIENT_CONFIG, CLIENT_CONFIG_KEYS, checkClientValue, file !== undefined);
}
