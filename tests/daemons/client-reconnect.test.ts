// The client daemon across a server restart, as RNBD behaves (docs/protocol.md, "The client's
// session life" and "Heartbeat and reconnect"; here the maps ask for it with ctrl_loss_tmo=0, the
// daemon's default being to wait, docs/client.md "Path loss, waiting and the reconnect policy"):
// every path lost → the devices go closed and their IO fails; the transport dials again (at once,
// then backing off up to --reconnect-delay-ms); on reconnect the daemon sends SESS_INFO and re-OPENs each device, and the
// vhost-user socket serves the new server's file under the new device id. Real daemons as child
// processes, libblkio (ibnbd-blkio) as the VM, bytes checked in the server's file.
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, rm, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { ibnbd, ibnbdJson, showDevice, startClientDaemon, startServerDaemon, type ClientDaemon } from '../support/daemons.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { blkio, expectedPattern, fileBytes, MiB } from '../support/vhost-helpers.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

// short enough that a restart is seen and healed in about a second
const FAST = ['--heartbeat-ms', '200', '--heartbeat-missed-max', '3', '--reconnect-delay-ms', '300'];

const show = (client: ClientDaemon, device: string) => showDevice(client.control, device);

/** Polls `ibnbd show` until the device is in `state`; the last answer, or a failure after the bound. */
async function waitState(t: ExecutionContext, client: ClientDaemon, device: string, state: string, boundMs: number): Promise<Record<string, any>> {
  const end = Date.now() + scaled(boundMs);
  for (;;) {
    const d = await show(client, device);
    if (d.state === state) return d;
    if (Date.now() > end) {
      t.fail(`${device} not ${state} within ${scaled(boundMs)} ms: ${JSON.stringify(d)}\nclient log:\n${client.log()}`);
      return d;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function setup(t: ExecutionContext, files: string[], clientOpts = FAST) {
  const dir = tempDir(t, 'reconn');
  const exportsDir = join(dir, 'exports');
  await mkdir(exportsDir);
  for (const f of files) sparseFile(join(exportsDir, f), 32 * MiB);
  const server = await startServerDaemon(t, dir, exportsDir);
  const client = await startClientDaemon(t, dir, clientOpts);
  const map = async (s: string) => (await ibnbdJson<{ device: Record<string, any> }>(['map', s, '--control', client.control])).device;
  /** A new server process on the same address and search path (the old one must be gone). */
  const restartServer = async () => {
    const d = join(dir, `srv-${Date.now()}`);
    await mkdir(d);
    return startServerDaemon(t, d, exportsDir, [], server.port);
  };
  // at: the map-string words that reach the server (same port after a restart)
  return { dir, exportsDir, server, client, map, restartServer, at: testMapTarget(server.port) };
}

const pattern = (seed: number, offset: number, count: number, size: number) => [
  '--seed', String(seed), '--count', String(count), '--sequential', '--min-size', String(size), '--max-size', String(size), '--offset', String(offset),
];

test.serial('server restart: devices go closed, IO fails, then SESS_INFO + re-OPEN bring them back with the data intact', async (t) => {
  const s = await setup(t, ['disk.img']);
  const dev = await s.map(`sessname=rc1 ${s.at} device_path=disk.img ctrl_loss_tmo=0`);
  t.is(dev.state, 'open');
  t.is(dev.state_reason, '');

  // a verified pattern before the restart, flushed to the server's file
  const w = await blkio(['--path', dev.socket, ...pattern(21, 0, 16, 64 * 1024), 'verify']);
  t.is(w.code, 0, JSON.stringify(w.json));
  t.is((await blkio(['--path', dev.socket, 'flush'])).code, 0);
  t.true(fileBytes(join(s.exportsDir, 'disk.img'), 0, MiB).equals(expectedPattern(21, 0, MiB)));

  t.is(await s.server.stop(), 0, 'the server exits cleanly on SIGTERM');
  const closed = await waitState(t, s.client, dev.name, 'closed', 10_000);
  t.regex(closed.state_reason, /disconnected/);
  t.like(closed.path_states[0], { state: 'reconnecting' });

  // while closed, guest IO fails promptly (IOERR from the back-end, not a hang)
  const started = Date.now();
  const failed = await blkio(['--path', dev.socket, '--timeout-ms', '8000', ...pattern(21, 0, 2, 4096), 'check']);
  t.is(failed.code, 1, `IO fails while closed: ${JSON.stringify(failed.json)}`);
  t.true(Date.now() - started < 5000, `failed within 5 s (${Date.now() - started} ms)`);

  // a new server process on the same port: reconnect, SESS_INFO, re-OPEN → open again
  const server2 = await s.restartServer();
  const reopenedAt = Date.now();
  const open = await waitState(t, s.client, dev.name, 'open', 15_000);
  t.log(`open again ${Date.now() - reopenedAt} ms after the new server started`);
  t.is(open.state_reason, '');
  t.is(open.size, 32 * MiB);
  t.true(open.path_states[0].reconnects >= 1, JSON.stringify(open.path_states));
  t.regex(s.client.log(), /re-opened disk\.img as server device \d+/);
  const srvDevs = (await ibnbd(['server', 'devices', '--control', server2.control])).stdout;
  t.regex(srvDevs, /rc1/, 'the new server knows the session and its device');

  // the data written before the restart reads back; new writes land in the server's file
  const back = await blkio(['--path', dev.socket, ...pattern(21, 0, 16, 64 * 1024), 'check']);
  t.is(back.code, 0, JSON.stringify(back.json));
  const w2 = await blkio(['--path', dev.socket, ...pattern(22, 8 * MiB, 8, 128 * 1024), 'write']);
  t.is(w2.code, 0, JSON.stringify(w2.json));
  t.is((await blkio(['--path', dev.socket, 'flush'])).code, 0);
  t.true(fileBytes(join(s.exportsDir, 'disk.img'), 8 * MiB, MiB).equals(expectedPattern(22, 8 * MiB, MiB)), 'new writes are in the file');

  t.is((await ibnbd(['unmap', dev.name, '--control', s.client.control])).code, 0);
  t.false(existsSync(dev.socket));
});

test.serial('a device whose re-OPEN fails stays closed with the reason; its old id never reaches the device that got it', async (t) => {
  const s = await setup(t, ['gone.img', 'kept.img']);
  // gone.img is opened first: on the restarted server kept.img is re-opened alone and may get
  // the id gone.img had; gone.img's IO must not follow that id
  const gone = await s.map(`sessname=rc2 ${s.at} device_path=gone.img ctrl_loss_tmo=0`);
  const kept = await s.map(`sessname=rc2 ${s.at} device_path=kept.img ctrl_loss_tmo=0`);
  t.not(gone.server_device_id, kept.server_device_id);

  await s.server.stop();
  await waitState(t, s.client, gone.name, 'closed', 10_000);
  await rm(join(s.exportsDir, 'gone.img'));
  await truncate(join(s.exportsDir, 'kept.img'), 48 * MiB); // grown while the server was down
  const server2 = await s.restartServer();

  const keptOpen = await waitState(t, s.client, kept.name, 'open', 15_000);
  t.log(`kept.img re-opened as server device ${keptOpen.server_device_id} (was ${kept.server_device_id}; gone.img had ${gone.server_device_id})`);
  t.is(keptOpen.size, 48 * MiB, 'the re-OPEN updated the capacity');
  t.regex(s.client.log(), /ibnbd1: capacity changed from 33554432 to 50331648 bytes/);
  t.like(s.client.entries().find((e) => e.msg.startsWith('ibnbd1: capacity changed')), { level: 'info', daemon: 'client', device: 'ibnbd1' });
  const info = await blkio(['--path', kept.socket, 'info']);
  t.is(info.json.capacity, 48 * MiB, 'a front-end sees the new capacity');
  const goneShown = await show(s.client, gone.name);
  t.is(goneShown.state, 'closed');
  t.regex(goneShown.state_reason, /re-OPEN after reconnect failed: .*no such device/);
  t.regex(s.client.log(), /ibnbd0: re-OPEN after reconnect failed/);

  // gone's writes fail and touch nothing; kept serves its file
  const before = fileBytes(join(s.exportsDir, 'kept.img'), 0, MiB);
  const gw = await blkio(['--path', gone.socket, '--timeout-ms', '8000', ...pattern(31, 0, 4, 64 * 1024), 'write']);
  t.is(gw.code, 1, `IO on the closed device fails: ${JSON.stringify(gw.json)}`);
  t.true(fileBytes(join(s.exportsDir, 'kept.img'), 0, MiB).equals(before), "kept.img untouched by gone.img's writes");
  const kw = await blkio(['--path', kept.socket, ...pattern(32, 0, 8, 128 * 1024), 'verify']);
  t.is(kw.code, 0, JSON.stringify(kw.json));
  t.is((await blkio(['--path', kept.socket, 'flush'])).code, 0);
  t.true(fileBytes(join(s.exportsDir, 'kept.img'), 0, MiB).equals(expectedPattern(32, 0, MiB)));

  // the closed device unmaps (no CLOSE for an id the server never gave this session)
  const un = await ibnbd(['unmap', gone.name, '--control', s.client.control]);
  t.is(un.code, 0, un.stderr);
  t.false(existsSync(gone.socket));
  const list = await ibnbdJson<{ devices: any[] }>(['list', '--control', s.client.control]);
  t.deepEqual(list.devices.map((d) => d.name), [kept.name]);
  const srv = (await ibnbd(['server', 'devices', '--control', server2.control])).stdout;
  t.regex(srv, /kept\.img/);
  t.notRegex(srv, /gone\.img/);
});

test.serial('re-OPEN refused with EPERM (another client took the device for writing) leaves the device closed with that reason', async (t) => {
  const s = await setup(t, ['shared.img']);
  const otherDir = join(s.dir, 'other');
  await mkdir(otherDir);
  const other = await startClientDaemon(t, otherDir, FAST);
  const dev = await s.map(`sessname=ours ${s.at} device_path=shared.img ctrl_loss_tmo=0`);

  await s.server.stop();
  await waitState(t, s.client, dev.name, 'closed', 10_000);
  // Our client daemon is held (SIGSTOP) while the server comes back and the other client takes
  // the device for writing, so its re-OPEN surely comes second; it used to be raced against a
  // long reconnect delay, which a busy TCG guest could outrun.
  s.client.proc.kill('SIGSTOP');
  t.teardown(() => void s.client.proc.kill('SIGCONT'));
  const server2 = await s.restartServer();
  // once (CI, beside a TCG guest) this map was refused EPERM with our daemon stopped: the logs of
  // the new server and both clients go with such a failure, so its cause can be read
  const theirs = await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=theirs ${s.at} device_path=shared.img`, '--control', other.control]).catch((e: Error) => {
    throw new Error(`${e.message}\n--- new server ---\n${server2.log()}\n--- their client ---\n${other.log()}\n--- our client ---\n${s.client.log()}`);
  });
  t.is(theirs.device.state, 'open');
  s.client.proc.kill('SIGCONT');

  const end2 = Date.now() + scaled(15_000);
  let shown = await show(s.client, dev.name);
  while (!/re-OPEN/.test(shown.state_reason) && Date.now() < end2) {
    await new Promise((r) => setTimeout(r, 100));
    shown = await show(s.client, dev.name);
  }
  t.is(shown.state, 'closed');
  t.regex(shown.state_reason, /re-OPEN after reconnect failed: .*access mode conflict/);
  const w = await blkio(['--path', dev.socket, '--timeout-ms', '8000', ...pattern(51, 0, 2, 4096), 'write']);
  t.is(w.code, 1, 'IO on the closed device fails');
  const un = await ibnbd(['unmap', dev.name, '--control', s.client.control]);
  t.is(un.code, 0, un.stderr);
});

test('client daemon: reconnect options are validated', async (t) => {
  const dir = tempDir(t, 'reconn-opts');
  const args = ['client', '--control', join(dir, 'c.sock'), '--run-dir', join(dir, 'run')];
  const bad = await ibnbd([...args, '--max-reconnect-attempts', '-2'], scaled(10_000));
  t.not(bad.code, 0);
  t.regex(bad.stderr, /EINVAL.*--max-reconnect-attempts/);
  const badDelay = await ibnbd([...args, '--reconnect-delay-ms', 'soon'], scaled(10_000));
  t.not(badDelay.code, 0);
  t.regex(badDelay.stderr, /EINVAL.*--reconnect-delay-ms/);
  const help = await ibnbd(['client', '--help']);
  t.regex(help.stdout, /--reconnect-delay <s>[\s\S]*default:\s+2\)/);
  t.regex(help.stdout, /--reconnect-delay-ms <ms>/);
  t.regex(help.stdout, /--max-reconnect-attempts <n>[\s\S]*-1\s+=\s+forever/);
});
