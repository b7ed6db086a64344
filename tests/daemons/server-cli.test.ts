// `ibnbd server devices|sessions|force-close` as a user runs them (node bin/ibnbd.js, a real
// process) against a real control socket serving a real ExportServer whose sessions opened real
// files; only the native transport is replaced by a recorder here (the daemon with the real
// transport: server-daemon.test.ts).
import test from 'ava';
import { join } from 'node:path';
import { ControlServer } from '../../src/control/index.js';
import { serverCommands } from '../../src/server/control-commands.js';
import { probe } from '../../src/server/probe.js';
import { ExportServer, type NativePort } from '../../src/server/server.js';
import { ibnbd } from '../support/daemons.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { openMsg } from '../support/server-helpers.js';

const port: NativePort = {
  respond: () => {},
  attach: () => {},
  detach: () => {},
  inflight: (_sid, id) => id * 10,
  paths: (sid) => [{ src: `127.0.0.1:4000${sid}`, dst: '127.0.0.1:1234', state: 'connected', inflight: 3 }],
};

test('devices, sessions and force-close through the CLI', async (t) => {
  const dir = tempDir(t, 'srvcli');
  const search = join(dir, 'exports');
  sparseFile(join(dir, 'placeholder'), 0);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(join(search, 'blya'), { recursive: true });
  sparseFile(join(search, 'blya', 'disk.img'), 1 << 20);
  sparseFile(join(search, 'blya', 'other.img'), 1 << 20);
  const server = new ExportServer(port, { devSearchPath: join(search, '%SESSNAME%'), probe });
  server.handleEvent({ type: 'session-up', sessionId: '1', sessname: 'blya' });
  let rid = 0;
  const open = (name: string, mode: 'ro' | 'rw' = 'rw') =>
    server.handleEvent({ type: 'request', sessionId: '1', requestId: ++rid, dir: 'read', usr: openMsg(name, mode), dataLen: 56 });
  open('disk.img');
  open('/other.img', 'ro');
  const sock = join(dir, 'server.sock');
  const control = new ControlServer(sock, serverCommands(server));
  await control.listen();
  t.teardown(() => control.close());

  const disk = `${search.slice(1).replace(/\//g, '!')}!blya!disk.img`;
  const other = `${search.slice(1).replace(/\//g, '!')}!blya!other.img`;
  const dev = await ibnbd(['server', 'devices', '--control', sock]);
  t.is(dev.code, 0, dev.stderr);
  t.is(
    dev.stdout,
    [
      `devices/${disk}/block_dev: ${join(search, 'blya', 'disk.img')}`,
      `devices/${disk}/sessions/blya/read_only: 0`,
      `devices/${disk}/sessions/blya/mapping_path: disk.img`,
      `devices/${other}/block_dev: ${join(search, 'blya', 'other.img')}`,
      `devices/${other}/sessions/blya/read_only: 1`,
      `devices/${other}/sessions/blya/mapping_path: /other.img`,
      '',
    ].join('\n'),
  );
  const json = await ibnbd(['server', 'devices', '--json', '--control', sock]);
  const parsed = JSON.parse(json.stdout) as { devices: Array<{ name: string; size_bytes: number; writers: number }> };
  t.deepEqual(
    parsed.devices.map((d) => [d.name, d.size_bytes, d.writers]),
    [
      [disk, 1 << 20, 1],
      [other, 1 << 20, 0],
    ],
  );

  const ses = await ibnbd(['server', 'sessions', '--control', sock]);
  t.is(ses.code, 0, ses.stderr);
  t.is(
    ses.stdout,
    [
      'sessions/blya/ver: -',
      'sessions/blya/paths/0: 127.0.0.1:40001 -> 127.0.0.1:1234 connected inflight=3',
      `sessions/blya/devices/0: ${disk} mapping_path=disk.img access_mode=rw io_mode=blockio inflight=0`,
      `sessions/blya/devices/1: ${other} mapping_path=/other.img access_mode=ro io_mode=blockio inflight=10`,
      // the daemon's IO threads (this process never started them: polling off, nothing counted)
      'io_threads/poll_us: 0',
      'io_threads/polls: 0',
      'io_threads/poll_hits: 0',
      '',
    ].join('\n'),
  );

  const fc = await ibnbd(['server', 'force-close', 'blya', disk, '--control', sock]);
  t.is(fc.code, 0, fc.stderr);
  const after = await ibnbd(['server', 'devices', '--json', '--control', sock]);
  t.deepEqual(
    (JSON.parse(after.stdout) as { devices: Array<{ name: string }> }).devices.map((d) => d.name),
    [other],
  );
  const ses2 = await ibnbd(['server', 'sessions', '--control', sock]);
  t.true(ses2.stdout.includes('sessions/blya/devices/0: force-closed'));

  const missing = await ibnbd(['server', 'force-close', 'blya', disk, '--control', sock]);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /^ibnbd: ENOENT: session blya has no device/);
  const nodaemon = await ibnbd(['server', 'devices', '--control', join(dir, 'none.sock')]);
  t.not(nodaemon.code, 0);
  t.regex(nodaemon.stderr, /^ibnbd: (ENOENT|ECONNREFUSED)/);
});

test('bad daemon options fail before anything starts, naming the option', async (t) => {
  const r = await ibnbd(['server', '--dev-search-path', '/tmp', '--queue-depth', '0', '--control', '/tmp/ibnbd-never.sock']);
  t.is(r.code, 22);
  t.regex(r.stderr, /^ibnbd: EINVAL: --queue-depth "0"/);
  // no implicit "/": the search path is the operator's choice, said out loud
  const none = await ibnbd(['server', '--control', '/tmp/ibnbd-never.sock']);
  t.is(none.code, 22);
  t.regex(none.stderr, /--dev-search-path or --export is required/);
  const r2 = await ibnbd(['server', '--dev-search-path', 'rel']);
  t.is(r2.code, 22);
  t.regex(r2.stderr, /--dev-search-path "rel": must be an absolute path/);
});
