// Set-up for the vhost-user-blk tests: a real export server on a real file, a real
// NativeClientSession mapped to it (SESS_INFO + OPEN over the transport), the project's libblkio
// client (native/build/<cfg>/ibnbd-blkio) and the raw vhost-user front-end (ibnbd-vhost-raw).
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadNative, projectRoot, sanitizerBuild } from '../../src/backend/native.js';
import type { NativeClientSessionClass, NativeClientSessionRaw } from '../../src/backend/transport.js';
import { VhostBlk, type VhostBlkOptions, type VhostEvent } from '../../src/backend/vhost.js';
import { decode, encode, type OpenRspMsg } from '../../src/proto/ibnbd.js';
import { startServer, type RunningServer } from '../../src/server/daemon.js';
import { validateServerOptions } from '../../src/server/options.js';
import { silentLogger } from '../../src/logger.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';

export const MiB = 1 << 20;
export const IO_THREADS = 3;

export type ToolName = 'ibnbd-blkio' | 'ibnbd-blkio-bench' | 'ibnbd-vhost-raw';

export function tool(name: ToolName): string {
  return join(projectRoot, 'native', 'build', sanitizerBuild ? 'Debug' : 'Release', name);
}

export interface ToolResult {
  code: number;
  json: Record<string, any>;
  stderr: string;
}

/** The environment a tool runs in: the tools are never built with ASan, so the sanitizer
 *  runtime stays out of it. */
export function toolEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.LD_PRELOAD;
  return env;
}

/** Runs a tool bounded in time; its stdout is one JSON object. */
export function runTool(name: ToolName, args: string[], timeoutMs = 60_000): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(tool(name), args, { encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL', env: toolEnv() }, (err, stdout, stderr) => {
      let json: Record<string, any> = {};
      try {
        json = JSON.parse(stdout.trim().split('\n').pop() || '{}');
      } catch {
        json = { unparsed: stdout };
      }
      const code = err ? (typeof (err as any).code === 'number' ? (err as any).code : -1) : 0;
      resolve({ code, json, stderr });
    });
  });
}

export const blkio = (args: string[], timeoutMs?: number) => runTool('ibnbd-blkio', args, timeoutMs);
/** The load generator (bench/tools/blkio_bench.c): keeps --qd requests in flight for --runtime-ms. */
export const blkioBench = (args: string[], timeoutMs?: number) => runTool('ibnbd-blkio-bench', args, timeoutMs);
export const raw = (args: string[], timeoutMs?: number) => runTool('ibnbd-vhost-raw', args, timeoutMs);

/** The pattern ibnbd-blkio writes: 8-byte LE word at device offset o = splitmix64(seed ^ o). */
export function expectedPattern(seed: number, offset: number, len: number): Buffer {
  const M = (1n << 64n) - 1n;
  const b = Buffer.alloc(len);
  const s = BigInt(seed);
  for (let i = 0; i < len; i += 8) {
    let x = (s ^ BigInt(offset + i)) & M;
    x = (x + 0x9e3779b97f4a7c15n) & M;
    x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
    x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & M;
    x = x ^ (x >> 31n);
    b.writeBigUInt64LE(x, i);
  }
  return b;
}

export function fileBytes(path: string, offset: number, len: number): Buffer {
  return readFileSync(path).subarray(offset, offset + len);
}

// ---- server and session ---------------------------------------------------------------------

export interface Served {
  running: RunningServer;
  port: number;
  dir: string;
  file: string;
}

/** An export server on 127.0.0.1:<ephemeral> with one sparse file `disk.img` of `size` bytes. */
export function serveFile(t: ExecutionContext, size: number): Served {
  const dir = tempDir(t, 'vhost');
  const file = sparseFile(join(dir, 'disk.img'), size);
  // 3 IO threads (server and client share the process pool): a device's queues and its home
  // loop land on different threads, so the cross-thread paths are exercised.
  const opts = validateServerOptions({ listen: ['127.0.0.1:0'], devSearchPath: dir, control: join(dir, 'unused.sock'), ioThreads: IO_THREADS });
  const running = startServer(opts, silentLogger);
  t.teardown(() => running.stop());
  const port = Number(running.bound[0]!.split(':').pop());
  return { running, port, dir, file };
}

let sessionCounter = 0;

export interface Mapped {
  session: NativeClientSessionRaw;
  rsp: OpenRspMsg;
}

/** A client session (SESS_INFO, then OPEN of `name`): what the client daemon does on map. */
export async function mapDevice(t: ExecutionContext, port: number, name: string, accessMode: 'ro' | 'rw' = 'rw', maxIoSize = 128 * 1024): Promise<Mapped> {
  const { NativeClientSession } = loadNative<{ NativeClientSession: NativeClientSessionClass }>();
  const session = new NativeClientSession({
    transport: 'tcp',
    sessname: `vhost-${process.pid}-${port}-${name}-${++sessionCounter}`,
    paths: [{ dst: { kind: 'ip', addr: '127.0.0.1', port } }],
    queueDepth: 128,
    maxIoSize,
    reconnectDelayMs: 0,
    maxReconnectAttempts: 0,
  });
  await session.connect(10_000);
  t.teardown(() => session.close());
  const si = await session.request({ dir: 'read', usr: encode({ type: 'SESS_INFO', ver: 2 }), readLen: 36 });
  if (si.errno !== 0) throw new Error(`SESS_INFO errno ${si.errno}`);
  const r = await session.request({ dir: 'read', usr: encode({ type: 'OPEN', accessMode, ioMode: 'fileio', devName: name }), readLen: 56 });
  if (r.errno !== 0) throw new Error(`OPEN errno ${r.errno}`);
  const d = decode(r.data!);
  if (!d.ok || d.msg.type !== 'OPEN_RSP') throw new Error('bad OPEN_RSP');
  return { session, rsp: d.msg };
}

/** VhostBlk options from an OPEN_RSP, as the client daemon derives them. */
export function optionsFromRsp(m: Mapped, socketPath: string, extra: Partial<VhostBlkOptions> = {}): VhostBlkOptions {
  const r = m.rsp;
  return {
    socketPath,
    session: m.session,
    deviceId: r.deviceId,
    serial: `ibnbd-${r.deviceId}`,
    sizeBytes: r.nsectors * 512n,
    logicalBlockSize: r.logicalBlockSize,
    physicalBlockSize: r.physicalBlockSize,
    queues: 1,
    discard: r.maxDiscardSectors ? { maxSectors: r.maxDiscardSectors, granularity: r.discardGranularity } : null,
    writeZeroes: r.maxWriteZeroesSectors ? { maxSectors: r.maxWriteZeroesSectors } : null,
    secureErase: r.secureDiscard !== 0 && r.maxDiscardSectors > 0,
    writeback: r.cachePolicy.writeback,
    fua: r.cachePolicy.fua,
    ...extra,
  };
}

export interface Device {
  vhost: VhostBlk;
  socket: string;
  events: VhostEvent[];
}

export function startDevice(t: ExecutionContext, opts: VhostBlkOptions): Device {
  const events: VhostEvent[] = [];
  const vhost = new VhostBlk(opts, (e) => events.push(e));
  vhost.start();
  t.teardown(() => vhost.close());
  return { vhost, socket: opts.socketPath, events };
}

export async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return cond();
}
