// The export server over the real native transport: a test client (NativeClientSession + the TS
// codec) runs SESS_INFO → OPEN → IO → CLOSE against regular files and loop block devices in both
// io_modes, checks the OPEN refusals with their errno, the access-mode matrix across two
// sessions (with a session killed), and the introspection tree before and after CLOSE.
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../../src/server/daemon.js';
import { validateServerOptions } from '../../src/server/options.js';
import { silentLogger } from '../../src/logger.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { TWO_SESSION_ACCESS_MATRIX, TestClient, loopDevice, pattern, startHolder } from '../support/server-helpers.js';
import { TEST_TRANSPORT, reportedAddress, scaled, testListen } from '../support/transport-under-test.js';

const E = constants.errno;
const MiB = 1 << 20;

function serve(t: import('ava').ExecutionContext, devSearchPath: string): { running: RunningServer; port: number } {
  const opts = validateServerOptions({ listen: [testListen(0)], transport: TEST_TRANSPORT, devSearchPath, control: '/unused.sock' });
  const running = startServer(opts, silentLogger);
  t.teardown(() => running.stop());
  const port = Number(running.bound[0]!.split(':').pop());
  return { running, port };
}

async function client(t: import('ava').ExecutionContext, port: number, sessname: string): Promise<TestClient> {
  const c = await TestClient.connect(port, sessname);
  t.teardown(() => c.close());
  return c;
}

/** Random writes 4 KiB…max IO size at random offsets, mirrored in a shadow copy; then verified reads. */
async function randomWritesVerified(t: import('ava').ExecutionContext, c: TestClient, id: number, size: number, seed: number) {
  const shadow = Buffer.alloc(size);
  const maxBlocks = Math.floor(c.maxIoSize / 4096);
  let rnd = seed;
  const next = () => (rnd = (Math.imul(rnd, 1103515245) + 12345) >>> 0);
  for (let i = 0; i < 32; i++) {
    const len = 4096 * (1 + (next() % maxBlocks));
    const off = 4096 * (next() % ((size - len) / 4096 + 1));
    const data = pattern(seed + i, off, len);
    t.is(await c.write(id, off, data, i % 5 === 0), 0, `write ${len} at ${off}`);
    data.copy(shadow, off);
  }
  for (let i = 0; i < 32; i++) {
    const len = 4096 * (1 + (next() % maxBlocks));
    const off = 4096 * (next() % ((size - len) / 4096 + 1));
    const r = await c.read(id, off, len);
    t.is(r.errno, 0);
    t.true(r.data!.equals(shadow.subarray(off, off + len)), `read ${len} at ${off} matches`);
  }
  return shadow;
}

