// The server's native IO path: IBNBD IO messages sent through a real transport session (TCP, or
// RDMA under IBNBD_TEST_TRANSPORT), executed with io_uring on real files and a loop device, every
// validation errno, and the device table's attach/detach/session-down life cycle. Plus
// probeDevice on both kinds of device.
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, openSync, readSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { encode, type IoOp } from '../../src/proto/ibnbd.js';
import { ClientSession } from '../../src/backend/transport.js';
import { NativeServer, probeDevice, type AttachDeviceSpec, type NativeServerEvent } from '../../src/backend/server-native.js';
import { TEST_TRANSPORT, scaled, testEndpoint } from '../support/transport-under-test.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { loopDevice } from '../support/server-helpers.js';

const LO = testEndpoint();
const EPERM = -1, EIO = -5, EINVAL = -22, ENOTCONN = -107, EOPNOTSUPP = -95;

interface Rig {
  server: NativeServer;
  client: ClientSession;
  sessionId: string;
  events: NativeServerEvent[];
}

async function rig(t: ExecutionContext): Promise<Rig> {
  const events: NativeServerEvent[] = [];
  const server = new NativeServer({ transport: TEST_TRANSPORT, listen: [LO] }, (ev) => events.push(ev));
  const port = server.start()[0]!.port;
  t.teardown(() => server.stop());
  const client = new ClientSession({ transport: TEST_TRANSPORT, sessname: `io-${port}`, paths: [{ dst: { ...LO, port } }] });
  t.teardown(() => client.close());
  await client.connect(scaled(5000));
  const end = Date.now() + scaled(3000);
  while (!events.some((e) => e.type === 'session-up')) {
    if (Date.now() > end) throw new Error('no session-up');
    await new Promise((r) => setTimeout(r, 5));
  }
  const up = events.find((e) => e.type === 'session-up')!;
  return { server, client, sessionId: up.sessionId, events };
}

interface IoArgs {
  dev: number;
  op: IoOp;
  offset: number;
  len: number;
  data?: Buffer;
  fua?: boolean;
  /** data length sent, when it must differ from len */
  dataLen?: number;
}

async function io(c: ClientSession, a: IoArgs): Promise<{ errno: number; data?: Buffer }> {
  const usr = encode({ type: 'IO', deviceId: a.dev, sector: BigInt(a.offset / 512), op: a.op, sync: false, fua: a.fua ?? false, biSize: a.len, prio: 0 });
  if (a.op === 'READ') return c.request({ dir: 'read', usr, readLen: a.dataLen ?? a.len });
  return c.request({ dir: 'write', usr, data: a.data ?? (a.dataLen !== undefined ? Buffer.alloc(a.dataLen) : undefined) });
}

function fileSpec(fd: number, size: number, extra: Partial<AttachDeviceSpec> = {}): AttachDeviceSpec {
  return { fd, direct: false, readOnly: false, sizeBytes: size, logicalBlockSize: 512, blockDevice: false, ...extra } as AttachDeviceSpec;
}

// up to the session's max IO size: 128 KiB over TCP; over RDMA the RTRS chunk (128 KiB) minus its
// header room, 124 KiB — still a multiple of every alignment used here
const sizes = (c: ClientSession) => [4096, 8192, 16384, 32768, 65536, c.maxIoSize];

