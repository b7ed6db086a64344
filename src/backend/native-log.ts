// The native addon's log lines into the daemon's logger (native/common/log.h). Native code queues
// each line with its level, component and the session/device/path it knows; the addon hands them
// over on the JS thread and they go out as the daemon's own lines, marked `native: true`.
import { LEVEL_VALUES, type DaemonLogger, type Logger } from '../logger.js';
import type { LogLevel } from '../log-levels.js';
import { loadNative } from './native.js';

/** One line as the addon delivers it. */
export interface NativeLogLine {
  level: number;
  component: string;
  msg: string;
  session?: string;
  device?: string;
  path?: string;
  /** lines dropped just before this one: the queue was full */
  dropped?: number;
}

interface NativeLogExports {
  setLogSink(fn: ((line: NativeLogLine) => void) | null): void;
  setLogLevel(level: number): void;
}

/** The addon's level numbers are pino's; anything between two levels counts as the lower. */
export function levelName(value: number): LogLevel {
  if (value >= LEVEL_VALUES.error) return 'error';
  if (value >= LEVEL_VALUES.warn) return 'warn';
  if (value >= LEVEL_VALUES.info) return 'info';
  if (value >= LEVEL_VALUES.debug) return 'debug';
  return 'trace';
}

/** Writes one native line through `log`. */
export function logNativeLine(log: Logger, line: NativeLogLine): void {
  const { level, msg, ...fields } = line;
  log[levelName(level)](msg, { native: true, ...fields });
}

/**
 * From now on the addon's lines go through `log`, and its threshold follows the logger's level
 * (lines below it are not even formatted natively). The addon's wake-up does not keep the
 * process alive; at exit the sink is unregistered, which hands it what is still queued.
 */
export function routeNativeLogs(log: DaemonLogger): void {
  const addon = loadNative<NativeLogExports>();
  addon.setLogLevel(LEVEL_VALUES[log.level]);
  log.onLevel((level) => addon.setLogLevel(LEVEL_VALUES[level]));
  addon.setLogSink((line) => logNativeLine(log, line));
  process.once('exit', () => addon.setLogSink(null));
}

/** Native lines back to stderr as text (tests that load the addon alone). */
export function unrouteNativeLogs(): void {
  loadNative<NativeLogExports>().setLogSink(null);
}
