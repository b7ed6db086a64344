// The vhost-user-blk data path end to end: libblkio (our ibnbd-blkio tool, driver
// virtio-blk-vhost-user) → NativeVhostBlk → real NativeClientSession over TCP → the real export
// server → a real file, whose bytes are checked at the offsets written. Also a hand-written
// front-end (ibnbd-vhost-raw) for feature/config probing and malformed vhost-user messages.
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadNative } from '../../src/backend/native.js';
import { VhostBlk, validateVhostOptions } from '../../src/backend/vhost.js';
import type { NativeLogLine } from '../../src/backend/native-log.js';
import {
  IO_THREADS,
  MiB,
  blkio,
  blkioBench,
  expectedPattern,
  fileBytes,
  mapDevice,
  optionsFromRsp,
  raw,
  serveFile,
  startDevice,
  waitFor,
} from '../support/vhost-helpers.js';

const bit = (features: string, b: number) => (BigInt(features) >> BigInt(b)) & 1n;

test.serial('features and config space follow the device: RO, MQ, limits, protocol features', async (t) => {
  const srv = serveFile(t, 64 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const rw = startDevice(t, optionsFromRsp(m, join(srv.dir, 'rw.sock'), { queues: 4, discard: { maxSectors: 8192, granularity: 4096 }, writeZeroes: { maxSectors: 16384 } }));
  const p = await raw(['--path', rw.socket, 'probe']);
  t.is(p.code, 0, p.stderr);
  const f = p.json.features as string;
  t.is(bit(f, 5), 0n, 'no RO on a read-write mapping');
  for (const [b, name] of [[1, 'SIZE_MAX'], [2, 'SEG_MAX'], [6, 'BLK_SIZE'], [9, 'FLUSH'], [10, 'TOPOLOGY'], [11, 'CONFIG_WCE'], [12, 'MQ'], [13, 'DISCARD'], [14, 'WRITE_ZEROES'], [28, 'INDIRECT_DESC'], [29, 'EVENT_IDX'], [32, 'VERSION_1']] as const)
    t.is(bit(f, b), 1n, name);
  t.is(bit(f, 16), 0n, 'no SECURE_ERASE unless the server supports it');
  const pf = p.json.protocolFeatures as string;
  // BACKEND_REQ: the channel a resize tells the front-end on (CONFIG_CHANGE_MSG)
  // LOG_SHMFD (and VHOST_F_LOG_ALL): migration's dirty log, vhost-dirty-log.test.ts
  for (const [b, name] of [[0, 'MQ'], [1, 'LOG_SHMFD'], [3, 'REPLY_ACK'], [5, 'BACKEND_REQ'], [9, 'CONFIG'], [12, 'INFLIGHT_SHMFD'], [15, 'CONFIGURE_MEM_SLOTS']] as const)
    t.is(bit(pf, b), 1n, `protocol ${name}`);
  t.is(bit(f, 26), 1n, 'VHOST_F_LOG_ALL');
  for (const [b, name] of [[8, 'PAGEFAULT'], [10, 'BACKEND_SEND_FD'], [11, 'HOST_NOTIFIER']] as const)
    t.is(bit(pf, b), 0n, `protocol ${name} not offered`);
  t.is(p.json.queueNum, 4);
  const cfg = Buffer.from(p.json.config as string, 'hex');
  t.is(cfg.readBigUInt64LE(0), 64n * 2048n, 'capacity in 512-byte sectors');
  t.is(cfg.readUInt32LE(8), m.session.maxIoSize, 'size_max = session max IO size');
  t.true(cfg.readUInt32LE(12) >= 1, 'seg_max');
  t.is(cfg.readUInt32LE(20), m.rsp.logicalBlockSize, 'blk_size');
  t.is(cfg.readUInt16LE(34), 4, 'num_queues');
  t.is(cfg.readUInt32LE(36), 8192, 'max_discard_sectors');
  t.is(cfg.readUInt32LE(44), 8, 'discard_sector_alignment = granularity / 512');
  t.is(cfg.readUInt32LE(48), 16384, 'max_write_zeroes_sectors');
  t.is(cfg[56], 1, 'write_zeroes_may_unmap');
  const after = Buffer.from(p.json.configAfterSet as string, 'hex');
  t.is(after[32], cfg[32] ? 0 : 1, 'SET_CONFIG changed writeback');
  t.is(after.readBigUInt64LE(0), 64n * 2048n, 'SET_CONFIG of capacity ignored');
  t.true(p.json.inflightFd && p.json.inflightMmapSize > 0, 'GET_INFLIGHT_FD hands out a shared buffer');

  const ro = startDevice(t, optionsFromRsp(m, join(srv.dir, 'ro.sock'), { readOnly: true, discard: { maxSectors: 8192 }, writeZeroes: { maxSectors: 8192 } }));
  const q = await raw(['--path', ro.socket, 'probe']);
  t.is(bit(q.json.features, 5), 1n, 'RO advertised for readOnly');
  t.is(bit(q.json.features, 13), 0n, 'no DISCARD on a read-only device');
  t.is(bit(q.json.features, 14), 0n, 'no WRITE_ZEROES on a read-only device');
  t.is(q.json.queueNum, 1);
  const info = await blkio(['--path', rw.socket, '--queues', '4', 'info']);
  t.is(info.code, 0, JSON.stringify(info.json));
  t.is(info.json.capacity, 64 * MiB);
});

test.serial('verified patterns at QD1 and QD32, random offsets, 512 B…1 MiB (split), bytes in the server file', async (t) => {
  const srv = serveFile(t, 256 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'd.sock')));

  const qd1 = await blkio(['--path', dev.socket, '--qd', '1', '--count', '64', '--seed', '11', '--min-size', '512', '--max-size', '65536', '--span', String(64 * MiB), 'verify']);
  t.is(qd1.code, 0, JSON.stringify(qd1.json));
  t.is(qd1.json.read.mismatches, 0);
  t.is(qd1.json.write.requests, 64);

  const qd32 = await blkio(['--path', dev.socket, '--qd', '32', '--count', '120', '--seed', '12', '--min-size', '512', '--max-size', String(MiB), '--offset', String(64 * MiB), '--span', String(128 * MiB), 'verify']);
  t.is(qd32.code, 0, JSON.stringify(qd32.json));
  t.is(qd32.json.read.mismatches, 0);
  t.is(qd32.json.read.errors, 0);
  t.true(dev.vhost.stats().splits > 0, 'requests above max IO size were split');

  // Deterministic layout, checked byte for byte in the server's file: 24 × 96 KiB from 200 MiB.
  const base = 200 * MiB;
  const w = await blkio(['--path', dev.socket, '--qd', '8', '--count', '24', '--seed', '13', '--sequential', '--min-size', String(96 * 1024), '--max-size', String(96 * 1024), '--offset', String(base), 'write']);
  t.is(w.code, 0, JSON.stringify(w.json));
  const got = fileBytes(srv.file, base, 24 * 96 * 1024);
  t.true(got.equals(expectedPattern(13, base, 24 * 96 * 1024)), 'file holds the pattern at the written offsets');
  t.true(fileBytes(srv.file, base - 4096, 4096).equals(Buffer.alloc(4096)), 'bytes before untouched');
  t.true(fileBytes(srv.file, base + 24 * 96 * 1024, 4096).equals(Buffer.alloc(4096)), 'bytes after untouched');
  // and read back through a new connection (the front-end reconnects on the same socket)
  const c = await blkio(['--path', dev.socket, '--qd', '4', '--count', '24', '--seed', '13', '--sequential', '--min-size', String(96 * 1024), '--max-size', String(96 * 1024), '--offset', String(base), 'check']);
  t.is(c.code, 0, JSON.stringify(c.json));
  const s = dev.vhost.stats();
  t.is(s.errors, 0);
  t.is(s.inflight, 0);
  t.true(s.connections >= 4);
});

