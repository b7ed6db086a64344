// Typed wrapper of NativeVhostBlk (native/vhost/binding.cc): one vhost-user-blk back-end per
// mapped device. Options are validated here with precise EINVAL messages (better-sqlite3
// style); the C++ class re-checks only what would be unsafe natively.
import { loadNative } from './native.js';
import { IbnbdError, toIbnbdError } from '../errors.js';
import type { IoMetrics } from './io-metrics.js';

export const VHOST_MAX_QUEUES = 16;
export const VIRTIO_BLK_ID_BYTES = 20;

export interface VhostBlkOptions {
  /** Unix socket path the front-end (QEMU, libblkio) connects to; created with mode 0600. */
  socketPath: string;
  /** The NativeClientSession JS object of the transport session serving this device. */
  session: object;
  /** The server's device id from OPEN_RSP (u32). */
  deviceId: number;
  /** GET_ID answer (virtio-blk serial), at most 20 bytes UTF-8. */
  serial?: string;
  sizeBytes: number | bigint;
  logicalBlockSize?: number;
  physicalBlockSize?: number;
  readOnly?: boolean;
  /** Virtqueues offered (MQ), 1..16. */
  queues?: number;
  discard?: { maxSectors: number; granularity?: number } | null;
  writeZeroes?: { maxSectors: number } | null;
  secureErase?: boolean;
  /** Server has a volatile write cache (initial virtio `writeback`). */
  writeback?: boolean;
  /** Server honours FUA (used for writes while the guest runs the cache write-through). */
  fua?: boolean;
  /** A request lost with the session's last path while the device is open: held until the
   *  client decides (setServerDeviceId), or answered IOERR at once (false: RNBD's behaviour,
   *  ctrl_loss_tmo=0). Default true. */
  holdOnLoss?: boolean;
  /** The mapping's name: the `device` of the native log lines about it (default: the socket path). */
  name?: string;
}

export type VhostEvent =
  | { type: 'connected'; detail: string }
  | { type: 'disconnected'; detail: string }
  | { type: 'error'; detail: string };

export interface VhostQueueStats {
  requests: number;
  readBytes: number;
  writeBytes: number;
  errors: number;
  splits: number;
  inflight: number;
  /** Requests held while the device waits for its server (setServerDeviceId(null, true)):
   *  those the transport lost when the last path went; new ones wait in the virtqueue uncounted. */
  waiting: number;
}

export interface VhostStats extends VhostQueueStats {
  connections: number;
  protocolErrors: number;
  /** the front-end is migrating the VM: pages the device writes are marked in its dirty log */
  dirtyLog: boolean;
  /** pages marked in dirty logs since the device started */
  dirtyPages: number;
  queues: VhostQueueStats[];
  /** stats(true) only: per operation, summed over the queues (the Prometheus metrics) */
  io?: IoMetrics;
}

interface NativeVhostBlkInstance {
  start(): void;
  readonly frontendConnected: boolean;
  disconnectFrontend(): Promise<boolean>;
  stats(withIo?: boolean): VhostStats;
  setServerDeviceId(id: number | null, wait?: boolean): void;
  setSizeBytes(bytes: number): void;
  notifyConfigChange(): boolean;
  writtenEnd(): number;
  close(handOver?: boolean): Promise<boolean>;
}

type NativeVhostBlkCtor = new (options: VhostBlkOptions, onEvent: (e: VhostEvent) => void) => NativeVhostBlkInstance;

function invalid(message: string): never {
  throw new IbnbdError('EINVAL', message);
}

function isU32(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}

function isBlockSize(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 512 && n <= 65536 && (n & (n - 1)) === 0;
}

