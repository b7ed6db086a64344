// Typed view of the native export server (native/server/binding.cc) and probeDevice.
// IO never passes through here: only admin requests, session events and device tables.
import type { AuthKeys } from '../auth/keys-file.js';
import { IbnbdError, toIbnbdError } from '../errors.js';
import { loadNative } from './native.js';
import type { Endpoint, TransportKind } from '../transport/paths.js';
import { checkEndpoint, checkInt, type PathInfo } from './transport.js';
import type { IoMetrics } from './io-metrics.js';

export interface NativeServerOptions {
  transport: TransportKind;
  listen: Endpoint[];
  queueDepth?: number;
  maxIoSize?: number;
  heartbeatMs?: number;
  heartbeatMissedMax?: number;
  /** peer networks ("ADDR/PREFIX") that may connect; absent or empty: any */
  allow?: string[];
  maxSessions?: number;
  maxConnsPerSession?: number;
  maxPendingHandshakes?: number;
  handshakeTimeoutMs?: number;
  maxBufferBytes?: number;
}

/** The bounds against floods a running server can be given again (SIGHUP). */
export type NativeServerLimits = Pick<NativeServerOptions, 'maxSessions' | 'maxConnsPerSession' | 'maxPendingHandshakes' | 'handshakeTimeoutMs' | 'maxBufferBytes'>;

function checkLimits(l: NativeServerLimits): void {
  checkInt('maxSessions', l.maxSessions, 1, 1 << 20);
  checkInt('maxConnsPerSession', l.maxConnsPerSession, 2, 1 << 20);
  checkInt('maxPendingHandshakes', l.maxPendingHandshakes, 1, 1 << 20);
  checkInt('handshakeTimeoutMs', l.handshakeTimeoutMs, 100, 600_000);
  checkInt('maxBufferBytes', l.maxBufferBytes, 1, Number.MAX_SAFE_INTEGER);
}

export type NativeServerEvent =
  | { type: 'session-up'; sessionId: string; sessname: string; uuid: string; paths: PathInfo[] }
  | { type: 'session-down'; sessionId: string }
  | { type: 'request'; sessionId: string; requestId: number; dir: 'read' | 'write'; usr: Buffer; dataLen: number };

/** Descriptors are dup()ed by the native side: the caller may close its own after attaching. */
export type AttachDeviceSpec = {
  readOnly: boolean;
  sizeBytes: number;
  logicalBlockSize: number;
  blockDevice: boolean;
} & (
  | { fd: number; fdDirect?: number; direct: boolean }
  | { readFd: number; writeFd: number; readDirect: boolean; writeDirect: boolean }
);

export interface NativeServerStats {
  sessions: {
    sessionId: string;
    sessname: string;
    uuid: string;
    /** seconds since the session came up (its first path connected) */
    upSeconds: number;
    paths: PathInfo[];
    /** io: stats(true) only, the device's per-operation metrics in this session */
    devices: { deviceId: number; inflight: number; readOnly: boolean; sizeBytes: number; io?: IoMetrics }[];
  }[];
  pendingRequests: number;
}

/** Geometry of an open device, as the native probe reports it; feeds OPEN_RSP. */
export interface DeviceGeometry {
  sizeBytes: number;
  logicalBlockSize: number;
  physicalBlockSize: number;
  maxHwSectors: number;
  maxDiscardSectors: number;
  discardGranularity: number;
  discardAlignment: number;
  maxWriteZeroesSectors: number;
  secureDiscard: boolean;
  rotational: boolean;
  writeCache: boolean;
  fua: boolean;
}

export interface DeviceProbe extends DeviceGeometry {
  isBlockDevice: boolean;
}

interface NativeServerRaw {
  start(): Endpoint[];
  respond(requestId: number, errno: number, data?: Buffer): void;
  attachDevice(sessionId: string, deviceId: number, spec: AttachDeviceSpec): void;
  detachDevice(sessionId: string, deviceId: number): Promise<void>;
  resizeDevice(sessionId: string, deviceId: number, sizeBytes: number): void;
  closeSession(sessionId: string): void;
  stats(withIo?: boolean): NativeServerStats;
  setAuthKeys(secrets: Record<string, Buffer>, openOverRdma: string[], required: boolean): void;
  setLimits(limits: NativeServerLimits): void;
  stop(): Promise<void>;
}

interface ServerExports {
  NativeServer: new (opts: NativeServerOptions, onEvent: (ev: NativeServerEvent) => void) => NativeServerRaw;
  probeDevice(fd: number): Promise<DeviceProbe>;
}

