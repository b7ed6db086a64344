// SIGHUP's reading of a config file, shared by both daemons (docs/operations.md, "Config files"):
// what changes live (the log level here; the keys file, each daemon on its own) and what is named
// as taking effect at the next restart.
import { reloadLogLevel, type DaemonLogger } from '../logger.js';

/** Applied by SIGHUP without a restart. */
const LIVE_OPTIONS: ReadonlySet<string> = new Set(['authKeys', 'logLevel']);

/** "maxSessions" → "max-sessions", the option's (and the config key's) name. */
function optionName(prop: string): string {
  return prop.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** The options whose values differ between two readings (arrays compared element by element). */
function changedOptions(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

/**
 * The new reading against the one in force: the log level moves now, the rest is reported.
 * `live`: the daemon's own options it applies itself (the server's bounds), not reported.
 */
export function applyReload(log: DaemonLogger, file: string, current: object, next: { logLevel?: unknown }, live: readonly string[] = []): void {
  const restart = changedOptions(current as Record<string, unknown>, next as Record<string, unknown>).filter((k) => !LIVE_OPTIONS.has(k) && !live.includes(k));
  if (restart.length) log.warn(`SIGHUP: ${file} changes ${restart.map(optionName).join(', ')}: takes effect at the next restart`);
  reloadLogLevel(log, next.logLevel);
}