async function randomWritesVerified(t: ExecutionContext, c: ClientSession, dev: number, size: number, rounds: number, align = 512): Promise<void> {
  const written: { off: number; buf: Buffer }[] = [];
  const SIZES = sizes(c);
  for (let i = 0; i < rounds; i++) {
    const len = SIZES[i % SIZES.length]!;
    const off = Math.floor(Math.random() * ((size - len) / align)) * align;
    const buf = randomBytes(len);
    const w = await io(c, { dev, op: 'WRITE', offset: off, len, data: buf, fua: i % 3 === 0 });
    t.is(w.errno, 0, `write ${len}@${off}`);
    written.push({ off, buf });
  }
  // later writes win where they overlap: check each range against the model
  const model = new Map<number, number>();
  for (const { off, buf } of written) for (let k = 0; k < buf.length; k += 512) model.set(off + k, written.indexOf(written.find((x) => x.buf === buf)!));
  let checked = 0;
  for (const { off, buf } of written) {
    const r = await io(c, { dev, op: 'READ', offset: off, len: buf.length });
    t.is(r.errno, 0);
    for (let k = 0; k < buf.length; k += 512) {
      const owner = written[model.get(off + k)!]!;
      const expect = owner.buf.subarray(off + k - owner.off, off + k - owner.off + 512);
      if (!r.data!.subarray(k, k + 512).equals(expect)) t.fail(`mismatch at ${off + k}`);
      checked++;
    }
  }
  t.true(checked > 0);
}

test('file, buffered: 4 KiB..max IO size random writes (some FUA) read back, FLUSH; past a shrunk end EIO', async (t) => {
  const dir = tempDir(t, 'srvio');
  const size = 16 << 20;
  const path = sparseFile(join(dir, 'f'), size);
  const fd = openSync(path, 'r+');
  const r = await rig(t);
  r.server.attachDevice(r.sessionId, 1, fileSpec(fd, size));
  closeSync(fd); // the native side holds its own descriptor
  await randomWritesVerified(t, r.client, 1, size, 24);
  t.is((await io(r.client, { dev: 1, op: 'FLUSH', offset: 0, len: 0 })).errno, 0);
  // the bytes are really in the file
  const probe = randomBytes(4096);
  t.is((await io(r.client, { dev: 1, op: 'WRITE', offset: 8192, len: 4096, data: probe })).errno, 0);
  const back = Buffer.alloc(4096);
  const rfd = openSync(path, 'r');
  readSync(rfd, back, 0, 4096, 8192);
  closeSync(rfd);
  t.deepEqual(back, probe);
  // the file shrinks under its advertised size: a READ past its end is EIO (io_uring's short
  // read), and the session carries on
  truncateSync(path, size / 2);
  t.is((await io(r.client, { dev: 1, op: 'READ', offset: size - r.client.maxIoSize, len: r.client.maxIoSize })).errno, EIO);
  const head = await io(r.client, { dev: 1, op: 'READ', offset: 8192, len: r.client.maxIoSize });
  t.is(head.errno, 0);
  t.deepEqual(head.data!.subarray(0, 4096), probe);
});

test('file, O_DIRECT: aligned IO works, misaligned offset or length is EINVAL', async (t) => {
  const dir = tempDir(t, 'srvdio');
  const size = 8 << 20;
  const path = sparseFile(join(dir, 'f'), size);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_DIRECT);
  } catch {
    t.pass('filesystem refuses O_DIRECT'); // /tmp on tmpfs before 6.6; not this kernel
    return;
  }
  const r = await rig(t);
  r.server.attachDevice(r.sessionId, 2, fileSpec(fd, size, { direct: true, logicalBlockSize: 4096 }));
  closeSync(fd);
  await randomWritesVerified(t, r.client, 2, size, 12, 4096);
  t.is((await io(r.client, { dev: 2, op: 'WRITE', offset: 512, len: 4096, data: Buffer.alloc(4096) })).errno, EINVAL);
  t.is((await io(r.client, { dev: 2, op: 'READ', offset: 0, len: 1024 })).errno, EINVAL);
});

