// Stand-in for `ibnbd client` + `ibnbd map` while the client daemon is not in this build: the same
// native objects the daemon creates on map — a NativeClientSession over TCP (SESS_INFO, then OPEN
// with io_mode=fileio) and a VhostBlk device on it — without the daemon's control plane. The IO
// path (virtqueue → IBNBD message → TCP → server → io_uring → used ring) is the real one and never
// enters JavaScript, so the figures are ours; the runner labels them "client stand-in".
//
//   node dist/bench/ours-client-standin.js --port P --device NAME --socket PATH [--io-threads N]
// Prints {"ok":true,"socket":PATH} once the socket listens; closes everything on SIGTERM/SIGINT.
import { loadNative } from '../src/backend/native.js';
import { configureIoThreads } from '../src/backend/transport.js';
import { VhostBlk } from '../src/backend/vhost.js';
import { decode, encode } from '../src/proto/ibnbd.js';

interface SessionLike {
  connect(timeoutMs?: number): Promise<void>;
  request(r: { dir: 'read' | 'write'; usr: Buffer; readLen?: number }): Promise<{ errno: number; data?: Buffer }>;
  close(): Promise<void>;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const port = Number(arg('--port'));
  const device = arg('--device');
  const socketPath = arg('--socket');
  const ioThreads = arg('--io-threads');
  if (!port || !device || !socketPath) throw new Error('usage: --port P --device NAME --socket PATH [--io-threads N]');
  if (ioThreads) configureIoThreads(Number(ioThreads));

  const { NativeClientSession } = loadNative<{ NativeClientSession: new (o: object) => SessionLike }>();
  const session = new NativeClientSession({
    transport: 'tcp',
    sessname: `bench-${process.pid}`,
    paths: [{ dst: { kind: 'ip', addr: '127.0.0.1', port } }],
    queueDepth: 128,
    maxIoSize: 128 * 1024,
    reconnectDelayMs: 0,
    maxReconnectAttempts: 0,
  });
  await session.connect(10_000);
  const si = await session.request({ dir: 'read', usr: encode({ type: 'SESS_INFO', ver: 2 }), readLen: 36 });
  if (si.errno !== 0) throw new Error(`SESS_INFO: errno ${si.errno}`);
  const r = await session.request({ dir: 'read', usr: encode({ type: 'OPEN', accessMode: 'rw', ioMode: 'fileio', devName: device }), readLen: 56 });
  if (r.errno !== 0) throw new Error(`OPEN ${device}: errno ${r.errno}`);
  const d = decode(r.data!);
  if (!d.ok || d.msg.type !== 'OPEN_RSP') throw new Error('OPEN: no OPEN_RSP');
  const rsp = d.msg;
  const vhost = new VhostBlk({
    socketPath,
    session: session as never,
    deviceId: rsp.deviceId,
    serial: `ibnbd-${rsp.deviceId}`,
    sizeBytes: rsp.nsectors * 512n,
    logicalBlockSize: rsp.logicalBlockSize,
    physicalBlockSize: rsp.physicalBlockSize,
    queues: 1,
    discard: rsp.maxDiscardSectors ? { maxSectors: rsp.maxDiscardSectors, granularity: rsp.discardGranularity } : null,
    writeZeroes: rsp.maxWriteZeroesSectors ? { maxSectors: rsp.maxWriteZeroesSectors } : null,
    secureErase: rsp.secureDiscard !== 0 && rsp.maxDiscardSectors > 0,
    writeback: rsp.cachePolicy.writeback,
    fua: rsp.cachePolicy.fua,
  });
  vhost.start();
  process.stdout.write(`${JSON.stringify({ ok: true, socket: socketPath })}\n`);

  let closing = false;
  const close = async () => {
    if (closing) return;
    closing = true;
    await vhost.close();
    await session.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void close());
  process.on('SIGINT', () => void close());
  setInterval(() => undefined, 1 << 30);  // stay alive until told to stop
}

main().catch((e) => {
  process.stdout.write(`${JSON.stringify({ ok: false, error: (e as Error).message })}\n`);
  process.exit(2);
});
