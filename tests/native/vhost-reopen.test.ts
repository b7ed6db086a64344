// What the client daemon does to a vhost-user-blk device after a re-OPEN (client-reconnect.test.ts
// drives it through real daemons): VhostBlk.setServerDeviceId switches the server device id the
// native IO path encodes — null cuts the device off with IOERR — and setSizeBytes changes the
// capacity the bounds checks and the config space use; a front-end disconnected while the device
// waits gets an answer for every request it made. In-process, so the sanitizer suite runs it.
import test from 'ava';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { decode, encode } from '../../src/proto/ibnbd.js';
import { sparseFile } from '../../harness/fixtures.js';
import { MiB, blkio, expectedPattern, fileBytes, mapDevice, optionsFromRsp, serveFile, startDevice, tool, toolEnv } from '../support/vhost-helpers.js';

const pattern = (seed: number, offset: number, count: number, size: number) => [
  '--seed', String(seed), '--count', String(count), '--sequential', '--min-size', String(size), '--max-size', String(size), '--offset', String(offset),
];

test.serial('setServerDeviceId: new requests carry the new id, null fails them with IOERR; setSizeBytes moves the end', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const otherFile = sparseFile(join(srv.dir, 'other.img'), 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  // a second device on the same session: the id the vhost device will be switched to
  const r = await m.session.request({ dir: 'read', usr: encode({ type: 'OPEN', accessMode: 'rw', ioMode: 'fileio', devName: 'other.img' }), readLen: 56 });
  t.is(r.errno, 0);
  const d = decode(r.data!);
  if (!d.ok || d.msg.type !== 'OPEN_RSP') return t.fail('bad OPEN_RSP');
  const otherId = d.msg.deviceId;
  t.not(otherId, m.rsp.deviceId);

  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'd.sock')));
  const w1 = await blkio(['--path', dev.socket, ...pattern(41, 0, 4, 64 * 1024), 'verify']);
  t.is(w1.code, 0, JSON.stringify(w1.json));
  t.true(fileBytes(srv.file, 0, 256 * 1024).equals(expectedPattern(41, 0, 256 * 1024)));

  // cut off: requests answered IOERR, nothing reaches either file
  dev.vhost.setServerDeviceId(null);
  const cut = await blkio(['--path', dev.socket, '--timeout-ms', '8000', ...pattern(42, MiB, 4, 64 * 1024), 'write']);
  t.is(cut.code, 1, JSON.stringify(cut.json));
  t.true(fileBytes(srv.file, MiB, 256 * 1024).equals(Buffer.alloc(256 * 1024)));
  t.true(fileBytes(otherFile, MiB, 256 * 1024).equals(Buffer.alloc(256 * 1024)));
  t.true(dev.vhost.stats().errors >= 1);

  // switched: the same socket now writes other.img
  dev.vhost.setServerDeviceId(otherId);
  const w2 = await blkio(['--path', dev.socket, ...pattern(43, MiB, 4, 64 * 1024), 'verify']);
  t.is(w2.code, 0, JSON.stringify(w2.json));
  t.true(fileBytes(otherFile, MiB, 256 * 1024).equals(expectedPattern(43, MiB, 256 * 1024)), 'the new id addressed other.img');
  t.true(fileBytes(srv.file, MiB, 256 * 1024).equals(Buffer.alloc(256 * 1024)), 'disk.img untouched');

  // capacity: a front-end connecting now reads 8 MiB in the config space and can use all of it
  dev.vhost.setSizeBytes(8 * MiB);
  const info = await blkio(['--path', dev.socket, 'info']);
  t.is(info.json.capacity, 8 * MiB, JSON.stringify(info.json));
  const inside = await blkio(['--path', dev.socket, ...pattern(44, 8 * MiB - 64 * 1024, 1, 64 * 1024), 'verify']);
  t.is(inside.code, 0, JSON.stringify(inside.json));

  t.throws(() => dev.vhost.setServerDeviceId(-1), { code: 'EINVAL' });
  t.throws(() => dev.vhost.setServerDeviceId(2 ** 32), { code: 'EINVAL' });
  t.throws(() => dev.vhost.setSizeBytes(1000), { code: 'EINVAL' });
  t.throws(() => dev.vhost.setSizeBytes(0), { code: 'EINVAL' });
  // the counters outlive close(), while it runs and after: `list` and `show` during a forced
  // unmap read them (they once threw EBADF there)
  const before = dev.vhost.stats();
  t.true(before.requests > 0);
  const closing = dev.vhost.close();
  t.is(dev.vhost.stats().requests, before.requests);
  await closing;
  t.is(dev.vhost.stats().requests, before.requests);
  t.throws(() => dev.vhost.setServerDeviceId(0), { code: 'EBADF' });
});