/** Throws IbnbdError EINVAL naming the first bad option; returns the options normalised. */
export function validateVhostOptions(o: VhostBlkOptions): VhostBlkOptions {
  if (o === null || typeof o !== 'object') invalid('vhost options must be an object');
  if (typeof o.socketPath !== 'string' || o.socketPath.length === 0) invalid('socketPath must be a non-empty string');
  if (Buffer.byteLength(o.socketPath) > 107) invalid(`socketPath longer than 107 bytes: ${o.socketPath}`);
  if (o.session === null || typeof o.session !== 'object') invalid('session must be a NativeClientSession');
  if (o.name !== undefined && (typeof o.name !== 'string' || Buffer.byteLength(o.name) > 100)) invalid('name must be a string of at most 100 bytes');
  if (!isU32(o.deviceId)) invalid(`deviceId must be an integer 0..4294967295, got ${String(o.deviceId)}`);
  if (o.serial !== undefined) {
    if (typeof o.serial !== 'string') invalid('serial must be a string');
    if (Buffer.byteLength(o.serial) > VIRTIO_BLK_ID_BYTES) invalid(`serial longer than ${VIRTIO_BLK_ID_BYTES} bytes: ${o.serial}`);
  }
  const size = typeof o.sizeBytes === 'bigint' ? o.sizeBytes : typeof o.sizeBytes === 'number' && Number.isSafeInteger(o.sizeBytes) ? BigInt(o.sizeBytes) : -1n;
  if (size <= 0n || size % 512n !== 0n) invalid(`sizeBytes must be a positive multiple of 512, got ${String(o.sizeBytes)}`);
  const lbs = o.logicalBlockSize ?? 512;
  if (!isBlockSize(lbs)) invalid(`logicalBlockSize must be a power of 2 in 512..65536, got ${String(o.logicalBlockSize)}`);
  const pbs = o.physicalBlockSize ?? lbs;
  if (!isBlockSize(pbs)) invalid(`physicalBlockSize must be a power of 2 in 512..65536, got ${String(o.physicalBlockSize)}`);
  if (pbs < lbs) invalid(`physicalBlockSize ${pbs} smaller than logicalBlockSize ${lbs}`);
  if (size % BigInt(lbs) !== 0n) invalid(`sizeBytes ${size} not a multiple of logicalBlockSize ${lbs}`);
  const queues = o.queues ?? 1;
  if (!Number.isInteger(queues) || queues < 1 || queues > VHOST_MAX_QUEUES) invalid(`queues must be an integer 1..${VHOST_MAX_QUEUES}, got ${String(o.queues)}`);
  for (const key of ['readOnly', 'secureErase', 'writeback', 'fua', 'holdOnLoss'] as const) {
    if (o[key] !== undefined && typeof o[key] !== 'boolean') invalid(`${key} must be a boolean`);
  }
  if (o.discard != null) {
    if (typeof o.discard !== 'object') invalid('discard must be an object { maxSectors, granularity }');
    if (!isU32(o.discard.maxSectors)) invalid('discard.maxSectors must be an integer 0..4294967295');
    if (o.discard.granularity !== undefined && !isU32(o.discard.granularity)) invalid('discard.granularity must be an integer 0..4294967295');
  }
  if (o.writeZeroes != null) {
    if (typeof o.writeZeroes !== 'object') invalid('writeZeroes must be an object { maxSectors }');
    if (!isU32(o.writeZeroes.maxSectors)) invalid('writeZeroes.maxSectors must be an integer 0..4294967295');
  }
  if (o.secureErase && !(o.discard && o.discard.maxSectors > 0)) invalid('secureErase needs discard limits (it shares them)');
  return { ...o, logicalBlockSize: lbs, physicalBlockSize: pbs, queues, sizeBytes: size };
}

/** One vhost-user-blk back-end. */
export class VhostBlk {
  readonly options: VhostBlkOptions;
  #native: NativeVhostBlkInstance;

