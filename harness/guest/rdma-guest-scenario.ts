// Runs inside the soft-RoCE guest (tests/rdma/rdma.test.ts), through the JS bindings, transport
// 'rdma' (RTRS over rdma_rxe on eth0). Modes (argv[2]):
//   failover ADDR ADDR2 two paths under IO, ADDR2's dummy0 link taken down (manual: see docs)
//   loopback ADDR [ADDR2] our export server + our client: admin round trips, verified IO 4 KiB …
//                       max IO at QD1/QD32 landing in the server's file, zero copy vs bounce,
//                       heartbeats, two paths (ADDR2) with round-robin, then a frozen server process detected by missed heartbeats
//   serve ADDR PORT DIR our export server only (for the kernel's rnbd-client), until SIGTERM
//   kernel-server ADDR DEV  our client against the kernel's rtrs-server + rnbd-server
// Each prints one line "RDMA-RESULT <json>" with what the test asserts.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, openSync, ftruncateSync, closeSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { buildInfo } from '../../src/backend/native.js';
import { ClientSession, ioThreadStats, setPollUs } from '../../src/backend/transport.js';
import { startServer } from '../../src/server/daemon.js';
import { validateServerOptions } from '../../src/server/options.js';
import { silentLogger } from '../../src/logger.js';
import { decode, encode } from '../../src/proto/ibnbd.js';

type Session = ClientSession;

const mode = process.argv[2] ?? 'loopback';
const addr = process.argv[3] ?? '10.0.2.15';
const t0 = Date.now();
const step = (s: string) => process.stderr.write(`[${Date.now() - t0} ms] ${s}\n`);
const ioMsg = (deviceId: number, opName: 'READ' | 'WRITE', offset: number, len: number) =>
  encode({ type: 'IO', deviceId, sector: BigInt(offset / 512), op: opName, sync: false, fua: false, biSize: len, prio: 0 });
