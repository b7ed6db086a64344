// Typed view of the native transport client (native/transport/binding.cc): NativeClientSession
// for JS admin requests and tests, and the IO thread pool (size, adaptive polling). Options are validated here with
// precise errors before the thin C++ class sees them.
import { IbnbdError, toIbnbdError } from '../errors.js';
import type { Endpoint, MpPolicy, PathSpec, TransportKind } from '../transport/paths.js';
import { linkProbe, loadNative } from './native.js';

export type LinkEvent = 'connected' | 'disconnected' | 'reconnected';
export type PathState = 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface ClientSessionOptions {
  transport: TransportKind;
  sessname: string;
  paths: PathSpec[];
  queueDepth?: number;
  maxIoSize?: number;
  mpPolicy?: MpPolicy;
  heartbeatMs?: number;
  heartbeatMissedMax?: number;
  reconnectDelayMs?: number;
  /** A path with requests outstanding that completes none for this long is dead (0: off). */
  ioTimeoutMs?: number;
  maxReconnectAttempts?: number;
  /** The session's secret (docs/security.md): every connection authenticates, mutually. */
  authKey?: Buffer;
}

export interface PathInfo {
  src: string;
  dst: string;
  state: PathState;
  inflight: number;
  reconnects: number;
  hbRttNs: number;
  /** requests completed on this path (any result; a server's path: received on it), cumulative over reconnects */
  requests: number;
  /** requests in flight on this path when it died that were re-issued on another path */
  failovers: number;
}

export interface RequestSpec {
  dir: 'read' | 'write';
  usr: Buffer;
  data?: Buffer;
  readLen?: number;
  /** zero copy: this Buffer is the write source / read destination (readLen/data ignored); on
   *  RDMA it goes to the wire without the bounce pool when it lies in registered memory */
  buffer?: Buffer;
}

export interface RequestResult {
  /** 0 or a negative errno */
  errno: number;
  data?: Buffer;
}

/** The addon's NativeClientSession as it is (tests drive it directly; ClientSession wraps it). */
export interface NativeClientSessionClass {
  new (opts: ClientSessionOptions, onLinkEvent?: (ev: LinkEvent) => void): NativeClientSessionRaw;
}

export interface NativeClientSessionRaw {
  connect(timeoutMs: number): Promise<void>;
  request(r: RequestSpec): Promise<RequestResult>;
  paths(): PathInfo[];
  close(): Promise<void>;
  readonly queueDepth: number;
  readonly maxIoSize: number;
  readonly uuid: string;
  readonly connected: boolean;
  readonly bounceCount: number;
  registerMemory(b: Buffer): number;
  unregisterMemory(handle: number): void;
}

interface TransportExports {
  NativeClientSession: NativeClientSessionClass;
  configureIoThreads(n: number): void;
  ioThreadCount(): number;
  setPollUs(us: number): void;
  ioThreadStats(): IoThreadStats;
}

const native = (): TransportExports => loadNative<TransportExports>();

const MAX_USR_LEN = 512;

/** An optional integer option: absent, or an integer in min..max (else EINVAL naming it). */
export function checkInt(name: string, v: unknown, min: number, max: number): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new IbnbdError('EINVAL', `${name} must be an integer in ${min}..${max}`);
  }
}

export function checkEndpoint(name: string, ep: unknown): asserts ep is Endpoint {
  const e = ep as Endpoint;
  if (!e || typeof e !== 'object') throw new IbnbdError('EINVAL', `${name} must be {kind, addr, port}`);
  if (e.kind !== 'ip' && e.kind !== 'gid') throw new IbnbdError('EINVAL', `${name}.kind must be 'ip' or 'gid'`);
  if (typeof e.addr !== 'string' || e.addr.length === 0) throw new IbnbdError('EINVAL', `${name}.addr must be a non-empty string`);
  checkInt(`${name}.port`, e.port, 0, 65535);
}

