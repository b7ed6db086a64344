// A forced unmap while the server has stopped answering (docs/client.md, "Path loss, waiting and
// the reconnect policy"): the requests at the transport end within io_timeout, the device goes,
// guest memory is unmapped only once nothing of the transport can write into it (in the
// sanitizer tier a late write would be an ASan report and a dead daemon), and a device on
// another server never notices. Real daemons as child processes, libblkio as the front-end.
import test from 'ava';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, showDevice, startClientDaemon, startServerDaemon, until } from '../support/daemons.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test.serial('force unmap under QD32 with a server that stopped answering: done within io_timeout, the other device unaffected', async (t) => {
  const dir = tempDir(t, 'unmap');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  sparseFile(join(ex, 'a.img'), 256 * MiB); // room for 4000 non-overlapping writes of ≤ 64 KiB
  sparseFile(join(ex, 'b.img'), 16 * MiB);
  const serverA = await startServerDaemon(t, dir, ex);
  const dirB = join(dir, 'b');
  await mkdir(dirB);
  const serverB = await startServerDaemon(t, dirB, ex);
  // heartbeats that would take a minute: io_timeout (checked on the 1-s heartbeat tick) decides
  const client = await startClientDaemon(t, dir, ['--heartbeat-ms', '1000', '--heartbeat-missed-max', '60', '--reconnect-delay-ms', '500']);
  const show = (name: string) => showDevice(client.control, name);
  const map = async (s: string) => (await ibnbdJson<{ device: Record<string, any> }>(['map', s, '--control', client.control])).device;
  const a = await map(`sessname=fa ${testMapTarget(serverA.port)} device_path=a.img io_timeout=3`);
  const b = await map(`sessname=fb ${testMapTarget(serverB.port)} device_path=b.img`);
  // four times the requests that once all finished before the server was stopped (in the
  // sanitizer tier on a loaded machine): the forced unmap, not the count, ends this load
  const loadA = blkio(['--path', a.socket, '--timeout-ms', String(scaled(10_000)), '--qd', '32', '--seed', '5', '--count', '4000',
    '--min-size', '4096', '--max-size', String(64 * 1024), 'write'], scaled(90_000));
  await until(() => show(a.name), (d) => d.stats.writeBytes >= MiB, 30_000, 'load on a');
  serverA.proc.kill('SIGSTOP');
  t.teardown(() => void serverA.proc.kill('SIGCONT'));
  await until(() => show(a.name), (d) => d.stats.inflight >= 16, 10_000, 'requests pile up at the frozen server');
  const other = blkio(['--path', b.socket, '--timeout-ms', String(scaled(30_000)), '--qd', '8', '--seed', '6', '--count', '64', 'verify'], scaled(40_000));
  const t0 = Date.now();
  const un = await ibnbd(['unmap', a.name, '--force', '--control', client.control]);
  const took = Date.now() - t0;
  t.is(un.code, 0, un.stderr);
  t.log(`forced unmap of a device with 32 requests at a silent server took ${took} ms (io_timeout 3 s)`);
  t.true(took <= 3_000 + 1_000 + 1_500, `within io_timeout plus one heartbeat tick: ${took} ms`);
  t.not((await loadA).code, 0, 'the front-end of the forced device saw its requests fail');
  const o = await other;
  t.is(o.code, 0, `the other device's IO was untouched: ${JSON.stringify(o.json)}`);
  serverA.proc.kill('SIGCONT');
  await sleep(500);
  t.is(client.proc.exitCode, null, 'the client daemon is alive (no late write into unmapped guest memory)');
  const list = (await ibnbdJson<{ devices: Record<string, any>[] }>(['list', '--control', client.control])).devices;
  t.deepEqual(list.map((d) => d.name), [b.name]);
});