const fill = (b: Buffer, seed: number) => {
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((Math.imul(i + 1, 2654435761) ^ seed) >>> 0, i);
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function exportServer(dir: string, port: number, host = addr) {
  return startServer(
    validateServerOptions({ transport: 'rdma', listen: [`${host}:${port}`], devSearchPath: dir, control: '/unused.sock', queueDepth: 64, ioThreads: 2 }),
    silentLogger,
  );
}

async function adminOpen(s: Session, devName: string, result: Record<string, unknown>): Promise<number> {
  // SESS_INFO and OPEN travel as RTRS READs: the answer is RDMA-written into our buffer
  const si = await s.request({ dir: 'read', usr: encode({ type: 'SESS_INFO', ver: 2 }), readLen: 36 });
  const sid = decode(si.data ?? Buffer.alloc(0));
  result.sessInfo = { errno: si.errno, type: sid.ok ? sid.msg.type : 'bad', ver: sid.ok && sid.msg.type === 'SESS_INFO_RSP' ? sid.msg.ver : -1 };
  const op = await s.request({ dir: 'read', usr: encode({ type: 'OPEN', accessMode: 'rw', ioMode: 'fileio', devName }), readLen: 56 });
  const od = decode(op.data ?? Buffer.alloc(0));
  if (!od.ok || od.msg.type !== 'OPEN_RSP') throw new Error(`OPEN failed: errno ${op.errno}`);
  result.open = { errno: op.errno, nsectors: Number(od.msg.nsectors) };
  return od.msg.deviceId;
}

/** WRITE then READ of patterns, sizes 4 KiB … max IO, QD1 and QD32, from one registered region. */
async function patterns(s: Session, deviceId: number, devSize: number, backing: () => Buffer, firstSeed = 1) {
  const maxIo = s.maxIoSize;
  const region = Buffer.alloc(2 * 32 * maxIo);
  const handle = s.registerMemory(region);
  const bounce0 = s.bounceCount;
  const runs: Array<Record<string, unknown>> = [];
  let seed = firstSeed;
  for (const size of [4096, 65536, maxIo]) {
    for (const qd of [1, 32]) {
      const span = size * qd;
      const base = ((seed * 1048576) % (devSize - span + 1)) & ~4095;
      const wbufs = Array.from({ length: qd }, (_, i) => region.subarray(i * size, (i + 1) * size));
      const rbufs = Array.from({ length: qd }, (_, i) => region.subarray((32 + i) * size, (33 + i) * size));
      wbufs.forEach((b, i) => fill(b, seed * 1000 + i));
      rbufs.forEach((b) => b.fill(0));
      const started = Date.now();
      const wr = await Promise.all(wbufs.map((b, i) => s.request({ dir: 'write', usr: ioMsg(deviceId, 'WRITE', base + i * size, size), buffer: b })));
      const rd = await Promise.all(rbufs.map((b, i) => s.request({ dir: 'read', usr: ioMsg(deviceId, 'READ', base + i * size, size), buffer: b })));
      const ms = Date.now() - started;
      const dev = backing();
      let readBackOk = true;
      let backingOk = true;
      for (let i = 0; i < qd; i++) {
        if (!rbufs[i]!.equals(wbufs[i]!)) readBackOk = false;
        if (!dev.subarray(base + i * size, base + (i + 1) * size).equals(wbufs[i]!)) backingOk = false;
      }
      runs.push({ size, qd, writeErrnos: [...new Set(wr.map((r) => r.errno))], readErrnos: [...new Set(rd.map((r) => r.errno))], readBackOk, backingOk, ms });
      step(`size ${size} qd ${qd}: ${ms} ms readBack ${readBackOk} backing ${backingOk}`);
      seed++;
    }
  }
  const bounceRegistered = s.bounceCount - bounce0;
  s.unregisterMemory(handle);
  return { runs, bounceRegistered };
}

async function loopback(): Promise<Record<string, unknown>> {
  const dir = mkdtempSync('/tmp/rdma-export-');
  const fileSize = 8 << 20;
  const fd = openSync(join(dir, 'disk.img'), 'w');
  ftruncateSync(fd, fileSize);
  closeSync(fd);
  const running = exportServer(dir, 0);
  const port = Number(running.bound[0]!.split(':').pop());
  step(`server on ${running.bound.join(' ')}`);
  const s = new ClientSession({ transport: 'rdma', sessname: 'rdmatest', paths: [{ dst: { kind: 'ip', addr, port } }], queueDepth: 64, heartbeatMs: 300 });
  await s.connect(15_000);
  step(`connected qd ${s.queueDepth} max_io ${s.maxIoSize}`);
  const result: Record<string, unknown> = { queueDepth: s.queueDepth, maxIoSize: s.maxIoSize };
  const deviceId = await adminOpen(s, 'disk.img', result);
  Object.assign(result, await patterns(s, deviceId, fileSize, () => readFileSync(join(dir, 'disk.img'))));

  // the same with the IO threads polling (--poll-us): both sides' completions are then taken by
  // the loops' own ibv_poll_cq with the CQs unarmed (Conn as PollSource); other offsets and bytes
  const before = ioThreadStats();
  setPollUs(1000);
  const polled = await patterns(s, deviceId, fileSize, () => readFileSync(join(dir, 'disk.img')), 101);
  setPollUs(0);
  const after = ioThreadStats();
  result.polled = { ...polled, pollHits: after.pollHits - before.pollHits };
  step(`polled: ${after.pollHits - before.pollHits} hits of ${after.polls - before.polls} polls`);

  // the fallback: data in unregistered memory goes through the bounce pool, and is counted
  const plain = Buffer.alloc(8192);
  fill(plain, 77);
  const bouncedBefore = s.bounceCount;
  const pw = await s.request({ dir: 'write', usr: ioMsg(deviceId, 'WRITE', 0, 8192), data: plain });
  const pr = await s.request({ dir: 'read', usr: ioMsg(deviceId, 'READ', 0, 8192), readLen: 8192 });
  result.bounce = { errnos: [pw.errno, pr.errno], readBackOk: pr.data?.equals(plain) ?? false, counted: s.bounceCount - bouncedBefore };

  // a server errno travels in the response immediate
  const past = await s.request({ dir: 'read', usr: ioMsg(deviceId, 'READ', fileSize, 4096), readLen: 4096 });
  result.pastEndErrno = past.errno;

  // heartbeats: several intervals with no IO; the path stays up with a measured round trip
  await sleep(2000);
  result.paths = s.paths();
  await s.request({ dir: 'write', usr: encode({ type: 'CLOSE', deviceId }) });
  await s.close();
  await running.stop();

  // multipath: a second address (dummy0 + rxe1, set up by the test) gives the session a second
  // path to the same server; round-robin spreads the requests over both
  const addr2 = process.argv[4];
  if (addr2) {
    const mp = exportServer(dir, 0, '[::]');
    const mpPort = Number(mp.bound[0]!.split(':').pop());
    const m = new ClientSession({
      transport: 'rdma', sessname: 'mptest', mpPolicy: 'round-robin', queueDepth: 64, heartbeatMs: 300,
      paths: [{ dst: { kind: 'ip', addr, port: mpPort } }, { dst: { kind: 'ip', addr: addr2, port: mpPort } }],
    });
    await m.connect(15_000);
    const mres: Record<string, unknown> = {};
    const mdev = await adminOpen(m, 'disk.img', mres);
    const out = await patterns(m, mdev, fileSize, () => readFileSync(join(dir, 'disk.img')));
    await sleep(1000);
    result.multipath = { ...mres, ...out, paths: m.paths() };
    await m.request({ dir: 'write', usr: encode({ type: 'CLOSE', deviceId: mdev }) });
    await m.close();
    await mp.stop();
  }

  // dead peer: a server process that stops answering (SIGSTOP) is declared dead after the
  // missed-heartbeat limit and the link goes down; a new server on the same port brings the
  // path back (RTRS reconnect) and requests work again
  const startChild = async (port: number) => {
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'serve', addr, String(port), dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    const bound = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /SERVING (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.on('exit', () => reject(new Error('serve child exited')));
      setTimeout(() => reject(new Error('serve child did not start')), 30_000);
    });
    return { child, bound };
  };
  const first = await startChild(0);
  let second: Awaited<ReturnType<typeof startChild>> | undefined;
  try {
    const events: string[] = [];
    const h = new ClientSession(
      {
        transport: 'rdma', sessname: 'hbtest', paths: [{ dst: { kind: 'ip', addr, port: first.bound } }], queueDepth: 8,
        heartbeatMs: 200, heartbeatMissedMax: 3, reconnectDelayMs: 300, maxReconnectAttempts: -1,
      },
      (ev) => events.push(ev),
    );
    await h.connect(15_000);
    await sleep(1000);
    const rttBefore = h.paths()[0]!.hbRttNs;
    first.child.kill('SIGSTOP');
    const stoppedAt = Date.now();
    while ((h.connected || !events.includes('disconnected')) && Date.now() - stoppedAt < 20_000) await sleep(50);
    const detectMs = Date.now() - stoppedAt;
    step(`dead peer detected after ${detectMs} ms`);
    const stateAfter = h.paths()[0]!.state;
    const eventsAtDeath = [...events];
    const failed = await h.request({ dir: 'read', usr: encode({ type: 'SESS_INFO', ver: 2 }), readLen: 36 });
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));
    second = await startChild(first.bound);
    const restartedAt = Date.now();
    while ((!h.connected || !events.includes('reconnected')) && Date.now() - restartedAt < 60_000) await sleep(100);
    const reconnectMs = Date.now() - restartedAt;
    step(`reconnected after ${reconnectMs} ms`);
    const si = await h.request({ dir: 'read', usr: encode({ type: 'SESS_INFO', ver: 2 }), readLen: 36 });
    const sid = decode(si.data ?? Buffer.alloc(0));
    result.deadPeer = {
      rttBefore, connectedAfter: false, detectMs, events: eventsAtDeath, state: stateAfter, requestWhileDown: failed.errno,
      reconnected: h.connected, reconnectMs, eventsAfter: [...events], pathAfter: h.paths()[0],
      sessInfoAfter: { errno: si.errno, type: sid.ok ? sid.msg.type : 'bad' },
    };
    await h.close();
  } finally {
    first.child.kill('SIGKILL');
    second?.child.kill('SIGKILL');
  }
  return result;
}