export function validateClientOptions(o: ClientSessionOptions): void {
  if (o.transport !== 'tcp' && o.transport !== 'rdma') throw new IbnbdError('EINVAL', "transport must be 'tcp' or 'rdma'");
  if (typeof o.sessname !== 'string' || o.sessname.length === 0 || Buffer.byteLength(o.sessname) > 256) {
    throw new IbnbdError('EINVAL', 'sessname must be 1..256 bytes');
  }
  if (/[\x00-\x1f\x7f/]/.test(o.sessname) || o.sessname === '.' || o.sessname === '..') {
    throw new IbnbdError('EINVAL', "sessname must not contain '/' or control characters");
  }
  if (!Array.isArray(o.paths) || o.paths.length === 0 || o.paths.length > 128) {
    throw new IbnbdError('EINVAL', 'paths must list 1..128 paths');
  }
  o.paths.forEach((p, i) => {
    checkEndpoint(`paths[${i}].dst`, p?.dst);
    if (p.src !== undefined) checkEndpoint(`paths[${i}].src`, p.src);
  });
  checkInt('queueDepth', o.queueDepth, 1, 65535);
  checkInt('maxIoSize', o.maxIoSize, 4096, 16 << 20);
  checkInt('heartbeatMs', o.heartbeatMs, 1, 3_600_000);
  checkInt('heartbeatMissedMax', o.heartbeatMissedMax, 0, 1000);
  checkInt('reconnectDelayMs', o.reconnectDelayMs, 0, 86_400_000);
  checkInt('ioTimeoutMs', o.ioTimeoutMs, 0, 86_400_000);
  checkInt('maxReconnectAttempts', o.maxReconnectAttempts, -1, 1 << 30);
  if (o.authKey !== undefined && (!Buffer.isBuffer(o.authKey) || o.authKey.length < 32 || o.authKey.length > 1024)) {
    throw new IbnbdError('EINVAL', 'authKey must be a Buffer of 32..1024 bytes');
  }
  if (o.mpPolicy !== undefined && !['min-inflight', 'round-robin', 'min-latency'].includes(o.mpPolicy)) {
    throw new IbnbdError('EINVAL', "mpPolicy must be 'min-inflight', 'round-robin' or 'min-latency'");
  }
}

/** An RTRS-shaped client session over the native transport. */
export class ClientSession {
  readonly #raw: NativeClientSessionRaw;
  /** Requests sent from a JS copy (data/readLen, not buffer): on RDMA each one bounces. */
  #copied = 0;

  constructor(opts: ClientSessionOptions, onLinkEvent?: (ev: LinkEvent) => void) {
    validateClientOptions(opts);
    try {
      this.#raw = new (native().NativeClientSession)(opts, onLinkEvent);
    } catch (e) {
      throw toIbnbdError(e);
    }
  }

  /** The native object, for native components that take a session (UnwrapClientSession). */
  get native(): unknown {
    return this.#raw;
  }

  async connect(timeoutMs = 30_000): Promise<void> {
    checkInt('timeoutMs', timeoutMs, 1, 3_600_000);
    try {
      await this.#raw.connect(timeoutMs);
    } catch (e) {
      throw toIbnbdError(e);
    }
  }

  /** One request; resolves with the transport's or the server's errno (never rejects for those). */
  request(r: RequestSpec): Promise<RequestResult> {
    if (r.dir !== 'read' && r.dir !== 'write') throw new IbnbdError('EINVAL', "dir must be 'read' or 'write'");
    if (!Buffer.isBuffer(r.usr) || r.usr.length > MAX_USR_LEN) throw new IbnbdError('EINVAL', `usr must be a Buffer of at most ${MAX_USR_LEN} bytes`);
    if (r.dir === 'write' && r.data !== undefined && !Buffer.isBuffer(r.data)) throw new IbnbdError('EINVAL', 'data must be a Buffer');
    if (r.dir === 'read') checkInt('readLen', r.readLen ?? 0, 0, 16 << 20);
    if (r.buffer !== undefined && !Buffer.isBuffer(r.buffer)) throw new IbnbdError('EINVAL', 'buffer must be a Buffer');
    if (r.buffer === undefined && ((r.dir === 'write' && (r.data?.length ?? 0) > 0) || (r.dir === 'read' && (r.readLen ?? 0) > 0))) this.#copied++;
    try {
      return this.#raw.request(r);
    } catch (e) {
      throw toIbnbdError(e);
    }
  }