test.serial('4 queues: every queue carries verified IO', async (t) => {
  const srv = serveFile(t, 128 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'mq.sock'), { queues: 4 }));
  t.is(loadNative<{ ioThreadCount(): number }>().ioThreadCount(), IO_THREADS, 'queues spread over several IO threads');
  const r = await blkio(['--path', dev.socket, '--queues', '4', '--qd', '16', '--count', '200', '--seed', '21', '--min-size', '4096', '--max-size', String(256 * 1024), 'verify']);
  t.is(r.code, 0, JSON.stringify(r.json));
  t.is(r.json.read.mismatches, 0);
  const s = dev.vhost.stats();
  t.is(s.queues.length, 4);
  for (const [i, q] of s.queues.entries()) t.true(q.requests >= 100, `queue ${i} served ${q.requests}`);
  t.is(s.requests, 400);
  // the per-operation metrics are what those totals are made of, summed over the four queues
  const io = dev.vhost.stats(true).io!;
  t.deepEqual([io.write.requests, io.read.requests, io.write.bytes, io.read.bytes], [200, 200, s.writeBytes, s.readBytes]);
  t.is(io.read.latencyBuckets.reduce((a, b) => a + b, 0), 200);
});

test.serial('FLUSH, DISCARD and WRITE_ZEROES reach the server file', async (t) => {
  const srv = serveFile(t, 32 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  t.true(m.rsp.maxDiscardSectors > 0 && m.rsp.maxWriteZeroesSectors > 0, 'the server offers range operations on a file');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'r.sock')));
  const base = 4 * MiB;
  const w = await blkio(['--path', dev.socket, '--qd', '4', '--count', '16', '--seed', '31', '--sequential', '--min-size', String(256 * 1024), '--max-size', String(256 * 1024), '--offset', String(base), 'write']);
  t.is(w.code, 0, JSON.stringify(w.json));
  t.is((await blkio(['--path', dev.socket, 'flush'])).json.ok, true);
  t.true(fileBytes(srv.file, base, 4 * MiB).equals(expectedPattern(31, base, 4 * MiB)));

  const wz = await blkio(['--path', dev.socket, '--offset', String(base + MiB), '--len', String(MiB), 'write-zeroes']);
  t.is(wz.code, 0, JSON.stringify(wz.json));
  const wzKeep = await blkio(['--path', dev.socket, '--offset', String(base + 3 * MiB), '--len', String(64 * 1024), '--no-unmap', 'write-zeroes']);
  t.is(wzKeep.code, 0, JSON.stringify(wzKeep.json));
  const dc = await blkio(['--path', dev.socket, '--offset', String(base + 2 * MiB), '--len', String(512 * 1024), 'discard']);
  t.is(dc.code, 0, JSON.stringify(dc.json));

  const after = fileBytes(srv.file, base, 4 * MiB);
  const want = expectedPattern(31, base, 4 * MiB);
  t.true(after.subarray(0, MiB).equals(want.subarray(0, MiB)), 'before the zeroed range intact');
  t.true(after.subarray(MiB, 2 * MiB).equals(Buffer.alloc(MiB)), 'WRITE_ZEROES range reads zero in the file');
  t.true(after.subarray(2 * MiB, 2 * MiB + 512 * 1024).equals(Buffer.alloc(512 * 1024)), 'discarded range reads zero (punched)');
  t.true(after.subarray(2 * MiB + 512 * 1024, 3 * MiB).equals(want.subarray(2 * MiB + 512 * 1024, 3 * MiB)), 'after the discard intact');
  t.true(after.subarray(3 * MiB, 3 * MiB + 64 * 1024).equals(Buffer.alloc(64 * 1024)), 'WRITE_ZEROES without unmap zeroes too');
  t.true(after.subarray(3 * MiB + 64 * 1024).equals(want.subarray(3 * MiB + 64 * 1024)), 'tail intact');
  // beyond the end: an IO error, not a crash
  const beyond = await blkio(['--path', dev.socket, '--offset', String(31 * MiB), '--len', String(2 * MiB), 'discard']);
  t.is(beyond.code, 1);
  t.is(beyond.json.ok, false);
});

