// The client daemon as a user drives it: `ibnbd server` + `ibnbd client` child processes, the
// `ibnbd` CLI over the control socket, libblkio (ibnbd-blkio) as the VM on the vhost-user socket,
// and the bytes checked in the server's file.
import test, { type ExecutionContext } from 'ava';
import { existsSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { ibnbd, ibnbdJson, showDevice, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { blkio, blkioBench, expectedPattern, fileBytes, MiB } from '../support/vhost-helpers.js';
import { reportedAddress, scaled, testMapTarget } from '../support/transport-under-test.js';

async function setup(t: ExecutionContext, files: Record<string, number>, clientExtra: string[] = []) {
  const dir = tempDir(t, 'clientd');
  const exportsDir = join(dir, 'exports');
  await import('node:fs/promises').then((fs) => fs.mkdir(exportsDir));
  for (const [name, size] of Object.entries(files)) sparseFile(join(exportsDir, name), size);
  const server = await startServerDaemon(t, dir, exportsDir);
  const client = await startClientDaemon(t, dir, clientExtra);
  const map = (s: string) => ibnbd(['map', s, '--control', client.control]);
  const mapJson = (s: string) => ibnbdJson<{ device: Record<string, any> }>(['map', s, '--control', client.control]);
  // at: the map-string words that reach the server
  return { dir, exportsDir, server, client, map, mapJson, at: testMapTarget(server.port) };
}

test.serial('the seed\'s map string maps a device served over vhost-user-blk; libblkio data lands in the server file', async (t) => {
  const s = await setup(t, { 'disk0.img': 256 * MiB, 'disk1.img': 128 * MiB });
  // verbatim shape of IBNBD's example (docs/control-socket.md; address and device adapted to this host)
  const { device } = await s.mapJson(`sessname=blya ${s.at} device_path=disk0.img`);
  t.is(device.name, 'ibnbd0');
  t.is(device.device_id, 'disk0.img');
  t.is(device.socket, join(s.client.runDir, 'vhost', 'ibnbd0.sock'));
  t.is(device.state, 'open');
  t.is(device.size, 256 * MiB);
  t.is(readlinkSync(join(s.client.runDir, 'devices', 'disk0.img')), join('..', 'vhost', 'ibnbd0.sock'));

  // QD1 and QD32, 512 B … 1 MiB (above the 128 KiB max IO: split), 4 queues
  const qd1 = await blkio(['--path', device.socket, '--qd', '1', '--count', '48', '--seed', '3', '--min-size', '512', '--max-size', String(MiB), '--span', String(64 * MiB), 'verify']);
  t.is(qd1.code, 0, JSON.stringify(qd1.json));
  // the same session maps a second device with the queues extension: 4 virtqueues
  const mq = (await s.mapJson(`sessname=blya ${s.at} device_path=disk1.img queues=4`)).device;
  t.is(mq.name, 'ibnbd1');
  t.is(mq.queues, 4);
  const qd32 = await blkio(['--path', mq.socket, '--queues', '4', '--qd', '32', '--count', '60', '--seed', '4', '--min-size', '4096', '--max-size', String(MiB), '--offset', String(64 * MiB), '--span', String(64 * MiB), 'verify']);
  t.is(qd32.code, 0, JSON.stringify(qd32.json));
  const base = 192 * MiB;
  const w = await blkio(['--path', device.socket, '--queues', '1', '--qd', '8', '--count', '16', '--seed', '5', '--sequential', '--min-size', String(MiB), '--max-size', String(MiB), '--offset', String(base), 'write']);
  t.is(w.code, 0, JSON.stringify(w.json));
  t.is((await blkio(['--path', device.socket, 'flush'])).code, 0);
  t.true(fileBytes(join(s.exportsDir, 'disk0.img'), base, 16 * MiB).equals(expectedPattern(5, base, 16 * MiB)), 'the server file holds the pattern');

  const list = await ibnbdJson<{ devices: any[] }>(['list', '--control', s.client.control]);
  t.deepEqual(list.devices.map((d) => d.name), ['ibnbd0', 'ibnbd1']);
  t.is((await ibnbd(['unmap', 'ibnbd1', '--control', s.client.control])).code, 0);
  const shown = await ibnbdJson<{ device: any }>(['show', 'disk0.img', '--control', s.client.control]);
  t.is(shown.device.session, 'blya');
  t.is(shown.device.mapping_path, 'disk0.img');
  t.is(shown.device.access_mode, 'rw');
  t.is(shown.device.io_mode, 'blockio');
  t.true(shown.device.stats.requests > 0);
  t.is(shown.device.path_states.length, 1);
  t.like(shown.device.path_states[0], { state: 'connected', inflight: 0, reconnects: 0 });
  t.regex(shown.device.path_states[0].dst, reportedAddress(s.server.port), 'the path the map string named');
  t.is(shown.device.path_states[0].failovers, 0, 'one path: nothing to fail over to');
  t.true(shown.device.path_states[0].requests >= shown.device.stats.requests, 'every guest request completed on the one path (plus admin messages)');
  const human = (await ibnbd(['show', 'disk0.img', '--control', s.client.control])).stdout;
  t.regex(human, /^path_states\[0\]\.requests: +[1-9]\d*$/m, human);
  t.regex(human, /^path_states\[0\]\.failovers: +0$/m, human);

  t.is((await ibnbd(['unmap', 'ibnbd0', '--control', s.client.control])).code, 0);
  t.false(existsSync(device.socket), 'socket removed');
  t.false(existsSync(join(s.client.runDir, 'devices', 'disk0.img')), 'devices/<device_id> removed');
  const srv = await ibnbdJson<Record<string, any>>(['server', 'sessions', '--control', s.server.control]);
  t.is(JSON.stringify(srv).includes('blya'), false, 'the session closed with its last device');
});

test.serial('access_mode=ro: RO advertised, writes fail, the server shows read_only 1', async (t) => {
  const s = await setup(t, { 'ro.img': 16 * MiB });
  const { device } = await s.mapJson(`sessname=r1 ${s.at} device_path=ro.img access_mode=ro`);
  t.is(device.read_only, true);
  const noFlag = await blkio(['--path', device.socket, 'info']);
  t.not(noFlag.code, 0, 'libblkio refuses a writable start: the device advertises VIRTIO_BLK_F_RO');
  const w = await blkio(['--path', device.socket, '--read-only', '--count', '4', '--seed', '9', 'write']);
  t.not(w.code, 0, 'a write fails');
  const r = await blkio(['--path', device.socket, '--read-only', '--count', '4', '--seed', '9', '--min-size', '4096', '--max-size', '4096', 'check']);
  t.truthy(r.json, 'reads are served');
  const tree = (await ibnbd(['server', 'devices', '--control', s.server.control])).stdout;
  t.regex(tree, /sessions\/r1\/read_only: 1/);
  t.regex(tree, /sessions\/r1\/mapping_path: ro\.img/);
});

test.serial('map errors: EINVAL, ENOENT, EEXIST, EPERM through the CLI with exit codes', async (t) => {
  const s = await setup(t, { 'a.img': 8 * MiB });
  const bad = await s.map(`sessname=x ${s.at}`);
  t.is(bad.code, 22);
  t.regex(bad.stderr, /^ibnbd: EINVAL: .*device_path/m);
  const missing = await s.map(`sessname=x ${s.at} device_path=nope.img`);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /^ibnbd: ENOENT: /m);
  t.is((await s.map(`sessname=x ${s.at} device_path=a.img`)).code, 0);
  const again = await s.map(`sessname=x ${s.at} device_path=a.img`);
  t.is(again.code, 17);
  t.regex(again.stderr, /^ibnbd: EEXIST: /m);
  const writer2 = await s.map(`sessname=y ${s.at} device_path=a.img access_mode=rw`);
  t.is(writer2.code, 1);
  t.regex(writer2.stderr, /^ibnbd: EPERM: /m);
  t.is((await s.map(`sessname=y ${s.at} device_path=a.img access_mode=migration`)).code, 0, 'migration is the second writer RNBD allows');
  t.is((await s.map(`sessname=z ${s.at} device_path=a.img access_mode=ro`)).code, 0);
  const list = await ibnbdJson<{ devices: any[] }>(['list', '--control', s.client.control]);
  t.deepEqual(list.devices.map((d) => d.name), ['ibnbd0', 'ibnbd1', 'ibnbd2']);
  const unknown = await ibnbd(['unmap', 'ibnbd9', '--control', s.client.control]);
  t.is(unknown.code, 2);
  // a device_id mapped by several sessions is ambiguous; the name is not
  t.is((await ibnbd(['unmap', 'a.img', '--control', s.client.control])).code, 22);
  t.is((await ibnbd(['unmap', 'ibnbd1', '--control', s.client.control])).code, 0);
  // smallest free N again
  t.is((await s.mapJson(`sessname=w ${s.at} device_path=a.img access_mode=ro`)).device.name, 'ibnbd1');
});

test.serial('unmap: EBUSY while libblkio is attached; force fails in-flight IO and the daemon stays healthy', async (t) => {
  const s = await setup(t, { 'busy.img': 64 * MiB, 'other.img': 16 * MiB });
  const { device } = await s.mapJson(`sessname=b ${s.at} device_path=busy.img`);
  // runs until the forced unmap ends it: its runtime and per-request wait scale with the guest
  // (a TCG guest's CLI start alone can outlast an unscaled 20 s, leaving nothing to be busy with)
  const bench = blkioBench(['--path', device.socket, '--timeout-ms', String(scaled(1000)), '--rw', 'randwrite', '--qd', '32', '--runtime-ms', String(scaled(20_000))], scaled(60_000));
  const end = Date.now() + scaled(10_000);
  while (!(await showDevice(s.client.control, 'ibnbd0')).frontend_connected) {
    if (Date.now() > end) t.fail('libblkio never connected');
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 300)); // QD32 in flight
  const busy = await ibnbd(['unmap', 'ibnbd0', '--control', s.client.control]);
  t.is(busy.code, 16);
  t.regex(busy.stderr, /^ibnbd: EBUSY: /m);
  const t0 = Date.now();
  const forced = await ibnbd(['unmap', 'ibnbd0', '--force', '--control', s.client.control]);
  t.is(forced.code, 0, forced.stderr);
  const r = await bench;
  t.true(Date.now() - t0 < scaled(15_000), 'every in-flight request completed (libblkio did not hang)');
  // what it had sent was answered IOERR (tests/native/vhost-reopen.test.ts checks that to the
  // request); it stops at its first error, but may have sent a request or two after the device
  // went, which nobody answers: then it ends by its timeout (2) instead (1)
  t.true(r.code === 1 ? r.json.errors > 0 : r.code === 2, `libblkio ended on its IO errors or its timeout: ${JSON.stringify(r.json)}`);
  t.false(existsSync(device.socket));
  // healthy: maps and serves again
  const other = await s.mapJson(`sessname=b ${s.at} device_path=other.img`);
  t.is(other.device.name, 'ibnbd0');
  const v = await blkio(['--path', other.device.socket, '--qd', '8', '--count', '32', '--seed', '7', 'verify']);
  t.is(v.code, 0, JSON.stringify(v.json));
});