  constructor(options: VhostBlkOptions, onEvent: (e: VhostEvent) => void = () => {}) {
    this.options = validateVhostOptions(options);
    const { NativeVhostBlk } = loadNative<{ NativeVhostBlk: NativeVhostBlkCtor }>();
    try {
      this.#native = new NativeVhostBlk(this.options, onEvent);
    } catch (e) {
      // the session check throws a plain TypeError: that is a bad option, not an IO error
      if (e instanceof TypeError) throw new IbnbdError('EINVAL', `session: ${e.message}`);
      throw toIbnbdError(e);
    }
  }

  /** Starts listening. EEXIST: a non-socket file is in the way; EADDRINUSE: someone listens. */
  start(): void {
    try {
      this.#native.start();
    } catch (e) {
      throw toIbnbdError(e);
    }
  }

  get frontendConnected(): boolean {
    return this.#native.frontendConnected;
  }

  /** Forcibly disconnects the front-end; every request it made, in flight or still in its
   *  rings, completes with IOERR. */
  disconnectFrontend(): Promise<boolean> {
    return this.#native.disconnectFrontend();
  }

  /** withIo: add the per-operation metrics (a /metrics scrape; `show` leaves them out). */
  stats(withIo = false): VhostStats {
    const s = this.#native.stats(withIo);
    // The device's total of held requests is summed here from the queues (the one counter whose
    // total the native side need not keep); an addon without the counter reports 0.
    for (const q of s.queues) q.waiting ??= 0;
    s.waiting = s.queues.reduce((n, q) => n + q.waiting, 0);
    return s;
  }

  /**
   * The server's id of the device after a re-OPEN (session reconnect): requests held while
   * waiting are re-submitted with it first, in order, then the rings are served again; requests
   * in flight keep the id they were sent with.
   * null: the device is not open on the server. With wait, its requests wait: new ones stay in
   * the virtqueue, those the transport lost are held, the guest sees no error. Without, held and
   * new requests are answered VIRTIO_BLK_S_IOERR without reaching the transport.
   */
  setServerDeviceId(id: number | null, wait = false): void {
    if (id !== null && !isU32(id)) invalid(`deviceId must be an integer 0..4294967295 or null, got ${String(id)}`);
    if (typeof wait !== 'boolean') invalid('wait must be a boolean');
    if (id !== null && wait) invalid('wait applies to a device that is not open (id null)');
    try {
      if (id === null) this.#native.setServerDeviceId(null, wait);
      else this.#native.setServerDeviceId(id);
    } catch (e) {
      throw toIbnbdError(e);
    }
  }

  /** Tells the front-end its config space changed (the capacity): true if it could be told
   *  (a QEMU with the back-end channel set up); it then reads GET_CONFIG and tells the guest. */
  notifyConfigChange(): boolean {
    try {
      return this.#native.notifyConfigChange();
    } catch (e) {
      throw toIbnbdError(e);
    }
  }

  /** The end of the highest byte the front-ends have written (a shrink must not cut it). */
  writtenEnd(): number {
    return this.#native.writtenEnd();
  }

  /** The size a re-OPEN reported, or a resize set: bounds checks and the config space use it from now on. */
  setSizeBytes(bytes: number): void {
    const lbs = this.options.logicalBlockSize ?? 512;
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % lbs !== 0) {
      invalid(`sizeBytes must be a positive multiple of ${lbs}, got ${String(bytes)}`);
    }
    try {
      this.#native.setSizeBytes(bytes);
    } catch (e) {
      throw toIbnbdError(e);
    }
  }

  /**
   * Stops listening, disconnects the front-end; true when the transport drained. Its in-flight
   * requests complete with IOERR, unless handOver (the daemon stops and the next one serves the
   * socket: SIGTERM): then nothing more is popped, what the server is executing gets up to 5 s to
   * be answered, and the rest is left unanswered for the front-end to resubmit to the next
   * daemon (QEMU's inflight area), as after a crash.
   */
  close(handOver = false): Promise<boolean> {
    if (typeof handOver !== 'boolean') invalid('handOver must be a boolean');
    return this.#native.close(handOver);
  }
}
