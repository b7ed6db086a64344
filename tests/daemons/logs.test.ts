// The daemons' logs (docs/operations.md, "Logs"): every line on stderr is a JSON object with time,
// level, daemon and msg; a native line arrives among them with its level, `native: true`, its
// component and the path it is about; --log-level (which wins over the file's log-level) leaves
// out what is below it, and SIGHUP moves the level live from the config file.
import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { tempDir } from '../../harness/fixtures.js';
import { ibnbd, startClientDaemon, startServerDaemon, waitForEntry, type Daemon, type LogEntry } from '../support/daemons.js';
import { TEST_TRANSPORT } from '../support/transport-under-test.js';

/** Every line a JSON object with the four fields, time in ISO form, of this daemon. */
function checkLines(t: import('ava').ExecutionContext, d: Daemon, daemon: string): void {
  const lines = d.raw().split('\n').filter(Boolean);
  t.true(lines.length > 0);
  for (const l of lines) {
    const e = JSON.parse(l) as LogEntry; // throws on a line that is not JSON
    t.regex(e.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, l);
    t.true(['trace', 'debug', 'info', 'warn', 'error'].includes(e.level), l);
    t.is(e.daemon, daemon, l);
    t.is(typeof e.msg, 'string', l);
  }
}

test('server: JSON lines; a native refusal arrives with its level, component and path', async (t) => {
  const dir = tempDir(t, 'logs-srv');
  mkdirSync(join(dir, 'exports'));
  const server = await startServerDaemon(t, dir, join(dir, 'exports'), ['--allow', '10.9.0.0/16']);
  await waitForEntry(server, (e) => /^listening on /.test(e.msg), 'listening line');
  if (TEST_TRANSPORT === 'tcp') {
    // 127.0.0.1 is not in --allow: the native TCP server refuses it and logs so
    const s = net.connect(server.port, '127.0.0.1');
    s.on('error', () => undefined);
    t.teardown(() => s.destroy());
    const e = await waitForEntry(server, (x) => x.native === true, 'native line');
    t.like(e, { level: 'warn', daemon: 'server', native: true, component: 'tcp-server' });
    t.regex(e.path ?? '', /^ip:127\.0\.0\.1:\d+$/);
    t.is(e.msg, `connection from ${e.path} refused: not in --allow`);
  }
  t.like(server.entries().find((e) => e.msg.startsWith('sessions are not authenticated')), { level: 'warn' });
  t.is(await server.stop(), 0);
  checkLines(t, server, 'server');
});

test('server: --log-level warn wins over the file\'s info and leaves out every info line', async (t) => {
  const dir = tempDir(t, 'logs-warn');
  mkdirSync(join(dir, 'exports'));
  const cfg = join(dir, 'server.toml');
  writeFileSync(cfg, 'log-level = "info"\n');
  const server = await startServerDaemon(t, dir, join(dir, 'exports'), ['--config', cfg, '--log-level', 'warn']);
  t.is(await server.stop(), 0);
  checkLines(t, server, 'server');
  t.deepEqual(server.entries().map((e) => e.level), ['warn'], server.raw());
  t.regex(server.log(), /sessions are not authenticated/);
});

test('client: SIGHUP moves the level live from the config file, for lines that follow', async (t) => {
  const dir = tempDir(t, 'logs-hup');
  const cfg = join(dir, 'client.toml');
  writeFileSync(cfg, 'log-level = "warn"\n');
  const client = await startClientDaemon(t, dir, ['--config', cfg]);
  t.false(client.entries().some((e) => e.level === 'info'), 'at warn, the start is silent');
  // an answered request: the daemon is past its start and handles SIGHUP (else it would end it)
  t.is((await ibnbd(['list', '--control', client.control])).code, 0);
  client.proc.kill('SIGHUP'); // the level stays warn: its info line is left out
  writeFileSync(cfg, 'log-level = "debug"\n');
  await new Promise((r) => setTimeout(r, 300));
  client.proc.kill('SIGHUP');
  await waitForEntry(client, (e) => e.msg === 'SIGHUP: log level now debug (was warn)', 'the level change');
  await waitForEntry(client, (e) => e.msg === 'SIGHUP: no --auth-keys file to reload', 'an info line after it');
  t.is(client.entries().filter((e) => e.msg === 'SIGHUP: no --auth-keys file to reload').length, 1, 'the first SIGHUP\'s, at warn, was left out');
  t.false(/takes effect at the next restart/.test(client.log()), 'the level is not a restart option');
  t.is(await client.stop(), 0);
  t.like(client.entries().at(-1), { level: 'info', msg: 'client daemon: stopped' });
  checkLines(t, client, 'client');
});
