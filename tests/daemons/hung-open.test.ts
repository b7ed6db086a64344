// One hung device stalls only its own OPEN (docs/security.md, "A hung device"): the server tries
// each OPEN's path off its event loop first and fails it with ETIMEDOUT past --open-timeout-ms,
// while other sessions map, verify and the control socket answers. The hang is the server's
// test hook IBNBD_FAULT_SLOW_OPEN (the pre-flight of one device_path takes a minute, as an
// open(2) on a dead NFS mount would). Real daemons over the transport under test.
import test from 'ava';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

test.serial('an OPEN that hangs fails alone with ETIMEDOUT; other sessions map and verify, the control socket answers', async (t) => {
  const dir = tempDir(t, 'hung');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  sparseFile(join(ex, 'slow.img'), 16 * MiB);
  sparseFile(join(ex, 'fast.img'), 16 * MiB);
  const server = await startServerDaemon(t, dir, ex, ['--open-timeout-ms', '3000'], undefined, { IBNBD_FAULT_SLOW_OPEN: 'slow.img:60000' });
  const client = await startClientDaemon(t, dir);
  const t0 = Date.now();
  const slow = ibnbd(['map', `sessname=hs ${testMapTarget(server.port)} device_path=slow.img`, '--control', client.control]);
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
});