// failover: IO streams over two paths; the second path's link goes down underneath; requests in
// flight on it are re-issued on the first path with the same buffer id and all complete
async function failover(): Promise<Record<string, unknown>> {
  const addr2 = process.argv[4]!;
  const dir = mkdtempSync('/tmp/rdma-export-');
  const fileSize = 8 << 20;
  const fd = openSync(join(dir, 'disk.img'), 'w');
  ftruncateSync(fd, fileSize);
  closeSync(fd);
  const srv = exportServer(dir, 0, '[::]');
  const port = Number(srv.bound[0]!.split(':').pop());
  const events: string[] = [];
  const m = new ClientSession(
    {
      transport: 'rdma', sessname: 'fotest', mpPolicy: 'round-robin', queueDepth: 64, heartbeatMs: 200, heartbeatMissedMax: 3,
      reconnectDelayMs: 60_000, paths: [{ dst: { kind: 'ip', addr, port } }, { dst: { kind: 'ip', addr: addr2, port } }],
    },
    (ev) => events.push(ev),
  );
  await m.connect(15_000);
  const result: Record<string, unknown> = {};
  const dev = await adminOpen(m, 'disk.img', result);
  const size = 65536;
  const region = Buffer.alloc(64 * size);
  m.registerMemory(region);
  let errs = 0;
  let done = 0;
  let down = false;
  const started = Date.now();
  const worker = async (w: number) => {
    for (let k = 0; Date.now() - started < 8000; k++) {
      const b = region.subarray(w * size, (w + 1) * size);
      fill(b, w * 100000 + k);
      const off = (w * size) % fileSize;
      const wr = await m.request({ dir: 'write', usr: ioMsg(dev, 'WRITE', off, size), buffer: b });
      const copy = Buffer.from(b);
      const rb = region.subarray((32 + w) * size, (33 + w) * size);
      const rd = await m.request({ dir: 'read', usr: ioMsg(dev, 'READ', off, size), buffer: rb });
      if (wr.errno || rd.errno || !rb.equals(copy)) errs++;
      done++;
      if (!down && Date.now() - started > 2000) {
        down = true;
        execFileSync('ip', ['link', 'set', 'dummy0', 'down']);
        step('dummy0 down');
      }
    }
  };
  await Promise.all(Array.from({ length: 16 }, (_, w) => worker(w)));
  result.failover = { done, errs, paths: m.paths(), events };
  await m.close();
  await srv.stop();
  return result;
}