test.serial('readOnly: RO advertised, writes fail, reads work', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  // first put a pattern there through a read-write mapping
  const rwm = await mapDevice(t, srv.port, 'disk.img', 'rw');
  const rw = startDevice(t, optionsFromRsp(rwm, join(srv.dir, 'rw.sock')));
  t.is((await blkio(['--path', rw.socket, '--count', '8', '--seed', '41', '--sequential', '--min-size', '65536', '--max-size', '65536', 'write'])).code, 0);
  await rw.vhost.close();

  const rom = await mapDevice(t, srv.port, 'disk.img', 'ro');
  const ro = startDevice(t, optionsFromRsp(rom, join(srv.dir, 'ro.sock'), { readOnly: true }));
  const noFlag = await blkio(['--path', ro.socket, 'info']);
  t.is(noFlag.code, 2, 'libblkio refuses to start read-write on an RO device');
  t.regex(String(noFlag.json.error), /read-only/i);
  const w = await blkio(['--path', ro.socket, '--read-only', '--count', '4', '--seed', '42', 'write']);
  t.is(w.code, 1, JSON.stringify(w.json));
  t.is(w.json.write.errors, 4, 'every write failed');
  const c = await blkio(['--path', ro.socket, '--read-only', '--count', '8', '--seed', '41', '--sequential', '--min-size', '65536', '--max-size', '65536', 'check']);
  t.is(c.code, 0, JSON.stringify(c.json));
  t.true(fileBytes(srv.file, 0, 8 * 65536).equals(expectedPattern(41, 0, 8 * 65536)), 'file unchanged by the refused writes');
});