test('file: DISCARD reads back zeroes, WRITE_ZEROES too, and neither moves data', async (t) => {
  const dir = tempDir(t, 'srvdisc');
  const size = 4 << 20;
  const path = sparseFile(join(dir, 'f'), size);
  const fd = openSync(path, 'r+');
  const pattern = Buffer.alloc(size, 0xa5);
  writeSync(fd, pattern, 0, size, 0);
  const r = await rig(t);
  r.server.attachDevice(r.sessionId, 3, fileSpec(fd, size));
  closeSync(fd);
  t.is((await io(r.client, { dev: 3, op: 'DISCARD', offset: 65536, len: 131072 })).errno, 0);
  t.is((await io(r.client, { dev: 3, op: 'WRITE_ZEROES', offset: 1 << 20, len: 8192 })).errno, 0);
  const before = await io(r.client, { dev: 3, op: 'READ', offset: 0, len: 65536 });
  t.true(before.data!.every((b) => b === 0xa5));
  const a = await io(r.client, { dev: 3, op: 'READ', offset: 65536, len: 65536 });
  t.true(a.data!.every((b) => b === 0));
  const b = await io(r.client, { dev: 3, op: 'READ', offset: (1 << 20) - 4096, len: 16384 });
  t.true(b.data!.subarray(0, 4096).every((x) => x === 0xa5));
  t.true(b.data!.subarray(4096, 12288).every((x) => x === 0));
  t.true(b.data!.subarray(12288).every((x) => x === 0xa5));
  // carrying data with a DISCARD is a protocol misuse
  t.is((await io(r.client, { dev: 3, op: 'DISCARD', offset: 0, len: 4096, dataLen: 4096 })).errno, EINVAL);
});

test('every validation errno', async (t) => {
  const dir = tempDir(t, 'srverr');
  const size = 1 << 20;
  const path = sparseFile(join(dir, 'f'), size);
  const fd = openSync(path, 'r+');
  const r = await rig(t);
  r.server.attachDevice(r.sessionId, 7, fileSpec(fd, size, { readOnly: true }));
  r.server.attachDevice(r.sessionId, 8, fileSpec(fd, size));
  closeSync(fd);
  const c = r.client;
  t.is((await io(c, { dev: 99, op: 'READ', offset: 0, len: 4096 })).errno, ENOTCONN, 'unknown device');
  for (const op of ['WRITE', 'DISCARD', 'WRITE_ZEROES', 'SECURE_ERASE'] as const) {
    t.is((await io(c, { dev: 7, op, offset: 0, len: 4096, data: op === 'WRITE' ? Buffer.alloc(4096) : undefined })).errno, EPERM, `${op} on read-only`);
  }
  t.is((await io(c, { dev: 7, op: 'READ', offset: 0, len: 4096 })).errno, 0, 'read-only still reads');
  t.is((await io(c, { dev: 8, op: 'READ', offset: size - 512, len: 1024 })).errno, EIO, 'beyond the end');
  t.is((await io(c, { dev: 8, op: 'DISCARD', offset: size, len: 512 })).errno, EIO, 'discard beyond the end');
  t.is((await io(c, { dev: 8, op: 'WRITE', offset: 0, len: 4096, dataLen: 2048 })).errno, EINVAL, 'data length != bi_size');
  t.is((await io(c, { dev: 8, op: 'READ', offset: 0, len: 4096, dataLen: 8192 })).errno, EINVAL, 'read length != bi_size');
  t.is((await io(c, { dev: 8, op: 'SECURE_ERASE', offset: 0, len: 4096 })).errno, EOPNOTSUPP, 'secure erase on a file');
  const raw = encode({ type: 'IO', deviceId: 8, sector: 0n, op: 'READ', sync: false, fua: false, biSize: 512, prio: 0 });
  const badOp = Buffer.from(raw);
  badOp.writeUInt32LE(9, 16);
  t.is((await c.request({ dir: 'read', usr: badOp, readLen: 512 })).errno, EOPNOTSUPP, 'unknown op');
  const badFlags = Buffer.from(raw);
  badFlags.writeUInt32LE(0 | (1 << 14), 16);
  t.is((await c.request({ dir: 'read', usr: badFlags, readLen: 512 })).errno, EINVAL, 'unknown flag');
  t.is((await c.request({ dir: 'write', usr: raw })).errno, EINVAL, 'READ op sent as a WRITE');
  t.is((await c.request({ dir: 'read', usr: raw.subarray(0, 20), readLen: 512 })).errno, EINVAL, 'truncated IO message');

  // the metrics (docs/operations.md, "Metrics"): every request that reached a device is counted
  // under its operation and its kind of error; what never named one (unknown device, undecodable
  // message) is not a device's
  const devs = r.server.stats(true).sessions[0]!.devices;
  const m = (id: number) => devs.find((d) => d.deviceId === id)!.io!;
  const ro = m(7);
  t.deepEqual([ro.read.requests, ro.read.bytes, ro.read.errors.invalid], [1, 4096, 0]);
  for (const op of ['write', 'discard', 'write_zeroes', 'other'] as const) t.deepEqual([ro[op].requests, ro[op].errors.invalid, ro[op].bytes], [1, 1, 0], op);
  const rw = m(8);
  t.deepEqual([rw.read.requests, rw.read.errors.invalid, rw.read.bytes], [3, 3, 0], 'beyond the end, read length, READ sent as a WRITE');
  t.deepEqual([rw.discard.errors.invalid, rw.write.errors.invalid], [1, 1]);
  t.deepEqual([rw.other.requests, rw.other.errors.unsupported, rw.other.errors.invalid], [1, 1, 0], 'secure erase on a file');
  t.is(rw.read.latencyBuckets.reduce((a, b) => a + b, 0), 3, 'every request in the histogram');
});