for (const kind of ['file', 'loop'] as const) {
  for (const ioMode of ['blockio', 'fileio'] as const) {
    test.serial(`${kind} ${ioMode}: SESS_INFO, OPEN, verified IO, FLUSH, DISCARD, WRITE_ZEROES, CLOSE, tree`, async (t) => {
      const dir = tempDir(t, 'srvio');
      const size = 8 * MiB;
      const backing = sparseFile(join(dir, 'disk.img'), size);
      let search: string;
      let devName: string;
      let blockDev: string;
      if (kind === 'loop') {
        const loop = loopDevice(t, backing);
        search = '/';
        devName = loop;
        blockDev = loop;
      } else {
        search = dir;
        devName = 'disk.img';
        blockDev = backing;
      }
      const { running, port } = serve(t, search);
      const c = await client(t, port, `io-${kind}-${ioMode}`);
      t.is(await c.sessInfo(2), 2);
      const o = await c.open(devName, 'rw', ioMode);
      t.is(o.errno, 0);
      const rsp = o.rsp!;
      t.is(rsp.nsectors, BigInt(size / 512));
      t.true(rsp.logicalBlockSize >= 512 && rsp.physicalBlockSize >= rsp.logicalBlockSize);
      const id = rsp.deviceId;

      // the descriptors really carry the io_mode: blockio one O_DIRECT descriptor; fileio a
      // buffered reader and an O_DIRECT writer (ext4 and loop devices both have O_DIRECT)
      const dev = [...running.server.sessions.values()][0]!.devices.get(id)!;
      const direct = (fd: number) => (parseInt(/^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8) & 0o40000) !== 0;
      if (ioMode === 'blockio') {
        t.is(dev.fds.readFd, dev.fds.writeFd);
        t.true(direct(dev.fds.readFd), 'blockio: O_DIRECT');
      } else {
        t.not(dev.fds.readFd, dev.fds.writeFd);
        t.false(direct(dev.fds.readFd), 'fileio reads through the page cache');
        t.true(direct(dev.fds.writeFd), 'fileio writes O_DIRECT');
      }

      const tree = running.server.devices();
      t.is(tree.length, 1);
      t.is(tree[0]!.block_dev, blockDev);
      t.deepEqual(
        tree[0]!.sessions.map((s) => [s.sessname, s.read_only, s.mapping_path, s.io_mode]),
        [[c.sessname, 0, devName, ioMode]],
      );
      const sess = running.server.sessionList();
      t.is(sess.length, 1);
      t.is(sess[0]!.ver, 2);
      t.regex(sess[0]!.paths[0]?.src ?? '', reportedAddress(), 'client address');
      t.deepEqual(sess[0]!.devices.map((d) => [d.device_id, d.mapping_path, d.inflight]), [[id, devName, 0]]);

      const shadow = await randomWritesVerified(t, c, id, size, kind === 'file' ? 7 : 11);
      t.is(await c.noData(id, 'FLUSH', 0, 0), 0, 'FLUSH');

      // WRITE_ZEROES and (on files) DISCARD read back zeroes
      if (kind === 'file') t.true(rsp.maxWriteZeroesSectors > 0, 'ext4 file: zero range advertised');
      if (rsp.maxWriteZeroesSectors > 0) {
        t.is(await c.noData(id, 'WRITE_ZEROES', MiB, 64 * 1024), 0, 'WRITE_ZEROES');
        shadow.fill(0, MiB, MiB + 64 * 1024);
        const z = await c.read(id, MiB - 4096, 64 * 1024 + 8192);
        t.true(z.data!.equals(shadow.subarray(MiB - 4096, MiB + 64 * 1024 + 4096)), 'zeroes exactly in range');
      }
      if (kind === 'file') {
        t.true(rsp.maxDiscardSectors > 0, 'ext4 file: punch hole advertised');
        t.is(await c.noData(id, 'DISCARD', 2 * MiB, 64 * 1024), 0, 'DISCARD');
        shadow.fill(0, 2 * MiB, 2 * MiB + 64 * 1024);
        const z = await c.read(id, 2 * MiB, 64 * 1024);
        t.true(z.data!.every((b) => b === 0), 'discarded range reads zeroes');
      }
      // the backing object holds exactly what the client wrote
      t.is(await c.noData(id, 'FLUSH', 0, 0), 0);
      if (kind === 'file') t.true(readFileSync(backing).equals(shadow), 'file content equals the shadow copy');

      // IO errors
      t.not((await c.read(id, size, 4096)).errno, 0, 'read past the end refused');
      t.not(await c.write(id, size - 4096, Buffer.alloc(8192)), 0, 'write crossing the end refused');
      t.is((await c.read(id + 100, 0, 4096)).errno, E.ENOTCONN, 'IO on an unknown device id: ENOTCONN');

      t.is(await c.close_(id), 0);
      t.is(await c.close_(id), 0, 'second CLOSE: unknown id ignored');
      t.deepEqual(running.server.devices(), [], 'entry gone after CLOSE');
      t.deepEqual(running.server.sessionList()[0]!.devices, []);
      t.is((await c.read(id, 0, 4096)).errno, E.ENOTCONN, 'IO after CLOSE');
    });
  }
}