const MALFORMED = [
  'short-header', 'oversized-payload', 'truncated-payload', 'unknown-request', 'request-zero', 'reply-flag',
  'bad-version', 'fd-on-get-features', 'too-many-fds', 'memtable-no-fds', 'memtable-too-many-regions',
  'memtable-region-beyond-file', 'memtable-not-memfd', 'vring-index-out-of-range', 'vring-num-not-pow2',
  'vring-addr-outside-memory', 'vring-addr-before-num', 'config-oversized', 'inflight-bad-geometry', 'set-log-base',
];

test.serial('malformed vhost-user messages: front-end disconnected, device survives, another device keeps serving', async (t) => {
  const srv = serveFile(t, 64 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  // the device's native log lines, as a daemon gets them: its name, level and component
  const lines: NativeLogLine[] = [];
  const logs = loadNative<{ setLogSink(fn: ((l: NativeLogLine) => void) | null): void }>();
  logs.setLogSink((l) => lines.push(l));
  t.teardown(() => logs.setLogSink(null));
  const victim = startDevice(t, { ...optionsFromRsp(m, join(srv.dir, 'victim.sock'), { queues: 2 }), name: 'victim0' });
  const other = startDevice(t, optionsFromRsp(m, join(srv.dir, 'other.sock')));
  // the other device is busy the whole time
  const busy = blkio(['--path', other.socket, '--qd', '8', '--count', '240', '--seed', '51', '--min-size', '4096', '--max-size', '131072', '--offset', String(32 * MiB), '--span', String(32 * MiB), '--queues', '1', 'verify'], 120_000);
  for (const s of MALFORMED) {
    const r = await raw(['--path', victim.socket, '--timeout-ms', '5000', s]);
    t.is(r.code, 0, `${s}: ${r.stderr}`);
    t.is(r.json.closed, true, `${s}: the back-end closed the connection`);
  }
  t.true(victim.vhost.stats().protocolErrors >= MALFORMED.length - 2, 'protocol errors counted');
  t.true(victim.events.some((e) => e.type === 'error'), 'errors reported to JS');
  t.true(await waitFor(() => lines.some((l) => l.device === 'victim0')), 'the native log says which device');
  t.like(lines.find((l) => l.device === 'victim0' && l.msg.startsWith('protocol error, disconnecting the front-end: ')), { level: 40, component: 'vhost-blk' });
  const b = await busy;
  t.is(b.code, 0, JSON.stringify(b.json) + b.stderr);
  // the victim itself serves the next, well-behaved front-end
  const v = await blkio(['--path', victim.socket, '--queues', '2', '--qd', '4', '--count', '40', '--seed', '52', '--span', String(32 * MiB), 'verify']);
  t.is(v.code, 0, JSON.stringify(v.json));
});

test.serial('disconnectFrontend: front-end dropped, the socket accepts the next one', async (t) => {
  const srv = serveFile(t, 64 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'x.sock')));
  t.false(dev.vhost.frontendConnected);
  t.false(await dev.vhost.disconnectFrontend(), 'nothing to disconnect');
  const bench = blkioBench(['--path', dev.socket, '--timeout-ms', '3000', '--rw', 'randwrite', '--qd', '16', '--runtime-ms', '20000'], 60_000);
  t.true(await waitFor(() => dev.vhost.frontendConnected && dev.vhost.stats().requests > 100), 'bench running');
  t.true(await dev.vhost.disconnectFrontend());
  t.false(dev.vhost.frontendConnected);
  const r = await bench;
  // what it had sent was answered IOERR, popped or still in the ring (vhost-reopen.test.ts checks
  // that request by request); the bench stops at its first error, but a request it sent in the
  // moment after the disconnect nobody answers: then it ends by its timeout (2), not on the
  // errors (1); never a hang
  t.true(r.code === 1 ? r.json.errors > 0 : r.code === 2, JSON.stringify(r.json) + r.stderr);
  t.true(await waitFor(() => dev.events.some((e) => e.type === 'disconnected')));
  const v = await blkio(['--path', dev.socket, '--qd', '8', '--count', '32', '--seed', '61', 'verify']);
  t.is(v.code, 0, JSON.stringify(v.json));
  t.is(dev.vhost.stats().inflight, 0);
});