test.serial('setServerDeviceId(null, wait): requests wait unanswered, the id again sends them in order; (null) fails those that wait', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'w.sock')));
  t.is((await blkio(['--path', dev.socket, ...pattern(51, 0, 2, 64 * 1024), 'verify'])).code, 0);

  // waiting: a writer at QD4 gets no answer while the device is not open
  dev.vhost.setServerDeviceId(null, true);
  const writer = blkio(['--path', dev.socket, '--timeout-ms', '20000', '--qd', '4', ...pattern(52, MiB, 16, 64 * 1024), 'verify'], 30_000);
  await new Promise((r) => setTimeout(r, 1500));
  const during = dev.vhost.stats();
  t.is(during.errors, 0, 'nothing failed while waiting');
  t.true(fileBytes(srv.file, MiB, 16 * 64 * 1024).equals(Buffer.alloc(16 * 64 * 1024)), 'nothing reached the server');
  // open again under the same id: everything completes, verified, no error
  dev.vhost.setServerDeviceId(m.rsp.deviceId);
  const w = await writer;
  t.is(w.code, 0, JSON.stringify(w.json));
  t.true(fileBytes(srv.file, MiB, 16 * 64 * 1024).equals(expectedPattern(52, MiB, 16 * 64 * 1024)));
  t.is(dev.vhost.stats().errors, 0);
  t.is(dev.vhost.stats().waiting, 0);

  // waiting, then closed for good: what waited is answered IOERR, promptly
  dev.vhost.setServerDeviceId(null, true);
  const doomed = blkio(['--path', dev.socket, '--timeout-ms', '20000', '--qd', '4', ...pattern(53, 2 * MiB, 8, 64 * 1024), 'write'], 30_000);
  await new Promise((r) => setTimeout(r, 1000));
  const t0 = Date.now();
  dev.vhost.setServerDeviceId(null);
  const f = await doomed;
  t.is(f.code, 1, JSON.stringify(f.json));
  t.true(Date.now() - t0 < 5000, 'failed promptly once closed');
  t.true(dev.vhost.stats().errors >= 1);
  t.throws(() => dev.vhost.setServerDeviceId(1, true as never), { code: 'EINVAL' });
});

test.serial('disconnectFrontend while waiting: the requests still in the ring (never popped) are answered IOERR too', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'u.sock')));
  // the rings are not popped while the device waits: the 8 requests stay in the ring
  dev.vhost.setServerDeviceId(null, true);
  // spawned, not runTool: its "ready" on stderr must be read while it runs
  const front = spawn(tool('ibnbd-vhost-raw'), ['--path', dev.socket, '--timeout-ms', '10000', 'unanswered'], { env: toolEnv() });
  let out = '';
  let err = '';
  front.stdout.on('data', (b: Buffer) => (out += b.toString()));
  const ready = new Promise<void>((resolve) => front.stderr.on('data', (b: Buffer) => ((err += b.toString()), /ready/.test(err) && resolve())));
  const exited = new Promise<number | null>((resolve) => front.once('exit', resolve));
  t.teardown(() => void front.kill('SIGKILL'));
  await Promise.race([ready, exited]);
  t.regex(err, /ready/, `the front-end made its requests available: ${err}`);
  t.is(dev.vhost.stats().requests, 0, 'none popped');
  t.true(await dev.vhost.disconnectFrontend());
  t.is(await exited, 0, err);
  const r = JSON.parse(out.trim()) as { closed: boolean; used: number; statuses: number[] };
  t.true(r.closed);
  t.is(r.used, 8, 'all 8 in the used ring');
  t.deepEqual(r.statuses, Array(8).fill(1), 'each answered VIRTIO_BLK_S_IOERR');
  t.is(dev.vhost.stats().errors, 8);
});
