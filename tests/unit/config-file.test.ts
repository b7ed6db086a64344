// The daemons' TOML config files (src/config/config-file.ts, src/server/config.ts,
// src/client/config.ts; docs/operations.md, "Config files"): values become the daemon's options,
// and an unknown key, a wrong type and a bad value are each reported at once with file, line and
// key; TOML syntax errors with their line.
import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../harness/fixtures.js';
import { readServerConfig } from '../../src/server/config.js';
import { CLIENT_CONFIG_KEYS, readClientConfig } from '../../src/client/config.js';
import { readConfigFile } from '../../src/config/config-file.js';
import { projectRoot } from '../../src/backend/native.js';

function file(t: import('ava').ExecutionContext, name: string, text: string): string {
  const p = join(tempDir(t, 'cfg'), name);
  writeFileSync(p, text);
  return p;
}

test('server: every key becomes its option, values typed as TOML has them', (t) => {
  const p = file(t, 'server.toml', [
    '# the exports',
    'dev-search-path = "/srv/ibnbd/%SESSNAME%"',
    'listen = ["10.0.0.1:1234", "[fd00::1]:1234"]',
    'max-sessions = 64',
    'max-buffer-memory = "2G"',
    'allow = ["10.0.0.0/8"]',
    'transport = "tcp"',
  ].join('\n'));
  const c = readServerConfig(p)!;
  t.deepEqual(c.values, {
    devSearchPath: '/srv/ibnbd/%SESSNAME%',
    listen: ['10.0.0.1:1234', '[fd00::1]:1234'],
    maxSessions: 64,
    maxBufferMemory: '2G',
    allow: ['10.0.0.0/8'],
    transport: 'tcp',
  });
  t.is(c.lines.get('max-sessions'), 4);
});

test('an unknown key, a wrong type and a bad value: three errors, each with file, line and key', (t) => {
  const p = file(t, 'server.toml', [
    'dev-search-path = "/srv"',
    'max-sesions = 10',
    'max-conns-per-session = "many"',
    '',
    'transport = "carrier-pigeon"',
  ].join('\n'));
  const e = t.throws(() => readServerConfig(p), { code: 'EINVAL' })!;
  const lines = e.message.split('\n').slice(1).map((l) => l.trim());
  t.is(lines.length, 3, e.message);
  t.regex(lines[0]!, new RegExp(`^${p}:2: key 'max-sesions': unknown key`));
  t.regex(lines[1]!, new RegExp(`^${p}:3: key 'max-conns-per-session': expected an integer, got a string$`));
  t.regex(lines[2]!, new RegExp(`^${p}:5: key 'transport': --transport "carrier-pigeon": must be tcp, rdma or auto$`));
});

test('client: keys, types and the daemon\'s own range checks', (t) => {
  const ok = readClientConfig(file(t, 'client.toml', 'ctrl-loss-tmo = -1\nio-timeout = 30\nstate-dir = "/var/lib/x"\n'))!;
  t.deepEqual(ok.values, { ctrlLossTmo: -1, ioTimeout: 30, stateDir: '/var/lib/x' });
  const e = t.throws(() => readClientConfig(file(t, 'client.toml', 'io-threads = 0\nrun-dir = "relative"\nheartbeat-ms = 1.5\n')), { code: 'EINVAL' })!;
  t.regex(e.message, /client\.toml:1: key 'io-threads': --io-threads: 0 is not an integer from 1 to 64/);
  t.regex(e.message, /client\.toml:2: key 'run-dir': --run-dir: 'relative' is not an absolute path/);
  t.regex(e.message, /client\.toml:3: key 'heartbeat-ms': expected an integer, got a float/);
});

test('TOML syntax errors name the line; a named file must exist, the default one may not', (t) => {
  const e = t.throws(() => readServerConfig(file(t, 'bad.toml', 'dev-search-path = "/srv"\nlisten = [\n')), { code: 'EINVAL' })!;
  t.regex(e.message, /bad\.toml:3:\d+: not TOML/);
  t.throws(() => readServerConfig('/nonexistent/server.toml'), { code: 'ENOENT', message: /config file \/nonexistent\/server\.toml/ });
  // the default path: no file there is no config at all
  t.is(readConfigFile(join(tempDir(t, 'cfg'), 'absent.toml'), CLIENT_CONFIG_KEYS, () => undefined, false), null);
});

test('the example config files of packaging/config are valid', (t) => {
  const server = readServerConfig(join(projectRoot, 'packaging', 'config', 'server.toml'))!;
  t.is(server.values.devSearchPath, '/srv/ibnbd/%SESSNAME%');
  t.is(server.values.maxBufferMemory, '8G');
  t.is(server.values.logLevel, 'info');
  const client = readClientConfig(join(projectRoot, 'packaging', 'config', 'client.toml'))!;
  t.deepEqual(client.values, { reconnectDelay: 2, ctrlLossTmo: 600, fastIoFailTmo: -1, ioTimeout: 30, adminTimeout: 30, pollUs: 0, logLevel: 'info' });
  t.is(server.values.pollUs, 0, 'adaptive polling off, as the daemons\' default');
});

test('log-level: a key of both daemons, held to --log-level\'s names', (t) => {
  t.deepEqual(readServerConfig(file(t, 'server.toml', 'dev-search-path = "/srv"\nlog-level = "debug"\n'))!.values, { devSearchPath: '/srv', logLevel: 'debug' });
  t.deepEqual(readClientConfig(file(t, 'client.toml', 'log-level = "warn"\n'))!.values, { logLevel: 'warn' });
  const e = t.throws(() => readClientConfig(file(t, 'client.toml', 'log-level = "loud"\n')), { code: 'EINVAL' })!;
  t.regex(e.message, /client\.toml:1: key 'log-level': --log-level "loud": must be one of trace, debug, info, warn, error/);
  t.throws(() => readServerConfig(file(t, 'server.toml', 'dev-search-path = "/srv"\nlog-level = 3\n')), { code: 'EINVAL', message: /key 'log-level': expected a string, got an integer/ });
});
