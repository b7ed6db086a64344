// IO waits through faults (the default reconnect policy): the export server is SIGKILLed under a
// verifying writer and comes back on the same port; the writer (libblkio, the VM's stand-in)
// sees no error at all, its read-back matches, and the server's file holds its bytes. Then the
// policy's limits: fast_io_fail_tmo fails waiting IO after its time, not before, and IO flows
// again when the server returns; ctrl_loss_tmo closes the device after its time. Real daemons as
// child processes over the transport under test (TCP here, RDMA in the soft-RoCE guest).
import test, { type ExecutionContext } from 'ava';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbdJson, showDevice, startClientDaemon, startServerDaemon, until } from '../support/daemons.js';
import { blkio, expectedPattern, fileBytes, MiB } from '../support/vhost-helpers.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

// heartbeats find a dead path in ~0.6 s; reconnect attempts back off up to 500 ms
const CLIENT = ['--heartbeat-ms', '200', '--heartbeat-missed-max', '3', '--reconnect-delay-ms', '500'];

async function setup(t: ExecutionContext, file: string, size: number) {
  const dir = tempDir(t, 'fault');
  const exportsDir = join(dir, 'exports');
  await mkdir(exportsDir);
  sparseFile(join(exportsDir, file), size);
  let server = await startServerDaemon(t, dir, exportsDir);
  const port = server.port;
  const client = await startClientDaemon(t, dir, CLIENT);
  const map = async (s: string) => (await ibnbdJson<{ device: Record<string, any> }>(['map', s, '--control', client.control])).device;
  const show = (name: string) => showDevice(client.control, name);
  /** Freezes the server, waits until the client has requests outstanding on it (so the kill
   *  always lands on IO in flight, however fast the machine), then SIGKILLs it. */
  const killUnderIo = async (name: string) => {
    server.proc.kill('SIGSTOP');
    await until(() => show(name), (d) => d.stats.inflight > 0, 10_000, 'requests in flight at the frozen server');
    await server.stop('SIGKILL');
  };
  const kill = async () => {
    await server.stop('SIGKILL');
  };
  const restart = async () => {
    const d = join(dir, `srv-${Date.now()}`);
    await mkdir(d);
    server = await startServerDaemon(t, d, exportsDir, [], port);
  };
  return { dir, exportsDir, client, map, show, kill, killUnderIo, restart, at: testMapTarget(port) };
}

test.serial('server SIGKILLed under a verifying writer at QD16 and back 5 s later: no error reaches the writer, the bytes are on the server', async (t) => {
  const SIZE = 64 * 1024;
  const COUNT = 256; // 16 MiB written, then read back and compared
  const s = await setup(t, 'disk.img', COUNT * SIZE);
  const dev = await s.map(`sessname=fw1 ${s.at} device_path=disk.img`);
  t.is(dev.state, 'open');

  const writer = blkio(
    ['--path', dev.socket, '--timeout-ms', String(scaled(120_000)), '--qd', '16', '--seed', '77', '--count', String(COUNT),
      '--sequential', '--min-size', String(SIZE), '--max-size', String(SIZE), 'verify'],
    scaled(180_000),
  );
  // the server dies with writes in flight, after the first MiB, the rest still to come
  await until(() => s.show(dev.name), (d) => d.stats.writeBytes >= MiB, 60_000, 'the writer got going');
  await s.killUnderIo(dev.name);
  const killedAt = Date.now();
  const waiting = await until(() => s.show(dev.name), (d) => d.state === 'reconnecting', 10_000, 'the device goes reconnecting');
  t.is(waiting.state, 'reconnecting');
  await new Promise((r) => setTimeout(r, Math.max(0, 5_000 - (Date.now() - killedAt))));
  const held = await s.show(dev.name);
  t.true(held.stats.waiting + held.stats.inflight > 0, `requests wait meanwhile: ${JSON.stringify(held.stats)}`);
  t.is(held.stats.errors, 0, 'none failed while the server was away');
  await s.restart();
  const back = Date.now();
  const open = await until(() => s.show(dev.name), (d) => d.state === 'open', 20_000, 'the device is open again');
  t.log(`open again ${Date.now() - back} ms after the server restarted (server away ${back - killedAt} ms)`);
  // the held requests are handed back to their queues' threads right after the re-OPEN
  await until(() => s.show(dev.name), (d) => d.stats.waiting === 0, 10_000, 'the held requests went out again');
  t.is(open.state, 'open');

  const r = await writer;
  t.is(r.code, 0, `the writer saw no error: ${JSON.stringify(r.json)}`);
  const after = await s.show(dev.name);
  t.is(after.stats.errors, 0, 'no request was answered with an error');
  t.true(fileBytes(join(s.exportsDir, 'disk.img'), 0, COUNT * SIZE).equals(expectedPattern(77, 0, COUNT * SIZE)), "the server's file holds every byte written");
});

