// The daemons with a config file (docs/operations.md, "Config files"): a key set only in the file
// takes effect, the command line wins where both say something, and SIGHUP reads the file again,
// reloading what can change live (the keys) and naming what needs a restart.
import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { MiB } from '../support/vhost-helpers.js';
import { testMapTarget, TEST_TRANSPORT } from '../support/transport-under-test.js';

async function waitForLog(log: () => string, re: RegExp, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!re.test(log())) {
    if (Date.now() > end) throw new Error(`no ${re} in the log:\n${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('server: the file sets what the command line does not, the command line wins, SIGHUP moves the bounds live and says what needs a restart', async (t) => {
  const dir = tempDir(t, 'cfg-srv');
  const ex = join(dir, 'exports');
  mkdirSync(ex);
  for (const n of ['a.img', 'b.img']) sparseFile(join(ex, n), 8 * MiB);
  const cfg = join(dir, 'server.toml');
  // transport: the file asks for what this host cannot serve; the command line's choice must win
  const other = TEST_TRANSPORT === 'tcp' ? 'rdma' : 'tcp';
  writeFileSync(cfg, `transport = "${other}"\nmax-devices-per-session = 1\nmax-sessions = 100\n`);
  const server = await startServerDaemon(t, dir, ex, ['--config', cfg]);
  const client = await startClientDaemon(t, dir);
  const first = await ibnbd(['map', `sessname=c1 ${testMapTarget(server.port)} device_path=a.img`, '--control', client.control]);
  t.is(first.code, 0, first.stderr);
  const second = await ibnbd(['map', `sessname=c1 ${testMapTarget(server.port)} device_path=b.img`, '--control', client.control]);
  t.is(second.code, 24, `max-devices-per-session = 1 from the file: EMFILE (${second.stderr})`);
  // SIGHUP with a changed file: the bounds change at once (devices per session up, sessions
  // down to the one that is up), queue-depth needs a restart and the log says so
  writeFileSync(cfg, `transport = "${other}"\nmax-devices-per-session = 2\nmax-sessions = 1\nqueue-depth = 64\n`);
  server.proc.kill('SIGHUP');
  await waitForLog(server.log, /SIGHUP: bounds now max-sessions 1, max-devices-per-session 2 \(was 100, 1\)/);
  await waitForLog(server.log, /SIGHUP: .*server\.toml changes queue-depth: takes effect at the next restart/);
  t.notRegex(server.log(), /changes [^:]*max-sessions/, 'a bound is not reported as needing a restart');
  const again = await ibnbd(['map', `sessname=c1 ${testMapTarget(server.port)} device_path=b.img`, '--control', client.control]);
  t.is(again.code, 0, `max-devices-per-session = 2 after SIGHUP: the second device maps (${again.stderr})`);
  mkdirSync(join(dir, 'c2'));
  const client2 = await startClientDaemon(t, join(dir, 'c2'));
  const other2 = await ibnbd(['map', `sessname=c2 ${testMapTarget(server.port)} device_path=a.img access_mode=ro`, '--control', client2.control]);
  t.not(other2.code, 0, 'max-sessions = 1 after SIGHUP: a second session is refused');
  await waitForLog(server.log, /--max-sessions 1/);
  // a file that no longer parses changes nothing and is reported
  writeFileSync(cfg, 'max-sessions = [\n');
  server.proc.kill('SIGHUP');
  await waitForLog(server.log, /SIGHUP: .*server\.toml:2:\d+: not TOML.*; nothing changed/);
  const sessions = await ibnbdJson<{ sessions: unknown[] }>(['server', 'sessions', '--control', server.control]);
  t.is(sessions.sessions.length, 1, 'the server goes on');
});

test('a bad config file stops the start with every problem, file, line and key', async (t) => {
  const dir = tempDir(t, 'cfg-bad');
  const cfg = join(dir, 'server.toml');
  writeFileSync(cfg, 'dev-search-path = "/srv"\nmax-sesions = 10\nqueue-depth = "deep"\nmax-io-size = 1000\n');
  const r = await ibnbd(['server', '--config', cfg, '--control', join(dir, 's.sock')]);
  t.is(r.code, 22, r.stderr);
  t.regex(r.stderr, new RegExp(`${cfg}:2: key 'max-sesions': unknown key`));
  t.regex(r.stderr, new RegExp(`${cfg}:3: key 'queue-depth': expected an integer, got a string`));
  t.regex(r.stderr, new RegExp(`${cfg}:4: key 'max-io-size': --max-io-size 1000: `));
  const missing = await ibnbd(['client', '--config', join(dir, 'nope.toml'), '--control', join(dir, 'c.sock')]);
  t.is(missing.code, 2, missing.stderr);
});

test('client: defaults for new mappings from the file; SIGHUP reports what needs a restart', async (t) => {
  const dir = tempDir(t, 'cfg-clt');
  const ex = join(dir, 'exports');
  mkdirSync(ex);
  sparseFile(join(ex, 'a.img'), 8 * MiB);
  const cfg = join(dir, 'client.toml');
  writeFileSync(cfg, 'io-timeout = 17\nctrl-loss-tmo = 120\n');
  const server = await startServerDaemon(t, dir, ex);
  const client = await startClientDaemon(t, dir, ['--config', cfg, '--ctrl-loss-tmo', '90']);
  const { device } = await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=c ${testMapTarget(server.port)} device_path=a.img`, '--control', client.control]);
  t.is(device.io_timeout, 17, 'io-timeout from the file');
  t.is(device.ctrl_loss_tmo, 90, 'ctrl-loss-tmo from the command line, over the file');
  writeFileSync(cfg, 'io-timeout = 20\nctrl-loss-tmo = 120\n');
  client.proc.kill('SIGHUP');
  await waitForLog(client.log, /SIGHUP: .*client\.toml changes io-timeout: takes effect at the next restart/);
});