test.serial('close(handOver): what the server executes is answered, the rest left to the next daemon, nothing answered IOERR', async (t) => {
  const srv = serveFile(t, 64 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'x.sock')));
  const bench = blkioBench(['--path', dev.socket, '--timeout-ms', '1500', '--rw', 'randwrite', '--qd', '16', '--runtime-ms', '20000'], 60_000);
  t.true(await waitFor(() => dev.vhost.frontendConnected && dev.vhost.stats().requests > 100), 'bench running');
  t.true(await dev.vhost.close(true), 'the transport drained');
  t.false(dev.vhost.frontendConnected);
  const s = dev.vhost.stats();
  t.is(s.errors, 0, 'no request answered IOERR');
  t.is(s.inflight, 0);
  const r = await bench;
  // libblkio cannot redial (QEMU does, and resubmits from its inflight area): the requests left
  // unanswered end it by its timeout (exit 2), with no IO error
  t.is(r.code, 2, JSON.stringify(r.json) + r.stderr);
  t.regex(String(r.json.error), /no completion within --timeout-ms|Timer expired/);
  t.false(existsSync(dev.socket), 'the socket is gone with the device');
});

test.serial('a polling front-end (libblkio poll queues, ibnbd-blkio-bench --poll) is served', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'poll.sock')));
  const r = await blkioBench(['--path', dev.socket, '--poll', '--timeout-ms', '3000', '--rw', 'randread', '--qd', '4', '--runtime-ms', '300'], 30_000);
  t.is(r.code, 0, JSON.stringify(r.json) + r.stderr);
  const j = r.json as { poll?: boolean; ios?: number; errors?: number };
  t.true(j.poll, 'the tool used poll queues');
  t.true((j.ios ?? 0) > 0);
  t.is(j.errors, 0);
});

test.serial('session without a path, holdOnLoss off (RNBD): requests complete with IOERR, no hang', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'np.sock'), { holdOnLoss: false }));
  t.is((await blkio(['--path', dev.socket, '--count', '4', 'verify'])).code, 0);
  srv.running.stop();
  t.true(await waitFor(() => !m.session.connected, 10_000), 'session lost its only path');
  const r = await blkio(['--path', dev.socket, '--qd', '4', '--count', '8', '--seed', '71', 'write'], 30_000);
  t.is(r.code, 1, JSON.stringify(r.json));
  t.is(r.json.write.errors, 8);
  t.true(dev.vhost.stats().errors >= 8);
  // in the metrics: failed writes, every one for want of a path (transport), none the server's
  const io = dev.vhost.stats(true).io!;
  t.true(io.write.errors.transport >= 8, JSON.stringify(io.write));
  t.is(io.write.errors.io + io.write.errors.invalid + io.write.errors.unsupported, 0);
});

test('options are validated with precise EINVAL messages', (t) => {
  const base = { socketPath: '/tmp/x.sock', session: {}, deviceId: 1, sizeBytes: 1 << 20 };
  const bad: Array<[object, RegExp]> = [
    [{ ...base, socketPath: '' }, /socketPath/],
    [{ ...base, socketPath: '/tmp/' + 'x'.repeat(120) }, /longer than 107/],
    [{ ...base, deviceId: -1 }, /deviceId/],
    [{ ...base, sizeBytes: 1000 }, /multiple of 512/],
    [{ ...base, serial: 'x'.repeat(21) }, /serial longer than 20/],
    [{ ...base, queues: 17 }, /queues must be an integer 1..16/],
    [{ ...base, queues: 0 }, /queues/],
    [{ ...base, logicalBlockSize: 1000 }, /logicalBlockSize/],
    [{ ...base, logicalBlockSize: 4096, physicalBlockSize: 512 }, /smaller than logicalBlockSize/],
    [{ ...base, readOnly: 'yes' }, /readOnly must be a boolean/],
    [{ ...base, discard: { maxSectors: -5 } }, /discard.maxSectors/],
    [{ ...base, secureErase: true }, /secureErase needs discard/],
  ];
  for (const [o, re] of bad) {
    const e = t.throws(() => validateVhostOptions(o as never));
    t.is((e as { code?: string }).code, 'EINVAL');
    t.regex(e!.message, re);
  }
  const e = t.throws(() => new VhostBlk({ ...base, session: {} } as never));
  t.is((e as { code?: string }).code, 'EINVAL');
  t.regex(e!.message, /session: a NativeClientSession is required/);
});

