// The logger the daemons hand down to every component: two levels, one line each. A file of its
// own so that any module can take a Logger without importing the daemon that makes one.
export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
}

/** Drops everything: for library use and tests that assert on return values, not logs. */
export const silentLogger: Logger = { info: () => {}, warn: () => {} };

/** One line per message on stderr: ISO timestamp, prefix, level. */
export function stderrLogger(prefix: string): Logger {
  const line = (level: string, msg: string) =>
    process.stderr.write(`${new Date().toISOString()} ${prefix} ${level}: ${msg}\n`);
  return { info: (m) => line('info', m), warn: (m) => line('warn', m) };
}
