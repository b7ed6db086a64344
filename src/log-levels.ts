// The daemons' log levels and their parser, apart from the logger (src/logger.ts): the CLI names
// them in its help and the option checks use them, and neither should load pino to do so (every
// `ibnbd` command is a node start-up, which costs seconds in the test guests).
import { IbnbdError } from './errors.js';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** --log-level and the log-level key of both daemons: the level, or EINVAL naming the value. */
export function parseLogLevel(v: unknown): LogLevel {
  if (typeof v === 'string' && (LOG_LEVELS as readonly string[]).includes(v)) return v as LogLevel;
  throw new IbnbdError('EINVAL', `--log-level ${JSON.stringify(v)}: must be one of ${LOG_LEVELS.join(', ')}`);
}