test.serial('descriptor chains of any layout, GET_ID, bad requests answered with a status, bad chains never crash', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'c.sock'), { serial: 'serial-0123456789' }));
  const r = await raw(['--path', dev.socket, '--timeout-ms', '5000', 'chains']);
  t.is(r.code, 0, r.stderr);
  const res = r.json.results;
  t.deepEqual(res.getId, { len: 21, status: 0, id: 'serial-0123456789', padded: true }, 'serial, NUL-padded to 20 bytes');
  t.deepEqual(res.getIdOneDesc, { len: 21, status: 0 }, 'status byte found at the end of a shared descriptor');
  t.deepEqual(res.outSplitHeader, { len: 1, status: 0 });
  t.deepEqual(res.inSplitHeader, { len: 8193, status: 0, same: true }, 'data written and read back through split descriptors');
  t.true(fileBytes(srv.file, 8 * 512, 8192).equals(Buffer.from(Array.from({ length: 8192 }, (_, i) => (i * 7 + 3) & 0xff))), 'at sector 8 in the file');
  t.deepEqual(res.unknownType, { len: 1, status: 2 }, 'UNSUPP');
  t.deepEqual(res.shortHeader, { len: 1, status: 1 }, 'IOERR');
  t.deepEqual(res.wrongDirection, { len: 1, status: 1 });
  t.deepEqual(res.oddLength, { len: 1, status: 1 });
  t.deepEqual(res.beyondEnd, { len: 1, status: 1 });
  t.deepEqual(res.discardBadFlags, { len: 1, status: 2 });
  t.deepEqual(res.noStatus, { len: 0 }, 'consumed, nothing written');
  t.deepEqual(res.flushAfter, { len: 1, status: 0 }, 'the queue still works');
  t.true(r.json.closedAfterBadAddr, 'a descriptor outside guest memory ends the connection, not the process');
  // the metrics' kinds: UNSUPP answers are unsupported (the unknown type, the discard's flags),
  // requests refused before any IO invalid (short header, direction, length, beyond the end…)
  const io = dev.vhost.stats(true).io!;
  const ops = ['read', 'write', 'flush', 'discard', 'write_zeroes', 'other'] as const;
  const kind = (k: 'unsupported' | 'invalid' | 'io') => ops.reduce((n, op) => n + io[op].errors[k], 0);
  t.is(kind('unsupported'), 2);
  t.is(io.discard.errors.unsupported, 1);
  t.true(kind('invalid') >= 4, JSON.stringify(io));
  t.is(kind('io'), 0);
  const l = await raw(['--path', dev.socket, '--timeout-ms', '5000', 'chain-loop']);
  t.is(l.json.closed, true, 'a looping chain ends the connection');
  const v = await blkio(['--path', dev.socket, '--count', '16', 'verify']);
  t.is(v.code, 0, 'the device serves the next front-end');
});

test.serial('a memory table change waits for the requests in flight (guest pointers stay valid)', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'dr.sock')));
  let realDrains = 0;
  for (let i = 0; i < 3; i++) {
    const r = await raw(['--path', dev.socket, '--timeout-ms', '10000', 'drain']);
    t.is(r.code, 0, r.stderr);
    t.true(r.json.popped, 'the back-end popped the read before the new table was sent');
    if (r.json.inFlightAtSend) realDrains++;
    t.is(r.json.ack, 8, 'SET_MEM_TABLE acknowledged');
    t.is(r.json.ackValue, 0);
    t.is(r.json.usedAtAck, 1, 'the 4 MiB read was completed before the table was replaced');
    t.is(r.json.status, 0);
    t.is(r.json.usedLen, 4 * MiB + 1);
    t.true(r.json.dataOverwritten);
    t.deepEqual(r.json.flushAfter, { len: 1, status: 0 }, 'the ring works on the new table');
  }
  t.true(realDrains > 0, 'at least once the read was still in flight when SET_MEM_TABLE was sent');
  t.true(dev.vhost.stats().splits >= 3, 'the read was split into several IBNBD requests');
});
