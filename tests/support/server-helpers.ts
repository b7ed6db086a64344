// Shared set-up for the server tests: temp trees, files, loop devices (always detached in
// teardown), and IBNBD admin message bytes.
import type { ExecutionContext } from 'ava';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import { encode, type AccessMode, type IoMode } from '../../src/proto/ibnbd.js';

/** A loop device over `file`, detached in teardown (registered before anything can fail). */
export function loopDevice(t: ExecutionContext, file: string): string {
  const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8', timeout: 10_000 }).trim();
  t.teardown(() => {
    try {
      execFileSync('losetup', ['-d', dev], { timeout: 10_000 });
    } catch {
      /* already gone */
    }
  });
  return dev;
}

/**
 * The "RW only once" rule seen from two sessions on one device: the first session's mode, the
 * second's, and the errno the second OPEN gets. Run over the wire (server-io) and on the
 * ExportServer alone (server-policy).
 */
export const TWO_SESSION_ACCESS_MATRIX: ReadonlyArray<readonly [AccessMode, AccessMode, number]> = [
  ['ro', 'ro', 0],
  ['ro', 'rw', 0],
  ['rw', 'ro', 0],
  ['rw', 'rw', constants.errno.EPERM],
  ['rw', 'migration', 0],
  ['migration', 'rw', constants.errno.EPERM],
  ['migration', 'migration', 0],
];

export const sessInfo = (ver = 2): Buffer => encode({ type: 'SESS_INFO', ver });
export const openMsg = (devName: string, accessMode: AccessMode = 'rw', ioMode: IoMode = 'blockio'): Buffer =>
  encode({ type: 'OPEN', accessMode, ioMode, devName });
export const closeMsg = (deviceId: number): Buffer => encode({ type: 'CLOSE', deviceId });

// ---- a test client on the native transport (NativeClientSession) ---------------------------

import { loadNative } from '../../src/backend/native.js';
import type { NativeClientSessionClass, NativeClientSessionRaw } from '../../src/backend/transport.js';
import { TEST_HOST, TEST_TRANSPORT, scaled } from './transport-under-test.js';
import { decode as decodeMsg, type IoOp, type OpenRspMsg } from '../../src/proto/ibnbd.js';

/** An IBNBD client speaking through the real native transport under test. errno results are positive. */
export class TestClient {
  private constructor(
    readonly sessname: string,
    private readonly s: NativeClientSessionRaw,
  ) {}

  static async connect(port: number, sessname: string, opts: { host?: string; maxIoSize?: number } = {}): Promise<TestClient> {
    const { NativeClientSession } = loadNative<{ NativeClientSession: NativeClientSessionClass }>();
    const s = new NativeClientSession({
      transport: TEST_TRANSPORT,
      sessname,
      paths: [{ dst: { kind: 'ip', addr: opts.host ?? TEST_HOST, port } }],
      queueDepth: 64,
      maxIoSize: opts.maxIoSize ?? 128 * 1024,
      reconnectDelayMs: 0,
      maxReconnectAttempts: 0,
    });
    await s.connect(scaled(10_000));
    return new TestClient(sessname, s);
  }

  close(): Promise<void> {
    return this.s.close();
  }

  /** The largest IO the session carries (128 KiB over TCP; over RDMA the RTRS chunk minus its header). */
  get maxIoSize(): number {
    return this.s.maxIoSize;
  }

  paths() {
    return this.s.paths();
  }

  async raw(dir: 'read' | 'write', usr: Buffer, data?: Buffer, readLen?: number): Promise<{ errno: number; data?: Buffer }> {
    const r = await this.s.request(
      dir === 'read' ? { dir, usr, readLen: readLen ?? 0 } : data ? { dir, usr, data } : { dir, usr },
    );
    return r.data ? { errno: Math.abs(r.errno), data: r.data } : { errno: Math.abs(r.errno) };
  }

  async sessInfo(ver = 2): Promise<number> {
    const r = await this.raw('read', sessInfo(ver), undefined, 36);
    if (r.errno !== 0) throw new Error(`SESS_INFO errno ${r.errno}`);
    const d = decodeMsg(r.data!);
    if (!d.ok || d.msg.type !== 'SESS_INFO_RSP') throw new Error('bad SESS_INFO_RSP');
    return d.msg.ver;
  }

  async open(name: string, mode: AccessMode = 'rw', io: IoMode = 'blockio'): Promise<{ errno: number; rsp?: OpenRspMsg }> {
    const r = await this.raw('read', openMsg(name, mode, io), undefined, 56);
    if (r.errno !== 0) return { errno: r.errno };
    const d = decodeMsg(r.data!);
    if (!d.ok || d.msg.type !== 'OPEN_RSP') throw new Error('bad OPEN_RSP');
    return { errno: 0, rsp: d.msg };
  }

  async close_(deviceId: number): Promise<number> {
    return (await this.raw('write', closeMsg(deviceId))).errno;
  }

  static io(deviceId: number, op: IoOp, offset: number, biSize: number, fua = false): Buffer {
    return encode({ type: 'IO', deviceId, sector: BigInt(offset / 512), op, sync: false, fua, biSize, prio: 0 });
  }

  async write(deviceId: number, offset: number, data: Buffer, fua = false): Promise<number> {
    return (await this.raw('write', TestClient.io(deviceId, 'WRITE', offset, data.length, fua), data)).errno;
  }

  async read(deviceId: number, offset: number, len: number): Promise<{ errno: number; data?: Buffer }> {
    return this.raw('read', TestClient.io(deviceId, 'READ', offset, len), undefined, len);
  }

  async noData(deviceId: number, op: IoOp, offset: number, len: number): Promise<number> {
    return (await this.raw('write', TestClient.io(deviceId, op, offset, len))).errno;
  }
}

/** A deterministic pattern that differs per (seed, offset): a misplaced block never matches. */
export function pattern(seed: number, offset: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += 4) b.writeUInt32LE(((seed * 0x9e3779b1) ^ (offset + i)) >>> 0, i);
  return b;
}

/** `p`, or `fallback` after `ms`; the timer never outlives the race (it would hold the worker). */
export async function raceTimeout<T, F>(p: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<F>((r) => (timer = setTimeout(() => r(fallback), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A session in another process (server-holder.ts) that opens `dev` with `mode` and waits to be
 * killed: SIGKILL it to see what the server does when a session dies without CLOSE.
 * Resolves with the child and its first line ("opened <id>" or "errno <n>").
 */
export async function startHolder(
  t: ExecutionContext,
  port: number,
  sessname: string,
  dev: string,
  mode: AccessMode,
): Promise<{ child: ChildProcess; line: string }> {
  const script = new URL('./server-holder.js', import.meta.url).pathname;
  const child = spawn(process.execPath, [script, String(port), sessname, dev, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => child.kill('SIGKILL'));
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`holder ${sessname} did not open in time`)), scaled(15_000));
    child.stdout!.once('data', (d: Buffer) => {
      clearTimeout(timer);
      resolve(d.toString());
    });
  });
  return { child, line };
}