// tmpfs is memory: the server copies READ/WRITE on its IO thread instead of io_uring
// (io_path.cc CopyInline). Same guarantees: every byte written reads back, FUA writes land, a
// file shrunk behind the server's back gives EIO inside the advertised size, never short data.
test.serial('tmpfs file fileio: verified IO through the inline copy path, EIO past a shrunk end', async (t) => {
  const dir = mkdtempSync(join('/dev/shm', 'ibnbd-srvio-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const size = 8 * MiB;
  const backing = sparseFile(join(dir, 'disk.img'), size);
  const { port } = serve(t, dir);
  const c = await client(t, port, 'io-tmpfs-fileio');
  t.is(await c.sessInfo(2), 2);
  const o = await c.open('disk.img', 'rw', 'fileio');
  t.is(o.errno, 0);
  const id = o.rsp!.deviceId;
  const shadow = await randomWritesVerified(t, c, id, size, 5);
  t.is(await c.noData(id, 'FLUSH', 0, 0), 0, 'FLUSH');
  t.true(readFileSync(backing).equals(shadow), 'file content equals the shadow copy');
  truncateSync(backing, size / 2);
  const max = c.maxIoSize; // a multiple of 4 KiB on both transports
  const r = await c.read(id, size - max, max);
  t.is(r.errno, E.EIO, 'read beyond the shrunk end: EIO');
  t.is(r.data, undefined);
  const head = await c.read(id, 0, max);
  t.is(head.errno, 0);
  t.true(head.data!.equals(shadow.subarray(0, max)), 'data before the shrunk end still reads');
  t.is(await c.close_(id), 0);
});

test.serial('OPEN refusals over the wire, each with its errno', async (t) => {
  const root = tempDir(t, 'srvio');
  const search = join(root, 'exports');
  mkdirSync(join(search, 'dev'), { recursive: true });
  sparseFile(join(search, 'dev', 'ram0'), MiB);
  sparseFile(join(search, 'disk'), MiB);
  writeFileSync(join(root, 'secret'), 'secret');
  symlinkSync(join(root, 'secret'), join(search, 'out'));
  const { port } = serve(t, search);
  const a = await client(t, port, 'ra');
  const b = await client(t, port, 'rb');
  await a.sessInfo();
  t.is((await a.open('../secret')).errno, E.EINVAL);
  t.is((await a.open('a/../../etc/passwd')).errno, E.EINVAL);
  t.is((await a.open('out')).errno, E.EPERM, 'symlink out of the search path');
  t.is((await a.open('missing')).errno, E.ENOENT);
  t.is((await a.open('dev')).errno, E.EINVAL, 'a directory');
  const ram = await a.open('/dev/ram0', 'ro');
  t.is(ram.errno, 0, 'absolute device_path opens inside the search path');
  t.is(ram.rsp!.nsectors, BigInt(MiB / 512));
  const w = await a.open('disk', 'rw');
  t.is(w.errno, 0);
  t.is((await a.open('disk', 'rw')).rsp!.deviceId, w.rsp!.deviceId, 're-OPEN: same id');
  t.is((await a.open('/disk', 'ro')).errno, E.EEXIST, 'same device under another name in one session');
  t.is((await b.open('disk', 'rw')).errno, E.EPERM, 'second rw writer');
  // RO open refuses writes
  const r = await b.open('disk', 'ro');
  t.is(r.errno, 0);
  t.not(await b.write(r.rsp!.deviceId, 0, Buffer.alloc(4096)), 0, 'write on a ro open refused');
  // malformed admin messages get an errno, the session keeps working
  t.is((await a.raw('read', Buffer.from([0x09, 0, 0, 0]), undefined, 56)).errno, E.EPROTO);
  t.is((await a.raw('read', Buffer.from([0x03, 0, 0, 0, 1, 2, 3, 4]), undefined, 56)).errno !== 0, true);
  t.is(await a.sessInfo(1), 1);
});

test.serial('access-mode matrix across two sessions; a killed session releases its writer', async (t) => {
  const dir = tempDir(t, 'srvio');
  sparseFile(join(dir, 'disk'), MiB);
  const { running, port } = serve(t, dir);
  const a = await client(t, port, 'ma');
  const b = await client(t, port, 'mb');
  for (const [m1, m2, want] of TWO_SESSION_ACCESS_MATRIX) {
    const o1 = await a.open('disk', m1);
    t.is(o1.errno, 0);
    const o2 = await b.open('disk', m2);
    t.is(o2.errno, want, `${m1} then ${m2}`);
    t.is(await a.close_(o1.rsp!.deviceId), 0);
    if (o2.errno === 0) t.is(await b.close_(o2.rsp!.deviceId), 0);
  }
  t.deepEqual(running.server.devices(), []);

  // a session in another process opens rw and is killed (SIGKILL: no CLOSE, no goodbye)
  const holder = await startHolder(t, port, 'killed', 'disk', 'rw');
  t.regex(holder.line, /^opened 0/);
  t.is((await a.open('disk', 'rw')).errno, E.EPERM, 'the holder writes');
  t.deepEqual(running.server.devices()[0]!.sessions.map((s) => s.sessname), ['killed']);
  holder.child.kill('SIGKILL');
  const deadline = Date.now() + scaled(15_000);
  while (running.server.devices().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(running.server.devices(), [], 'entry gone when the session died');
  const again = await a.open('disk', 'rw');
  t.is(again.errno, 0, 'writer released with the dead session');
});

test.serial('force-close over the wire: IO on the id fails, CLOSE frees it, a re-OPEN gets a new id', async (t) => {
  const dir = tempDir(t, 'srvio');
  sparseFile(join(dir, 'disk'), MiB);
  const { running, port } = serve(t, dir);
  const c = await client(t, port, 'fc');
  const o = await c.open('disk', 'rw');
  t.is(await c.write(o.rsp!.deviceId, 0, Buffer.alloc(4096, 1)), 0);
  const name = running.server.devices()[0]!.name;
  t.deepEqual(running.server.forceClose('fc', name), { sessname: 'fc', device_id: 0 });
  t.is((await c.read(0, 0, 4096)).errno, E.ENOTCONN, 'IO on a force-closed id');
  t.deepEqual(running.server.devices(), []);
  const again = await c.open('disk', 'rw');
  t.is(again.errno, 0, 'the writer was released');
  t.is(again.rsp!.deviceId, 1, 'the force-closed id stays reserved');
  t.is(await c.close_(0), 0);
  t.deepEqual(running.server.sessionList()[0]!.closed_ids, []);
  t.is((await c.read(1, 0, 4096)).data![0], 1, 'the data written before is there');
});

test.serial('devices tree counts opens and writers; a killed rw holder gives back its open and the rw slot, a ro reader stays', async (t) => {
  const dir = tempDir(t, 'srvio');
  sparseFile(join(dir, 'disk'), MiB);
  const { running, port } = serve(t, dir);
  const counts = () => running.server.devices().map((d) => ({ opens: d.opens, writers: d.writers, sessions: d.sessions.map((s) => s.sessname) }));
  const holder = await startHolder(t, port, 'holder', 'disk', 'rw');
  t.regex(holder.line, /^opened 0/);
  const reader = await client(t, port, 'reader');
  const ro = await reader.open('disk', 'ro');
  t.is(ro.errno, 0, 'ro next to a rw holder');
  const mig = await client(t, port, 'mig');
  const m = await mig.open('disk', 'migration');
  t.is(m.errno, 0, 'migration next to a rw holder');
  t.deepEqual(counts(), [{ opens: 3, writers: 2, sessions: ['holder', 'mig', 'reader'] }]);
  t.is(await mig.close_(m.rsp!.deviceId), 0);
  t.deepEqual(counts(), [{ opens: 2, writers: 1, sessions: ['holder', 'reader'] }], 'CLOSE gives back one open and one writer');
  const writer = await client(t, port, 'writer');
  t.is((await writer.open('disk', 'rw')).errno, E.EPERM, 'the holder has the rw slot');
  holder.child.kill('SIGKILL');
  const deadline = Date.now() + scaled(15_000);
  while (counts()[0]!.opens > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(counts(), [{ opens: 1, writers: 0, sessions: ['reader'] }], 'the dead session gave back its open and its writer');
  const rw = await writer.open('disk', 'rw');
  t.is(rw.errno, 0, 'the rw slot is free while the reader stays');
  t.is(await writer.write(rw.rsp!.deviceId, 0, Buffer.alloc(4096, 7)), 0);
  t.is((await reader.read(ro.rsp!.deviceId, 0, 4096)).data![0], 7, 'the reader sees the new writer\'s bytes');
  t.deepEqual(counts(), [{ opens: 2, writers: 1, sessions: ['reader', 'writer'] }]);
});
