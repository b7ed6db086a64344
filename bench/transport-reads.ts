// Rough 4 KiB read figures over the TCP transport on loopback against the native export server
// (a file in the page cache, or a device given as argv[2]): the native submit loop (benchReads,
// no JS per IO) and the JS admin client (one Buffer round trip per IO), at QD1 and QD32.
// Run: npx tsc -p . && [IBNBD_IO_THREADS=n] node dist/bench/transport-reads.js [/path/to/file-or-device]
import { closeSync, fstatSync, ftruncateSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { loadTestAddon } from '../harness/test-addon.js';
import { encode } from '../src/proto/ibnbd.js';
import { ClientSession, configureIoThreads } from '../src/backend/transport.js';
import { NativeServer, probeDevice } from '../src/backend/server-native.js';

type BenchResult = { ios: number; errors: number; seconds: number; p50Us: number; p99Us: number };
const { benchReads } = loadTestAddon<{ benchReads(s: unknown, o: object): Promise<BenchResult> }>();

configureIoThreads(Number(process.env.IBNBD_IO_THREADS ?? 1));
const arg = process.argv[2];
const path = arg ?? `/tmp/ibnbd-bench-${process.pid}.img`;
const span = 64 << 20;
const fd = openSync(path, arg ? 'r' : 'w+');
if (!arg) {
  ftruncateSync(fd, span);
  for (let off = 0; off < span; off += 1 << 20) writeSync(fd, Buffer.alloc(1 << 20, 1), 0, 1 << 20, off);
}
const g = await probeDevice(fd);
let sid: string | undefined;
const server = new NativeServer({ transport: 'tcp', listen: [{ kind: 'ip', addr: '127.0.0.1', port: 0 }] }, (ev) => {
  if (ev.type === 'session-up') sid = ev.sessionId;
});
const port = server.start()[0]!.port;
const client = new ClientSession({ transport: 'tcp', sessname: 'bench', paths: [{ dst: { kind: 'ip', addr: '127.0.0.1', port } }] });
await client.connect(5000);
while (!sid) await new Promise((r) => setTimeout(r, 5));
server.attachDevice(sid, 1, { fd, direct: false, readOnly: true, sizeBytes: Math.min(g.sizeBytes, span), logicalBlockSize: g.logicalBlockSize, blockDevice: fstatSync(fd).isBlockDevice() });

const line = (what: string, ios: number, secs: number, p50: number, p99: number): void =>
  console.log(`${what.padEnd(22)} ${(ios / secs).toFixed(0).padStart(8)} IOPS  p50 ${p50} us  p99 ${p99} us`);

for (const qd of [1, 32]) {
  const r = await benchReads(client.native, { deviceId: 1, queueDepth: qd, ms: 3000, blockSize: 4096, spanBytes: span });
  if (r.errors) throw new Error(`${r.errors} errors`);
  line(`native QD${qd}`, r.ios, r.seconds, r.p50Us, r.p99Us);
}
for (const qd of [1, 32]) {
  let n = 0;
  const lat: number[] = [];
  const end = Date.now() + 3000;
  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: qd }, async () => {
      while (Date.now() < end) {
        const usr = encode({ type: 'IO', deviceId: 1, sector: BigInt((n++ % (span / 4096)) * 8), op: 'READ', sync: false, fua: false, biSize: 4096, prio: 0 });
        const s = process.hrtime.bigint();
        const r = await client.request({ dir: 'read', usr, readLen: 4096 });
        if (r.errno) throw new Error(`errno ${r.errno}`);
        lat.push(Number(process.hrtime.bigint() - s) / 1000);
      }
    }),
  );
  lat.sort((a, b) => a - b);
  line(`js client QD${qd}`, lat.length, (Date.now() - t0) / 1000, Math.round(lat[lat.length >> 1]!), Math.round(lat[Math.floor(lat.length * 0.99)]!));
}
await client.close();
await server.stop();
closeSync(fd);
if (!arg) unlinkSync(path);
