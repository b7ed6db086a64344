// Runs inside the soft-RoCE guest of `bench --rdma`: 4 KiB reads at QD1 over our RTRS transport
// alone (native submit loop, no vhost-user, no libblkio) against the running `ibnbd server`, to
// split our round trip into "transport" and "vhost-user hop + client daemon". Opens the device
// read-only (the client daemon holds it rw). Prints one JSON line.
// Usage: node dist/bench/rdma-transport-qd1.js ADDR PORT DEVICE MS
import { loadTestAddon } from '../harness/test-addon.js';
import { ClientSession } from '../src/backend/transport.js';
import { decode, encode } from '../src/proto/ibnbd.js';

type BenchResult = { ios: number; errors: number; seconds: number; p50Us: number; p99Us: number };
const { benchReads } = loadTestAddon<{ benchReads(s: unknown, o: object): Promise<BenchResult> }>();

const [addr = '10.0.2.15', port = '4321', device = 'bench.img', ms = '3000'] = process.argv.slice(2);
const s = new ClientSession({ transport: 'rdma', sessname: 'bench-transport', paths: [{ dst: { kind: 'ip', addr, port: Number(port) } }], queueDepth: 64 });
try {
  await s.connect(15_000);
  await s.request({ dir: 'read', usr: encode({ type: 'SESS_INFO', ver: 2 }), readLen: 36 });
  const op = await s.request({ dir: 'read', usr: encode({ type: 'OPEN', accessMode: 'ro', ioMode: 'fileio', devName: device }), readLen: 56 });
  const od = decode(op.data ?? Buffer.alloc(0));
  if (!od.ok || od.msg.type !== 'OPEN_RSP') throw new Error(`OPEN ${device}: errno ${op.errno}`);
  const span = Math.min(Number(od.msg.nsectors) * 512, 256 << 20);
  const r = await benchReads(s.native, { deviceId: od.msg.deviceId, queueDepth: 1, ms: Number(ms), blockSize: 4096, spanBytes: span });
  // at QD1 one IO is in flight at a time: the mean round trip is the elapsed time per IO
  console.log(JSON.stringify({ ok: r.errors === 0, ...r, iops: r.ios / r.seconds, meanUs: (r.seconds * 1e6) / r.ios, bounce: s.bounceCount }));
  await s.close();
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: (e as Error).message }));
  process.exitCode = 1;
}
process.exit();