test('loop device, O_DIRECT: random IO verified, DISCARD and WRITE_ZEROES by ioctl read back zeroes', async (t) => {
  const dir = tempDir(t, 'srvloop');
  const size = 16 << 20;
  const dev = loopDevice(t, sparseFile(join(dir, 'backing'), size));
  const fd = openSync(dev, constants.O_RDWR | constants.O_DIRECT);
  t.teardown(() => closeSync(fd));
  const g = await probeDevice(fd);
  t.is(g.sizeBytes, size);
  t.true(g.isBlockDevice);
  t.is(g.logicalBlockSize, 512);
  const r = await rig(t);
  r.server.attachDevice(r.sessionId, 5, { fd, direct: true, readOnly: false, sizeBytes: size, logicalBlockSize: g.logicalBlockSize, blockDevice: true });
  await randomWritesVerified(t, r.client, 5, size, 18, 4096);
  t.is((await io(r.client, { dev: 5, op: 'WRITE', offset: 0, len: 65536, data: Buffer.alloc(65536, 0x5a) })).errno, 0);
  t.is((await io(r.client, { dev: 5, op: 'WRITE_ZEROES', offset: 0, len: 8192 })).errno, 0);
  const d = await io(r.client, { dev: 5, op: 'DISCARD', offset: 16384, len: 16384 });
  t.true(d.errno === 0 || d.errno === EOPNOTSUPP, `discard errno ${d.errno}`);
  const back = await io(r.client, { dev: 5, op: 'READ', offset: 0, len: 65536 });
  t.true(back.data!.subarray(0, 8192).every((x) => x === 0), 'write-zeroes range');
  t.true(back.data!.subarray(8192, 16384).every((x) => x === 0x5a), 'untouched range');
  if (d.errno === 0) t.true(back.data!.subarray(16384, 32768).every((x) => x === 0), 'loop discard punches the backing file');
  t.is((await io(r.client, { dev: 5, op: 'FLUSH', offset: 0, len: 0 })).errno, 0);
  t.is((await io(r.client, { dev: 5, op: 'READ', offset: 0, len: 1000 })).errno, EINVAL, 'length not a multiple of the logical block on O_DIRECT');
});

