// Runs inside the soft-RoCE guest (tests/rdma.test.ts): the export server and a client, both
// on transport 'rdma' (RTRS over rdma_rxe on eth0), through the JS bindings. Prints one line
// "RDMA-RESULT <json>" with everything the test asserts; throws (exit 1) on the first surprise.
import { mkdtempSync, openSync, ftruncateSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadNative } from '../src/backend/native.js';
import { startServer } from '../src/server/daemon.js';
import { validateServerOptions } from '../src/server/options.js';
import { silentLogger } from '../src/server/server.js';
import { decode, encode } from '../src/proto/ibnbd.js';

interface Session {
  connect(timeoutMs?: number): Promise<void>;
  request(r: { dir: 'read' | 'write'; usr: Buffer; data?: Buffer; readLen?: number; buffer?: Buffer }): Promise<{ errno: number; data?: Buffer }>;
  registerMemory(b: Buffer): number;
  unregisterMemory(h: number): void;
  readonly bounceCount: number;
  readonly maxIoSize: number;
  readonly queueDepth: number;
  paths(): Array<{ src: string; dst: string; state: string; hbRttNs: number }>;
  close(): Promise<void>;
}

const addr = process.argv[2] ?? '10.0.2.15';
const t0 = Date.now();
const step = (s: string) => process.stderr.write(`[${Date.now() - t0} ms] ${s}\n`);

const dir = mkdtempSync('/tmp/rdma-export-');
const fileSize = 8 << 20;
const fd = openSync(join(dir, 'disk.img'), 'w');
ftruncateSync(fd, fileSize);
closeSync(fd);

const running = startServer(
  validateServerOptions({ transport: 'rdma', listen: [`${addr}:0`], devSearchPath: dir, control: '/unused.sock', queueDepth: 64, ioThreads: 2 }),
  silentLogger,
);
const port = Number(running.bound[0]!.split(':').pop());
step(`server on ${running.bound.join(' ')}`);

const { NativeClientSession } = loadNative<{ NativeClientSession: new (o: object) => Session }>();
const s = new NativeClientSession({
  transport: 'rdma',
  sessname: 'rdmatest',
  paths: [{ dst: { kind: 'ip', addr, port } }],
  queueDepth: 64,
  heartbeatMs: 300,
});
await s.connect(15_000);
step(`connected qd ${s.queueDepth} max_io ${s.maxIoSize}`);

const result: Record<string, unknown> = { queueDepth: s.queueDepth, maxIoSize: s.maxIoSize };

// admin round trips: SESS_INFO and OPEN travel as RTRS READs, the answer RDMA-written back
const si = await s.request({ dir: 'read', usr: encode({ type: 'SESS_INFO', ver: 2 }), readLen: 36 });
const sid = decode(si.data!);
result.sessInfo = { errno: si.errno, type: sid.ok ? sid.msg.type : 'bad', ver: sid.ok && sid.msg.type === 'SESS_INFO_RSP' ? sid.msg.ver : -1 };
const op = await s.request({ dir: 'read', usr: encode({ type: 'OPEN', accessMode: 'rw', ioMode: 'fileio', devName: 'disk.img' }), readLen: 56 });
const od = decode(op.data!);
if (!od.ok || od.msg.type !== 'OPEN_RSP') throw new Error(`OPEN failed: errno ${op.errno}`);
const deviceId = od.msg.deviceId;
result.open = { errno: op.errno, nsectors: Number(od.msg.nsectors) };
const bounceAfterAdmin = s.bounceCount;  // the admin answers land in unregistered buffers

// zero copy: one registered region holds every IO buffer
const maxIo = s.maxIoSize;
const region = Buffer.alloc(2 * 32 * maxIo);
const handle = s.registerMemory(region);
const ioMsg = (opName: 'READ' | 'WRITE', offset: number, len: number) =>
  encode({ type: 'IO', deviceId, sector: BigInt(offset / 512), op: opName, sync: false, fua: false, biSize: len, prio: 0 });
const fill = (b: Buffer, seed: number) => {
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((Math.imul(i + 1, 2654435761) ^ seed) >>> 0, i);
};

const runs: Array<Record<string, unknown>> = [];
let seed = 1;
for (const size of [4096, 65536, maxIo]) {
  for (const qd of [1, 32]) {
    const n = qd;
    const span = size * n;
    const base = (seed * 1048576) % (fileSize - span - 4096 + 1) & ~4095;
    const wbufs = Array.from({ length: n }, (_, i) => region.subarray(i * size, (i + 1) * size));
    const rbufs = Array.from({ length: n }, (_, i) => region.subarray((32 + i) * size, (33 + i) * size));
    wbufs.forEach((b, i) => fill(b, seed * 1000 + i));
    rbufs.forEach((b) => b.fill(0));
    const started = Date.now();
    const wr = await Promise.all(wbufs.map((b, i) => s.request({ dir: 'write', usr: ioMsg('WRITE', base + i * size, size), buffer: b })));
    const rd = await Promise.all(rbufs.map((b, i) => s.request({ dir: 'read', usr: ioMsg('READ', base + i * size, size), buffer: b })));
    const ms = Date.now() - started;
    const file = readFileSync(join(dir, 'disk.img'));
    let readBackOk = true;
    let fileOk = true;
    for (let i = 0; i < n; i++) {
      if (!rbufs[i]!.equals(wbufs[i]!)) readBackOk = false;
      if (!file.subarray(base + i * size, base + (i + 1) * size).equals(wbufs[i]!)) fileOk = false;
    }
    runs.push({ size, qd, writeErrnos: [...new Set(wr.map((r) => r.errno))], readErrnos: [...new Set(rd.map((r) => r.errno))], readBackOk, fileOk, ms });
    step(`size ${size} qd ${qd}: ${ms} ms readBack ${readBackOk} file ${fileOk}`);
    seed++;
  }
}
result.runs = runs;
result.bounceRegistered = s.bounceCount - bounceAfterAdmin;

// the fallback: data in unregistered memory goes through the bounce pool, and is counted
const plain = Buffer.alloc(8192);
fill(plain, 77);
const before = s.bounceCount;
const pw = await s.request({ dir: 'write', usr: ioMsg('WRITE', 0, 8192), data: plain });
const pr = await s.request({ dir: 'read', usr: ioMsg('READ', 0, 8192), readLen: 8192 });
result.bounce = { errnos: [pw.errno, pr.errno], readBackOk: pr.data?.equals(plain) ?? false, counted: s.bounceCount - before };

// an errno from the server travels in the immediate: READ beyond the device end → EINVAL/EIO
const past = await s.request({ dir: 'read', usr: ioMsg('READ', fileSize, 4096), readLen: 4096 });
result.pastEndErrno = past.errno;

// heartbeats: several intervals pass with no IO; the path stays up with a measured round trip
await new Promise((r) => setTimeout(r, 2000));
result.paths = s.paths();
result.serverSessions = running.server ? 'present' : 'missing';

s.unregisterMemory(handle);
await s.request({ dir: 'write', usr: encode({ type: 'CLOSE', deviceId }) });
await s.close();
await running.stop();
step('done');
console.log(`RDMA-RESULT ${JSON.stringify(result)}`);
process.exit(0);
