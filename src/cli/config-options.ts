// A daemon's options from its config file and its command line: the command line wins, key by key
// (docs/operations.md, "Config files"). Commander says where each value came from: only values
// typed on the command line override the file; commander's own defaults never do.
import type { Command } from 'commander';
import type { ConfigKey, ConfigValues } from '../config/config-file.js';
import { LOG_LEVELS } from '../log-levels.js';

/** The options given on the command line, by option property. */
export function commandLineValues(cmd: Command, keys: readonly ConfigKey[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const opts = cmd.opts();
  for (const { prop } of keys) if (cmd.getOptionValueSource(prop) === 'cli') out[prop] = opts[prop];
  return out;
}

/** The file's values under the command line's. */
export function mergeOptions(file: ConfigValues | null, cli: Record<string, unknown>): Record<string, unknown> {
  return { ...(file?.values ?? {}), ...cli };
}

/** --poll-us of both daemons (key poll-us in their config files); the range is the daemon's to check. */
export const POLL_US_OPTION = [
  '--poll-us <us>',
  'after IO, each IO thread polls for new work for up to this many microseconds (0..1000) before it sleeps: lower latency for CPU time; 0 = off (default); SIGHUP re-reads it from the config file',
] as const;

/** --log-level of both daemons (key log-level in their config files). */
export const LOG_LEVEL_OPTION = [
  '--log-level <level>',
  `${LOG_LEVELS.join(', ')} (default info): lines below it are not written; SIGHUP re-reads it from the config file`,
] as const;
