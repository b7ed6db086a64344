// One hung device stalls only its own OPEN (docs/security.md, "A hung device"): the server makes
// an OPEN's blocking calls off its event loop and fails it with ETIMEDOUT past --open-timeout-ms,
// while other sessions map, verify and the control socket answers; an OPEN that returns after
// it was given up gives back what it took. The hangs are the server's test hooks
// IBNBD_FAULT_SLOW_OPEN (the open(2) of one device_path takes that long, as on a dead NFS mount)
// and IBNBD_FAULT_SLOW_PROBE (the probe of the device, once opened, does). Real daemons over the
// transport under test.
import test from 'ava';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

test.serial('OPENs that hang (in open, in the probe) fail alone with ETIMEDOUT; other sessions map and verify, the control socket answers', async (t) => {
  const dir = tempDir(t, 'hung');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  sparseFile(join(ex, 'slow.img'), 16 * MiB);
  sparseFile(join(ex, 'probe.img'), 16 * MiB);
  sparseFile(join(ex, 'fast.img'), 16 * MiB);
  const server = await startServerDaemon(t, dir, ex, ['--open-timeout-ms', '3000'], undefined, { IBNBD_FAULT_SLOW_OPEN: 'slow.img:60000', IBNBD_FAULT_SLOW_PROBE: 'probe.img:60000' });
  const client = await startClientDaemon(t, dir);
  const t0 = Date.now();
  const slow = ibnbd(['map', `sessname=hs ${testMapTarget(server.port)} device_path=slow.img`, '--control', client.control]);
  const slowProbe = ibnbd(['map', `sessname=hp ${testMapTarget(server.port)} device_path=probe.img`, '--control', client.control]);
  await new Promise((r) => setTimeout(r, 300));
  // meanwhile: another session maps and verifies, the server's control socket answers
  const fast = await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=hf ${testMapTarget(server.port)} device_path=fast.img`, '--control', client.control]);
  const fastMs = Date.now() - t0;
  const v = await blkio(['--path', fast.device.socket, '--timeout-ms', String(scaled(30_000)), '--qd', '8', '--seed', '4', '--count', '64', 'verify'], scaled(60_000));
  t.is(v.code, 0, JSON.stringify(v.json));
  const sessions = await ibnbdJson<{ sessions: Record<string, any>[] }>(['server', 'sessions', '--control', server.control]);
  const listedMs = Date.now() - t0;
  t.true(sessions.sessions.some((s) => s.sessname === 'hf'));
  const s = await slow;
  const slowMs = Date.now() - t0;
  t.log(`the other session mapped ${fastMs} ms and the control socket answered ${listedMs} ms into the hang; the hung OPEN failed after ${slowMs} ms`);
  t.is(s.code, 110, `ETIMEDOUT: ${s.stderr}`);
  t.true(fastMs < slowMs && listedMs < slowMs, 'the rest went on while the OPEN hung');
  t.true(slowMs >= 2900 && slowMs < scaled(20_000), `failed at --open-timeout-ms, not before (${slowMs} ms)`);
  t.regex(server.log(), /session hs: OPEN "slow\.img" failed: ETIMEDOUT: opening "slow\.img" did not finish within 3000 ms/);
  t.like(server.entries().find((e) => e.msg.startsWith('session hs: OPEN "slow.img" failed')), { level: 'warn', daemon: 'server', session: 'hs' });
  const p = await slowProbe;
  t.is(p.code, 110, `a device that opens and then hangs in its probe: ETIMEDOUT too (${p.stderr})`);
  t.regex(server.log(), /session hp: OPEN "probe\.img" failed: ETIMEDOUT/);
});

test.serial('an OPEN that returns after it was given up gives back what it took: no export stays open', async (t) => {
  const dir = tempDir(t, 'late');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  sparseFile(join(ex, 'late.img'), 16 * MiB);
  const server = await startServerDaemon(t, dir, ex, ['--open-timeout-ms', '1500'], undefined, { IBNBD_FAULT_SLOW_PROBE: 'late.img:6000' });
  const client = await startClientDaemon(t, dir);
  const t0 = Date.now();
  const late = await ibnbd(['map', `sessname=hl ${testMapTarget(server.port)} device_path=late.img`, '--control', client.control]);
  t.is(late.code, 110, late.stderr);
  // given up at 1.5 s, while the export is open and its probe still runs: the server lists it
  const during = await ibnbdJson<{ devices: Array<{ name: string; opens: number }> }>(['server', 'devices', '--control', server.control]);
  const duringMs = Date.now() - t0;
  t.true(duringMs < 6000, `listed while the probe still hangs (${duringMs} ms)`);
  t.true(during.devices.some((d) => d.name.endsWith('late.img')), 'while the probe hangs the export is open');
  // the probe returns at 6 s: the OPEN sees it was given up and closes the export again
  await new Promise((r) => setTimeout(r, Math.max(0, 6000 - (Date.now() - t0)) + scaled(1500)));
  const after = await ibnbdJson<{ devices: Array<{ name: string }> }>(['server', 'devices', '--control', server.control]);
  t.log(`listed ${duringMs} ms into the OPEN: ${JSON.stringify(during.devices)}; after it returned: ${JSON.stringify(after.devices)}`);
  t.deepEqual(after.devices, [], 'nothing of the given-up OPEN stays open');
  const sessions = await ibnbdJson<{ sessions: Array<{ sessname: string; devices: unknown[] }> }>(['server', 'sessions', '--control', server.control]);
  t.true(sessions.sessions.every((s) => s.devices.length === 0), `no session holds the device: ${JSON.stringify(sessions.sessions)}`);
});