test('detachDevice resolves and later IO on the id is ENOTCONN; session down empties the table', async (t) => {
  const dir = tempDir(t, 'srvdet');
  const size = 1 << 20;
  const fd = openSync(sparseFile(join(dir, 'f'), size), 'r+');
  const r = await rig(t);
  r.server.attachDevice(r.sessionId, 1, fileSpec(fd, size));
  t.throws(() => r.server.attachDevice(r.sessionId, 1, fileSpec(fd, size)), { code: 'EEXIST' });
  closeSync(fd);
  const inflight = Array.from({ length: 16 }, (_, i) => io(r.client, { dev: 1, op: 'WRITE', offset: i * 4096, len: 4096, data: Buffer.alloc(4096, i) }));
  await r.server.detachDevice(r.sessionId, 1);
  const results = await Promise.all(inflight);
  t.true(results.every((x) => x.errno === 0 || x.errno === ENOTCONN));
  t.is((await io(r.client, { dev: 1, op: 'READ', offset: 0, len: 4096 })).errno, ENOTCONN);
  await t.throwsAsync(async () => r.server.detachDevice(r.sessionId, 1), { code: 'ENOENT' });
  t.is(r.server.stats().sessions.length, 1);
  await r.client.close();
  const end = Date.now() + scaled(3000);
  while (!r.events.some((e) => e.type === 'session-down')) {
    if (Date.now() > end) throw new Error('no session-down');
    await new Promise((res) => setTimeout(res, 5));
  }
  t.is(r.server.stats().sessions.length, 0);
  t.throws(() => r.server.attachDevice(r.sessionId, 2, fileSpec(0, size)), { code: 'ENOENT' });
});

test('probeDevice on a file reports its size and probed punch-hole/zero-range support', async (t) => {
  const dir = tempDir(t, 'srvprobe');
  const path = sparseFile(join(dir, 'f'), 3 << 20);
  const fd = openSync(path, 'r+');
  t.teardown(() => closeSync(fd));
  const g = await probeDevice(fd);
  t.is(g.sizeBytes, 3 << 20);
  t.false(g.isBlockDevice);
  t.is(g.logicalBlockSize, 512);
  t.is(g.physicalBlockSize, 4096);
  t.true(g.maxDiscardSectors > 0, '/tmp supports punch-hole');
  t.true(g.maxWriteZeroesSectors > 0, '/tmp supports zero-range');
  await t.throwsAsync(probeDevice(-1), { code: 'EBADF' });
});

test('closeSession drops the client: session-down on the server, DISCONNECTED and ENOTCONN on the client', async (t) => {
  const events: NativeServerEvent[] = [];
  const server = new NativeServer({ transport: TEST_TRANSPORT, listen: [LO] }, (ev) => events.push(ev));
  const port = server.start()[0]!.port;
  t.teardown(() => server.stop());
  const links: string[] = [];
  // no reconnect: the first attempt after a loss goes at once, and this test is about the drop itself
  const client = new ClientSession({ transport: TEST_TRANSPORT, sessname: 'closing', paths: [{ dst: { ...LO, port } }], maxReconnectAttempts: 0 }, (e) => links.push(e));
  t.teardown(() => client.close());
  await client.connect(scaled(5000));
  const wait = async (cond: () => boolean, what: string): Promise<void> => {
    const end = Date.now() + scaled(3000);
    while (!cond()) {
      if (Date.now() > end) throw new Error(`no ${what}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  await wait(() => events.some((e) => e.type === 'session-up'), 'session-up');
  server.closeSession(events[0]!.sessionId);
  await wait(() => events.some((e) => e.type === 'session-down'), 'session-down');
  await wait(() => links.includes('disconnected'), 'disconnected');
  t.is(server.stats().sessions.length, 0);
  t.is((await io(client, { dev: 1, op: 'READ', offset: 0, len: 512 })).errno, ENOTCONN);
  t.throws(() => server.closeSession(events[0]!.sessionId), { code: 'ENOENT' });
});
