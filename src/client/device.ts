// One mapped device: the server's OPEN_RSP, the vhost-user-blk socket serving it, and what
// `ibnbd show` reports. IBNBD made /dev/ibnbd<N> and a devices/<device_id> link; we make
// <run-dir>/vhost/ibnbd<N>.sock and <run-dir>/devices/<device_id> → that socket.
// State: open (RNBD's MAPPED); reconnecting: every path is lost and guest IO waits for the
// server (NVMe-oF's CONNECTING, bounded by ctrl_loss_tmo, IO failed early by fast_io_fail_tmo);
// closed (RNBD's MAPPED_DISCONNECTED) with the reason why: IO fails until a re-OPEN succeeds.
import type { VhostBlk } from '../backend/vhost.js';
import type { OpenRspMsg } from '../proto/ibnbd.js';
import type { MapRequest } from '../proto/map-string.js';
import type { TransportKind as Transport } from '../transport/paths.js';
import type { ClientSession } from './session.js';
import { silentLogger, type Logger } from '../logger.js';

export type DeviceState = 'open' | 'reconnecting' | 'closed';

/** A map request as the client daemon holds it: the policy resolved against its defaults. */
export type MappedRequest = MapRequest & { transport: Transport; ctrlLossTmo: number; fastIoFailTmo: number };

export interface DeviceInfo {
  name: string;
  device_id: string;
  socket: string;
  state: DeviceState;
  /** Why the device is not open ('' while open): path loss, a timeout, a failed re-OPEN, ... */
  state_reason: string;
  /** ISO 8601 time the device entered its state (the map, for a device never disturbed). */
  state_since: string;
  session: string;
  mapping_path: string;
  access_mode: MapRequest['accessMode'];
  io_mode: MapRequest['ioMode'];
  transport: Transport;
  size: number;
  logical_block_size: number;
  physical_block_size: number;
  queues: number;
  read_only: boolean;
  frontend_connected: boolean;
  server_device_id: number;
  paths: string[];
  /** The session's longest pause between reconnect attempts, in seconds (fractional when the
   *  daemon was started with --reconnect-delay-ms). */
  reconnect_delay: number;
  /** The session's io_timeout in seconds: a path with requests outstanding that completes none
   *  for this long is declared dead; 0: off. */
  io_timeout: number;
  ctrl_loss_tmo: number;
  fast_io_fail_tmo: number;
  /** ISO 8601 time the size last changed (ibnbd resize, or a re-OPEN that found another); null: never */
  size_changed_at: string | null;
  /** a VM migration is under way: the front-end turned on dirty logging (VHOST_F_LOG_ALL) */
  dirty_log: boolean;
}

const LOST = 'session disconnected: every path to the server is lost; reconnecting';

export class MappedDevice {
  #state: DeviceState = 'open';
  #reason = '';
  #since = new Date();
  /** Bumped at every state change and at unmap: a timer armed under another value is void. */
  #generation = 0;
  #timers: NodeJS.Timeout[] = [];
  #disposed = false;

  constructor(
    readonly index: number,
    readonly name: string,
    readonly deviceId: string,
    readonly socketPath: string,
    readonly linkPath: string,
    readonly request: MappedRequest,
    readonly session: ClientSession,
    /** The last successful OPEN_RSP (the map's, then each re-OPEN's). */
    public open: OpenRspMsg,
    readonly vhost: VhostBlk,
    /** its lines carry its session and name */
    readonly log: Logger = silentLogger,
  ) {}

  /** open: the server knows the device under open.deviceId and the vhost IO path uses it. */
  get state(): DeviceState {
    return this.#state;
  }

  /** When the device entered its state. */
  get since(): Date {
    return this.#since;
  }