const native = (): ServerExports => loadNative<ServerExports>();

function wrap<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toIbnbdError(e);
  }
}

export class NativeServer {
  readonly #raw: NativeServerRaw;

  constructor(opts: NativeServerOptions, onEvent: (ev: NativeServerEvent) => void) {
    if (opts.transport !== 'tcp' && opts.transport !== 'rdma') throw new IbnbdError('EINVAL', "transport must be 'tcp' or 'rdma'");
    if (!Array.isArray(opts.listen)) throw new IbnbdError('EINVAL', 'listen must be an array of endpoints');
    opts.listen.forEach((ep, i) => checkEndpoint(`listen[${i}]`, ep));
    checkInt('queueDepth', opts.queueDepth, 1, 65535);
    checkInt('maxIoSize', opts.maxIoSize, 4096, 16 << 20);
    checkInt('heartbeatMs', opts.heartbeatMs, 1, 3_600_000);
    checkInt('heartbeatMissedMax', opts.heartbeatMissedMax, 0, 1000);
    checkLimits(opts);
    if (opts.allow !== undefined && (!Array.isArray(opts.allow) || opts.allow.some((c) => typeof c !== 'string'))) {
      throw new IbnbdError('EINVAL', 'allow must be an array of CIDR strings');
    }
    if (typeof onEvent !== 'function') throw new IbnbdError('EINVAL', 'onEvent must be a function');
    this.#raw = wrap(() => new (native().NativeServer)(opts, onEvent));
  }

  /** Listens; returns the bound endpoints (port 0 → the ephemeral port). */
  start(): Endpoint[] {
    return wrap(() => this.#raw.start());
  }
  /** Answers a forwarded request: errno 0 or an errno number (either sign); data for READs. */
  respond(requestId: number, errno: number, data?: Buffer): void {
    wrap(() => this.#raw.respond(requestId, errno, data));
  }
  attachDevice(sessionId: string, deviceId: number, spec: AttachDeviceSpec): void {
    checkInt('deviceId', deviceId, 0, 0xffffffff);
    checkInt('logicalBlockSize', spec.logicalBlockSize, 512, 65536);
    if (typeof spec.sizeBytes !== 'number' || spec.sizeBytes < 0) throw new IbnbdError('EINVAL', 'sizeBytes must be a non-negative number');
    wrap(() => this.#raw.attachDevice(sessionId, deviceId, spec));
  }
  /** Resolves once no IO is in flight on the device any more. */
  detachDevice(sessionId: string, deviceId: number): Promise<void> {
    return wrap(() => this.#raw.detachDevice(sessionId, deviceId));
  }
  /** The id's IO may reach sizeBytes from now on (a re-OPEN's fresh geometry). */
  resizeDevice(sessionId: string, deviceId: number, sizeBytes: number): void {
    checkInt('sizeBytes', sizeBytes, 0, Number.MAX_SAFE_INTEGER);
    wrap(() => this.#raw.resizeDevice(sessionId, deviceId, sizeBytes));
  }
  closeSession(sessionId: string): void {
    wrap(() => this.#raw.closeSession(sessionId));
  }
  /** withIo: every device's per-operation metrics too (a /metrics scrape). */
  stats(withIo = false): NativeServerStats {
    return this.#raw.stats(withIo);
  }
  /** The session secrets (src/auth/keys-file.ts), for handshakes from now on; null: none required. */
  setAuthKeys(keys: AuthKeys | null): void {
    const secrets: Record<string, Buffer> = Object.create(null) as Record<string, Buffer>;
    for (const [name, secret] of keys?.secrets ?? []) secrets[name] = secret;
    wrap(() => this.#raw.setAuthKeys(secrets, [...(keys?.openOverRdma ?? [])], keys !== null));
  }
  /** New bounds, from the next accept or handshake on (what was admitted stays). */
  setLimits(limits: NativeServerLimits): void {
    checkLimits(limits);
    wrap(() => this.#raw.setLimits(limits));
  }
  stop(): Promise<void> {
    return this.#raw.stop();
  }
}

/** The device's geometry through `fd`, asked on libuv's thread pool (native/server/probe.cc). */
export async function probeDevice(fd: number): Promise<DeviceProbe> {
  try {
    return await wrap(() => native().probeDevice(fd));
  } catch (e) {
    throw toIbnbdError(e);
  }
}