  paths(): PathInfo[] {
    return this.#raw.paths();
  }
  get queueDepth(): number {
    return this.#raw.queueDepth;
  }
  get maxIoSize(): number {
    return this.#raw.maxIoSize;
  }
  get uuid(): string {
    return this.#raw.uuid;
  }
  get connected(): boolean {
    return this.#raw.connected;
  }
  close(): Promise<void> {
    return this.#raw.close();
  }

  /** Registers memory for zero copy (RDMA: an MR per path; TCP: nothing to do). Returns a handle. */
  registerMemory(b: Buffer): number {
    if (!Buffer.isBuffer(b) || b.length === 0) throw new IbnbdError('EINVAL', 'registerMemory needs a non-empty Buffer');
    try {
      return this.#raw.registerMemory(b);
    } catch (e) {
      throw toIbnbdError(e);
    }
  }
  /** Only once no request uses the memory any more. */
  unregisterMemory(handle: number): void {
    try {
      this.#raw.unregisterMemory(handle);
    } catch (e) {
      throw toIbnbdError(e);
    }
  }
  /** Requests whose data went through the transport's bounce buffers (unregistered memory). */
  get bounceCount(): number {
    return this.#raw.bounceCount;
  }
  /** Requests this JS side sent from copies (admin messages: SESS_INFO, OPEN…). On RDMA each
   *  of them bounces once, so bounceCount − copiedRequests = the data requests (guest IO) that
   *  were not zero copy. */
  get copiedRequests(): number {
    return this.#copied;
  }
}

/** Size of the process-wide IO thread pool; before any session or server exists (else EBUSY). */
export function configureIoThreads(n: number): void {
  checkInt('ioThreads', n, 1, 1024);
  try {
    native().configureIoThreads(n);
  } catch (e) {
    throw toIbnbdError(e);
  }
}

export function ioThreadCount(): number {
  return native().ioThreadCount();
}

/** --poll-us's range: a window longer than a millisecond would only burn CPU (docs/operations.md). */
export const POLL_US_MAX = 1000;

/** The IO threads' adaptive polling: the window in µs (0: off), the non-blocking waits made in
 *  windows and those that found work (summed over the threads since the start). */
export interface IoThreadStats {
  pollUs: number;
  polls: number;
  pollHits: number;
}

/** After work, each IO thread polls for up to us µs before sleeping (0: never); live, any time. */
export function setPollUs(us: number): void {
  if (typeof us !== 'number' || !Number.isInteger(us) || us < 0 || us > POLL_US_MAX) {
    throw new IbnbdError('EINVAL', `--poll-us: ${String(us)} is not an integer from 0 (off) to ${POLL_US_MAX} microseconds`);
  }
  try {
    native().setPollUs(us);
  } catch (e) {
    throw toIbnbdError(e);
  }
}

/** Does not start the IO threads: all 0 but pollUs before the first session or server. */
export function ioThreadStats(): IoThreadStats {
  return native().ioThreadStats();
}

/** The same as the control socket answers it (client `show`, server `sessions`): io_threads. */
export interface IoThreadsEntry {
  poll_us: number;
  polls: number;
  poll_hits: number;
}

export function ioThreadsEntry(): IoThreadsEntry {
  const s = ioThreadStats();
  return { poll_us: s.pollUs, polls: s.polls, poll_hits: s.pollHits };
}

/** Whether this host has an RDMA device (ibv_get_device_list): the daemons' transport default. */
export function hostHasRdma(): boolean {
  return linkProbe().ibvDevices > 0;
}
