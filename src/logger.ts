// The logger both daemons hand down to every component (docs/operations.md, "Logs"): pino under a
// small face of our own, so a call site writes `log.warn(text)` and a component that is about a
// session, a device or a path takes a child that adds the field to each of its lines.
//
// One JSON line per event on stderr: {"level":"info","time":"<ISO>","daemon":"server",
// "session":"vm-1","msg":"..."}; pretty-printed (pino-pretty) when stderr is a terminal. The level
// is checked here rather than by pino: pino's children keep the level they were made with, and
// SIGHUP must move every logger of the daemon at once, those of running sessions included.
import { pino, stdTimeFunctions, type DestinationStream, type Logger as Pino } from 'pino';
import type { PrettyOptions } from 'pino-pretty';
import { createRequire } from 'node:module';
import { parseLogLevel, type LogLevel } from './log-levels.js';

/** pino's numbers; the native addon uses the same (native/common/log.h). */
export const LEVEL_VALUES: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50 };

/** What a line is about. Children carry these; a single line may add more. */
export interface LogFields {
  session?: string;
  device?: string;
  path?: string;
  [key: string]: unknown;
}

type LogFn = (msg: string, fields?: LogFields) => void;

export interface Logger {
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  /** A logger whose every line also carries `fields` (a session's, a device's, a path's). */
  child(fields: LogFields): Logger;
}

/** The daemon's root logger: the level can move at run time (SIGHUP), for every child too. */
export interface DaemonLogger extends Logger {
  readonly level: LogLevel;
  setLevel(level: LogLevel): void;
  /** Called with each new level (the native addon's threshold follows it). */
  onLevel(fn: (level: LogLevel) => void): void;
}

/**
 * SIGHUP's new log level (undefined: the key is gone, back to info). The line saying so is
 * written at whichever of the two levels shows more, so a move to debug or back is seen.
 */
export function reloadLogLevel(log: DaemonLogger, value: unknown): void {
  const next = parseLogLevel(value ?? 'info');
  const was = log.level;
  if (next === was) return;
  const line = `SIGHUP: log level now ${next} (was ${was})`;
  if (LEVEL_VALUES[next] > LEVEL_VALUES[was]) log.info(line);
  log.setLevel(next);
  if (LEVEL_VALUES[next] < LEVEL_VALUES[was]) log.info(line);
}

const noop: LogFn = () => {};

/** Drops everything: for library use and tests that assert on return values, not logs. */
export const silentLogger: Logger = {
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  child: () => silentLogger,
};

interface Shared {
  min: number;
}

function wrap(p: Pino, shared: Shared): Logger {
  const at = (level: LogLevel): LogFn => {
    const value = LEVEL_VALUES[level];
    return (msg, fields) => {
      if (value < shared.min) return;
      if (fields) p[level](fields, msg);
      else p[level](msg);
    };
  };
  return {
    trace: at('trace'),
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (fields) => wrap(p.child(fields), shared),
  };
}

export interface DaemonLoggerOptions {
  daemon: 'server' | 'client';
  level?: LogLevel;
  /** Where the lines go (tests); default stderr, pretty when it is a terminal. */
  stream?: DestinationStream;
  /** Human-readable lines instead of JSON; default: whether stderr is a terminal. */
  pretty?: boolean;
}

function destination(o: DaemonLoggerOptions): DestinationStream {
  const human = o.pretty ?? process.stderr.isTTY === true;
  if (human) {
    // loaded only for a terminal: the JSON case (systemd, tests) and the CLI's commands skip it.
    // Synchronous like the JSON case: a line is out before the next native one or an exit.
    const pretty = createRequire(import.meta.url)('pino-pretty') as (o: PrettyOptions) => DestinationStream;
    return pretty({ destination: o.stream ?? 2, sync: true, translateTime: 'SYS:standard', ignore: 'daemon', colorize: !o.stream });
  }
  // synchronous writes: nothing is lost when the daemon exits, and lines stay in order with what
  // the native addon writes to the same descriptor when no sink is registered
  return o.stream ?? pino.destination({ fd: 2, sync: true });
}

export function daemonLogger(o: DaemonLoggerOptions): DaemonLogger {
  let level: LogLevel = o.level ?? 'info';
  const shared: Shared = { min: LEVEL_VALUES[level] };
  const listeners: ((l: LogLevel) => void)[] = [];
  const p = pino(
    {
      level: 'trace', // filtered in wrap(), see the top of this file
      base: { daemon: o.daemon },
      timestamp: stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination(o),
  );
  const root = wrap(p, shared);
  return {
    ...root,
    get level() {
      return level;
    },
    setLevel(next) {
      level = next;
      shared.min = LEVEL_VALUES[next];
      for (const fn of listeners) fn(next);
    },
    onLevel(fn) {
      listeners.push(fn);
    },
  };
}
