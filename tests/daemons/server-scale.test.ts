// 64 sessions × 4 devices open at once against one server: three devices shared by every
// session (read-only) and one private file each (read-write), IO verified on every session,
// the introspection tree counted, and everything released when the sessions close.
import test from 'ava';
import { join } from 'node:path';
import { startServer } from '../../src/server/daemon.js';
import { validateServerOptions } from '../../src/server/options.js';
import { silentLogger } from '../../src/logger.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { TestClient, pattern } from '../support/server-helpers.js';

const SESSIONS = 64;

test('64 sessions × 4 devices open at once', async (t) => {
  t.timeout(90_000);
  const dir = tempDir(t, 'srvscale');
  for (const n of ['shared0', 'shared1', 'shared2']) sparseFile(join(dir, n), 1 << 20);
  for (let i = 0; i < SESSIONS; i++) sparseFile(join(dir, `own${i}`), 1 << 20);
  const running = startServer(
    validateServerOptions({ listen: ['127.0.0.1:0'], devSearchPath: dir, control: '/unused.sock', ioThreads: '2' }),
    silentLogger,
  );
  t.teardown(() => running.stop());
  const port = Number(running.bound[0]!.split(':').pop());

  const clients: TestClient[] = [];
  t.teardown(async () => {
    for (const c of clients) await c.close().catch(() => {});
  });
  for (let i = 0; i < SESSIONS; i += 8) {
    clients.push(...(await Promise.all(Array.from({ length: 8 }, (_, k) => TestClient.connect(port, `s${i + k}`)))));
  }
  const ids = await Promise.all(
    clients.map(async (c, i) => {
      await c.sessInfo();
      const opened = [];
      for (const [name, mode] of [['shared0', 'ro'], ['shared1', 'ro'], ['shared2', 'ro'], [`own${i}`, 'rw']] as const) {
        const o = await c.open(name, mode, i % 2 ? 'fileio' : 'blockio');
        if (o.errno !== 0) throw new Error(`session ${i} OPEN ${name}: errno ${o.errno}`);
        opened.push(o.rsp!.deviceId);
      }
      return opened;
    }),
  );
  t.true(ids.every((x) => x.join() === '0,1,2,3'), 'ids 0..3 in every session');

  const devices = running.server.devices();
  t.is(devices.length, 3 + SESSIONS);
  for (const d of devices.filter((d) => d.name.endsWith('shared0') || d.name.endsWith('shared1') || d.name.endsWith('shared2'))) {
    t.is(d.sessions.length, SESSIONS, `${d.name} mapped by every session`);
    t.is(d.writers, 0);
  }
  const sessions = running.server.sessionList();
  t.is(sessions.length, SESSIONS);
  t.true(sessions.every((s) => s.devices.length === 4 && s.paths.length >= 1));

  // every session does verified IO on its own device, all at once
  const results = await Promise.all(
    clients.map(async (c, i) => {
      const data = pattern(i, 4096 * i, 16384);
      if ((await c.write(3, 4096 * (i % 64), data)) !== 0) return false;
      const r = await c.read(3, 4096 * (i % 64), 16384);
      const shared = await c.read(i % 3, 0, 4096);
      return r.errno === 0 && r.data!.equals(data) && shared.errno === 0 && shared.data!.every((b) => b === 0);
    }),
  );
  t.is(results.filter(Boolean).length, SESSIONS, 'every session read back what it wrote');

  for (const c of clients.splice(0)) await c.close();
  const deadline = Date.now() + 20_000;
  while (running.server.sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.is(running.server.sessions.size, 0);
  t.deepEqual(running.server.devices(), [], 'every device released');
  t.is(running.server.exports.size, 0);
});