async function serve(): Promise<void> {
  const port = Number(process.argv[4] ?? '1234');
  const running = exportServer(process.argv[5]!, port);
  console.log(`SERVING ${running.bound[0]!.split(':').pop()}`);
  await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  await running.stop();
}

async function kernelServer(): Promise<Record<string, unknown>> {
  const dev = process.argv[4] ?? 'ram0';
  const s = new ClientSession({ transport: 'rdma', sessname: 'usrclt', paths: [{ dst: { kind: 'ip', addr, port: 1234 } }], queueDepth: 64, heartbeatMs: 300 });
  await s.connect(15_000);
  const result: Record<string, unknown> = { queueDepth: s.queueDepth, maxIoSize: s.maxIoSize };
  const deviceId = await adminOpen(s, dev, result);
  const size = Number(result.open && (result.open as { nsectors: number }).nsectors) * 512;
  // O_DIRECT: rnbd-server writes bios straight to the device, under any page cache we'd read
  const readDev = () =>
    execFileSync('dd', [`if=/dev/${dev}`, 'bs=1M', 'iflag=direct', 'status=none'], { maxBuffer: size + 4096 });
  Object.assign(result, await patterns(s, deviceId, size, readDev));
  await sleep(1500);
  result.paths = s.paths();
  await s.request({ dir: 'write', usr: encode({ type: 'CLOSE', deviceId }) });
  await s.close();
  return result;
}

if (mode === 'serve') {
  await serve();
} else {
  const result = mode === 'kernel-server' ? await kernelServer() : mode === 'failover' ? await failover() : await loopback();
  step('done');
  result.sanitize = buildInfo().sanitize;  // which addon build ran in the guest
  console.log(`RDMA-RESULT ${JSON.stringify(result)}`);
}
process.exit(0);