test.serial('server killed: the device goes closed within the heartbeat window and IO fails, not hangs', async (t) => {
  const s = await setup(t, { 'k.img': 16 * MiB }, ['--heartbeat-ms', '200', '--heartbeat-missed-max', '3']);
  // ctrl_loss_tmo=0: RNBD's behaviour (the daemon's default waits for the server instead)
  const { device } = await s.mapJson(`sessname=k ${s.at} device_path=k.img ctrl_loss_tmo=0`);
  t.is((await blkio(['--path', device.socket, '--count', '8', '--seed', '1', 'verify'])).code, 0);
  await s.server.stop('SIGKILL');
  const end = Date.now() + 5_000;
  let state = 'open';
  while (state !== 'closed' && Date.now() < end) {
    state = (await showDevice(s.client.control, 'ibnbd0')).state;
    if (state !== 'closed') await new Promise((r) => setTimeout(r, 50));
  }
  t.is(state, 'closed');
  const t0 = Date.now();
  const io = await blkio(['--path', device.socket, '--timeout-ms', '5000', '--count', '4', '--seed', '2', 'verify'], scaled(20_000));
  t.is(io.code, 1, `IO errors reported: ${JSON.stringify(io.json)}`);
  t.true(Date.now() - t0 < 8_000, 'requests failed quickly');
  t.is((await ibnbd(['unmap', 'ibnbd0', '--control', s.client.control])).code, 0, 'a closed device unmaps');
});

test.serial('SIGTERM: front-ends disconnected, sessions closed, sockets removed', async (t) => {
  const s = await setup(t, { 'q.img': 8 * MiB });
  const { device } = await s.mapJson(`sessname=q ${s.at} device_path=q.img`);
  t.is(await s.client.stop('SIGTERM'), 0);
  t.false(existsSync(device.socket));
  t.false(existsSync(s.client.control));
  const sessions = await ibnbdJson<Record<string, any>>(['server', 'sessions', '--control', s.server.control]);
  t.false(JSON.stringify(sessions).includes('"q"'), 'the server no longer lists the session');
});
