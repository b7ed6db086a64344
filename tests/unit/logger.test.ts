// The daemons' logger (src/logger.ts) and the mapping of native lines (src/backend/native-log.ts),
// on a stream of the test's own: one JSON object a line with time, level, daemon, msg and the
// fields of its child; the level moves for children made before the change (SIGHUP); a native
// line keeps its level and is marked native.
import test from 'ava';
import { Writable } from 'node:stream';
import { daemonLogger, reloadLogLevel, type DaemonLoggerOptions } from '../../src/logger.js';
import { LOG_LEVELS, parseLogLevel } from '../../src/log-levels.js';
import { levelName, logNativeLine } from '../../src/backend/native-log.js';

function capture(o: Omit<DaemonLoggerOptions, 'stream'> = { daemon: 'server' }) {
  const out: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      out.push(...chunk.toString().split('\n').filter(Boolean));
      done();
    },
  });
  const log = daemonLogger({ ...o, stream: stream as unknown as NonNullable<DaemonLoggerOptions['stream']> });
  return { log, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>), text: () => out.join('\n') };
}

test('a line is a JSON object: ISO time, level by name, daemon, msg; a child adds its fields', (t) => {
  const { log, lines } = capture({ daemon: 'client' });
  log.info('client daemon: control socket /run/x.sock');
  log.child({ session: 'vm-1' }).child({ device: 'ibnbd0' }).warn('OPEN "a.img" refused', { path: 'ip:10.0.0.1:1234' });
  const [a, b] = lines();
  t.like(a, { level: 'info', daemon: 'client', msg: 'client daemon: control socket /run/x.sock' });
  t.regex(String(a!.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  t.deepEqual(Object.keys(a!).sort(), ['daemon', 'level', 'msg', 'time']);
  t.like(b, { level: 'warn', daemon: 'client', session: 'vm-1', device: 'ibnbd0', path: 'ip:10.0.0.1:1234', msg: 'OPEN "a.img" refused' });
});

test('the level filters every logger of the daemon, children made before a change included', (t) => {
  const { log, lines } = capture({ daemon: 'server', level: 'warn' });
  const session = log.child({ session: 's' });
  session.info('hidden');
  session.warn('shown');
  log.setLevel('debug');
  session.debug('shown at debug');
  session.trace('hidden at debug');
  t.deepEqual(lines().map((l) => l.msg), ['shown', 'shown at debug']);
  t.is(log.level, 'debug');
});

test('reloadLogLevel: says so at whichever level shows more; a missing key is info', (t) => {
  const { log, lines } = capture({ daemon: 'server', level: 'warn' });
  const seen: string[] = [];
  log.onLevel((l) => seen.push(l));
  reloadLogLevel(log, 'debug');
  reloadLogLevel(log, 'debug'); // no change, no line
  reloadLogLevel(log, 'error');
  reloadLogLevel(log, undefined);
  t.deepEqual(lines().map((l) => l.msg), [
    'SIGHUP: log level now debug (was warn)', // written at debug's side
    'SIGHUP: log level now error (was debug)', // written before the change, at debug's
    'SIGHUP: log level now info (was error)', // written after it, at info's
  ]);
  t.deepEqual(seen, ['debug', 'error', 'info']);
  t.is(log.level, 'info');
});

test('parseLogLevel: the five names, anything else EINVAL naming --log-level', (t) => {
  for (const l of LOG_LEVELS) t.is(parseLogLevel(l), l);
  for (const bad of ['INFO', 'verbose', '', 3]) {
    t.throws(() => parseLogLevel(bad), { code: 'EINVAL', message: /^--log-level .*: must be one of trace, debug, info, warn, error$/ });
  }
});

test('a native line: its level by name, native: true, its component and fields, the drop count', (t) => {
  const { log, lines } = capture({ daemon: 'server' });
  logNativeLine(log, { level: 40, component: 'tcp-server', msg: "session 'vm-1' path from ip:1.2.3.4:5 retired: it reconnected", session: 'vm-1', path: 'ip:1.2.3.4:5', dropped: 7 });
  logNativeLine(log, { level: 20, component: 'rdma', msg: 'below info: not written' });
  t.deepEqual(lines(), [
    {
      level: 'warn',
      time: lines()[0]!.time,
      daemon: 'server',
      native: true,
      component: 'tcp-server',
      session: 'vm-1',
      path: 'ip:1.2.3.4:5',
      dropped: 7,
      msg: "session 'vm-1' path from ip:1.2.3.4:5 retired: it reconnected",
    },
  ]);
  t.deepEqual([10, 20, 30, 40, 50, 45, 5].map(levelName), ['trace', 'debug', 'info', 'warn', 'error', 'warn', 'trace']);
});

test('on a terminal the lines are for people: level word and message, no JSON', (t) => {
  const { log, text } = capture({ daemon: 'server', pretty: true });
  log.child({ session: 'vm-1' }).warn('every path lost');
  t.regex(text(), /WARN.*: every path lost/);
  t.regex(text(), /session: "vm-1"/);
  t.false(text().trimStart().startsWith('{'));
});
