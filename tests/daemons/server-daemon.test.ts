// The `ibnbd server` daemon as a child process: it listens, a client maps a file through the
// real transport, `ibnbd server devices|sessions` show it through the control socket, and
// SIGTERM ends it cleanly (exit 0, session closed, control socket removed).
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, ibnbd } from '../support/daemons.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { TestClient, pattern, raceTimeout } from '../support/server-helpers.js';

test('daemon: serve, introspect through the CLI, exit cleanly on SIGTERM', async (t) => {
  const dir = tempDir(t, 'srvd');
  sparseFile(join(dir, 'disk.img'), 4 << 20);
  const sock = join(dir, 'server.sock');
  const child = spawn(
    process.execPath,
    [cliPath, 'server', '--listen', '127.0.0.1:0', '--dev-search-path', dir, '--control', sock, '--io-threads', '2'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 20_000;
  let port = 0;
  while (Date.now() < deadline) {
    const m = /listening on 127\.0\.0\.1:(\d+)/.exec(stderr);
    if (m && existsSync(sock)) {
      port = Number(m[1]);
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  t.true(port > 0, `daemon announced its port: ${stderr}`);

  const c = await TestClient.connect(port, 'blya');
  t.teardown(() => c.close());
  t.is(await c.sessInfo(), 2);
  const o = await c.open('/disk.img', 'rw', 'fileio');
  t.is(o.errno, 0);
  const data = pattern(3, 8192, 65536);
  t.is(await c.write(o.rsp!.deviceId, 8192, data), 0);
  t.true((await c.read(o.rsp!.deviceId, 8192, 65536)).data!.equals(data));

  const name = `${dir.slice(1).replace(/\//g, '!')}!disk.img`;
  const devs = await ibnbd(['server', 'devices', '--control', sock]);
  t.is(devs.code, 0, devs.stderr);
  t.is(
    devs.stdout,
    `devices/${name}/block_dev: ${join(dir, 'disk.img')}\n` +
      `devices/${name}/sessions/blya/read_only: 0\n` +
      `devices/${name}/sessions/blya/mapping_path: /disk.img\n`,
  );
  const sess = await ibnbd(['server', 'sessions', '--json', '--control', sock]);
  const s = (JSON.parse(sess.stdout) as { sessions: Array<{ sessname: string; paths: Array<{ src: string }>; devices: Array<{ device_id: number; io_mode: string }> }> }).sessions;
  t.is(s.length, 1);
  t.is(s[0]!.sessname, 'blya');
  t.regex(s[0]!.paths[0]!.src, /127\.0\.0\.1:\d+$/);
  t.deepEqual(s[0]!.devices.map((d) => [d.device_id, d.io_mode]), [[o.rsp!.deviceId, 'fileio']]);

  child.kill('SIGTERM');
  const code = await raceTimeout(exited, 15_000, 'timeout');
  t.is(code, 0, stderr);
  t.regex(stderr, /SIGTERM: stopping/);
  t.regex(stderr, /stopped \(1 session\(s\) closed, 0 device\(s\) open\)/);
  t.false(existsSync(sock), 'control socket removed');
  t.not((await c.read(o.rsp!.deviceId, 0, 4096)).errno, 0, 'the session is gone with the server');
});

test('daemon: SIGINT is a clean stop too; a taken control socket is refused before serving', async (t) => {
  const dir = tempDir(t, 'srvd');
  const sock = join(dir, 'server.sock');
  const start = () => {
    const child = spawn(process.execPath, [cliPath, 'server', '--listen', '127.0.0.1:0', '--dev-search-path', dir, '--control', sock], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    t.teardown(() => child.kill('SIGKILL'));
    const out = { stderr: '' };
    child.stderr!.on('data', (d: Buffer) => (out.stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    return { child, out, exited };
  };
  const a = start();
  const deadline = Date.now() + 20_000;
  while (!/listening on/.test(a.out.stderr) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.regex(a.out.stderr, /listening on 127\.0\.0\.1:\d+/);

  // a second daemon on the same control socket: refused (EADDRINUSE), exit status = errno
  const b = start();
  const bcode = await raceTimeout(b.exited, 15_000, 'timeout');
  t.is(bcode, 98, b.out.stderr);
  t.regex(b.out.stderr, /ibnbd: EADDRINUSE: control socket .*server\.sock: a daemon is already listening/);

  a.child.kill('SIGINT');
  const code = await raceTimeout(a.exited, 15_000, 'timeout');
  t.is(code, 0, a.out.stderr);
  t.regex(a.out.stderr, /SIGINT: stopping/);
  t.false(existsSync(sock));
});