test.serial('fast_io_fail_tmo=3: waiting IO fails after about 3 s, not before, and flows again once the server is back', async (t) => {
  const s = await setup(t, 'f.img', 16 * MiB);
  const dev = await s.map(`sessname=fw2 ${s.at} device_path=f.img fast_io_fail_tmo=3`);
  t.is((await blkio(['--path', dev.socket, '--seed', '3', '--count', '16', 'verify'])).code, 0);
  await s.kill();
  await until(() => s.show(dev.name), (d) => d.state === 'reconnecting', 10_000, 'reconnecting');
  const t0 = Date.now();
  const io = await blkio(['--path', dev.socket, '--timeout-ms', String(scaled(20_000)), '--seed', '3', '--count', '4', 'check'], scaled(30_000));
  const took = Date.now() - t0;
  t.is(io.code, 1, `IO fails once fast_io_fail_tmo is over: ${JSON.stringify(io.json)}`);
  t.true(took >= 2_000, `not before the timeout (${took} ms after the device went reconnecting)`);
  t.true(took < scaled(8_000), `soon after it (${took} ms)`);
  const d = await s.show(dev.name);
  t.is(d.state, 'reconnecting', 'still reconnecting: fast_io_fail_tmo fails IO, it does not give up the device');
  await s.restart();
  await until(() => s.show(dev.name), (x) => x.state === 'open', 20_000, 'open again');
  const again = await blkio(['--path', dev.socket, '--seed', '3', '--count', '16', 'check']);
  t.is(again.code, 0, `IO flows again and the data is intact: ${JSON.stringify(again.json)}`);
});

test.serial('ctrl_loss_tmo=10: the device is closed about 10 s after the loss, and IO fails from then on', async (t) => {
  const s = await setup(t, 'c.img', 16 * MiB);
  const dev = await s.map(`sessname=fw3 ${s.at} device_path=c.img ctrl_loss_tmo=10`);
  await s.kill();
  const lost = await until(() => s.show(dev.name), (d) => d.state === 'reconnecting', 10_000, 'reconnecting');
  const since = Date.parse(lost.state_since);
  const closed = await until(() => s.show(dev.name), (d) => d.state === 'closed', scaled(20_000), 'closed');
  const after = Date.parse(closed.state_since) - since;
  t.log(`closed ${after} ms after it went reconnecting (ctrl_loss_tmo 10 s)`);
  t.true(after >= 9_900 && after < scaled(13_000), `closed ${after} ms after it went reconnecting`);
  t.regex(closed.state_reason, /ctrl_loss_tmo/);
  const t0 = Date.now();
  const io = await blkio(['--path', dev.socket, '--timeout-ms', '8000', '--seed', '4', '--count', '2', 'check']);
  t.is(io.code, 1, 'IO fails on a closed device');
  t.true(Date.now() - t0 < 5_000, 'at once');
});