  get stateReason(): string {
    if (this.#state !== 'open' && this.session.state === 'closed') {
      const paths = this.session.native.paths();
      if (paths.length > 0 && paths.every((p) => p.state === 'closed')) {
        const gaveUp = 'session disconnected and every path gave up reconnecting (--max-reconnect-attempts): unmap the device';
        if (this.#state === 'closed') return gaveUp;
        // nothing will bring the server back, yet the device waits out its policy: say both
        const detail = this.#reason.startsWith(`${LOST}; `) ? this.#reason.slice(LOST.length + 2) : this.#reason;
        return `${gaveUp}; until then ${detail}`;
      }
    }
    return this.#reason;
  }

  /** Every path of the session is lost: IO waits for the server under the device's policy
   *  (ctrl_loss_tmo 0 closes it at once, as RNBD does). Called before anything else can be sent
   *  on a session that comes back, so no request reaches a restarted server under an old id. */
  sessionLost(): void {
    const { ctrlLossTmo: ctrl, fastIoFailTmo: fast } = this.request;
    if (this.#state === 'reconnecting') return; // lost again before the re-OPEN: the clocks run on
    if (ctrl === 0 || this.#state === 'closed') {
      this.markClosed(LOST);
      return;
    }
    const failNow = fast === 0;
    this.#nativeNotOpen(!failNow);
    const limits = [
      ...(fast > 0 ? [`IO fails after fast_io_fail_tmo (${fast} s)`] : []),
      ctrl < 0 ? 'the device waits for ever (ctrl_loss_tmo -1)' : `closed after ctrl_loss_tmo (${ctrl} s)`,
    ].join('; ');
    this.#enter('reconnecting', `${LOST}; ${failNow ? 'IO fails (fast_io_fail_tmo 0)' : 'IO waits'}; ${limits}`);
    if (fast > 0) {
      this.#arm(fast, () => {
        this.#nativeNotOpen(false);
        this.#reason = `${LOST}; fast_io_fail_tmo (${fast} s) expired: IO fails until the device is open again` +
          (ctrl < 0 ? '' : `; closed after ctrl_loss_tmo (${ctrl} s)`);
        this.log.warn(`${this.name}: fast_io_fail_tmo (${fast} s) expired: its IO fails now, reconnecting goes on`);
      });
    }
    if (ctrl > 0) {
      this.#arm(ctrl, () => {
        this.markClosed(
          `ctrl_loss_tmo (${ctrl} s) expired: session disconnected, every path to the server lost since ` +
            `${this.#since.toISOString()}; IO fails; re-opened if the session reconnects`,
        );
        this.log.warn(`${this.name}: ${this.#reason}`);
      });
    }
  }

  /** Not open on the server any more: its IO is answered IOERR until a re-OPEN succeeds. */
  markClosed(reason: string): void {
    this.#nativeNotOpen(false);
    this.#enter('closed', reason);
  }

  /** A re-OPEN succeeded (the vhost device already carries the new id: held requests resumed). */
  markReopened(open: OpenRspMsg): void {
    this.open = open;
    this.#enter('open', '');
  }

  /** Unmap or shutdown: no timer of this device may act any more, and requests held for the
   *  server fail now (as those in flight do on a forced unmap) instead of waiting on a dying device. */
  dispose(): void {
    this.#disposed = true;
    this.#generation++;
    this.#clearTimers();
    if (this.#state === 'reconnecting') this.#nativeNotOpen(false);
  }

  /** What the device offers: the server's size, or less where `ibnbd resize --size` said so. */
  get sizeBytes(): number {
    return Math.min(Number(this.open.nsectors) * 512, this.sizeLimit ?? Infinity);
  }

  /** `ibnbd resize --size`: the device offers at most this (kept through re-OPENs); undefined: all of it. */
  sizeLimit: number | undefined;
  #sizeChangedAt: Date | null = null;

  /** The size changed (a resize, or a re-OPEN's geometry): the OPEN_RSP it comes from, and the
   *  front-end told; false when it could not be (no back-end channel: it sees it at its next GET_CONFIG). */
  sizeChanged(open: OpenRspMsg): boolean {
    // checked by the vhost device first (a multiple of the block size): nothing changes on a throw
    this.vhost.setSizeBytes(Math.min(Number(open.nsectors) * 512, this.sizeLimit ?? Infinity));
    this.open = open;
    this.#sizeChangedAt = new Date();
    return this.vhost.notifyConfigChange();
  }

  info(): DeviceInfo {
    return {
      name: this.name,
      device_id: this.deviceId,
      socket: this.socketPath,
      state: this.state,
      state_reason: this.stateReason,
      state_since: this.#since.toISOString(),
      session: this.session.sessname,
      mapping_path: this.request.devicePath,
      access_mode: this.request.accessMode,
      io_mode: this.request.ioMode,
      transport: this.session.transport,
      size: this.sizeBytes,
      logical_block_size: this.open.logicalBlockSize,
      physical_block_size: this.open.physicalBlockSize,
      queues: this.request.queues,
      read_only: this.request.accessMode === 'ro',
      frontend_connected: this.vhost.frontendConnected,
      server_device_id: this.open.deviceId,
      paths: this.session.describePaths(),
      reconnect_delay: this.session.reconnectDelayMs / 1000,
      io_timeout: this.session.ioTimeoutMs / 1000,
      ctrl_loss_tmo: this.request.ctrlLossTmo,
      fast_io_fail_tmo: this.request.fastIoFailTmo,
      size_changed_at: this.#sizeChangedAt?.toISOString() ?? null,
      dirty_log: this.vhost.stats().dirtyLog,
    };
  }

  /** A state change: timers of the old state are void; state_since moves only if the state does. */
  #enter(state: DeviceState, reason: string): void {
    this.#generation++;
    this.#clearTimers();
    if (state !== this.#state) this.#since = new Date();
    this.#state = state;
    this.#reason = reason;
  }

  /** Runs fn after `seconds` unless the state changed or the device was unmapped meanwhile; never
   *  keeps the process alive (a daemon stopping must not wait out a ctrl_loss_tmo). */
  #arm(seconds: number, fn: () => void): void {
    const generation = this.#generation;
    const timer = setTimeout(() => {
      this.#timers = this.#timers.filter((t) => t !== timer);
      if (this.#disposed || this.#generation !== generation) return;
      fn();
    }, seconds * 1000);
    timer.unref();
    this.#timers.push(timer);
  }

  #clearTimers(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers = [];
  }

  #nativeNotOpen(wait: boolean): void {
    try {
      this.vhost.setServerDeviceId(null, wait);
    } catch {
      // EBADF: the vhost device is already closed (an unmap in progress); no IO can come
    }
  }
}
