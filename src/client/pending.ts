// Mappings of the state file not restored (yet) when the daemon started: the server did not
// answer, the device could not be opened, the socket path is taken by another process. Each is
// kept (its name stays reserved, `list` shows it, `unmap` removes it for good) and tried again
// every reconnect_delay until it is restored. Its socket appears when it is: until then a VM
// configured with the socket and `reconnect=1` keeps retrying, its IO waiting in QEMU.
import { errorText, toIbnbdError } from '../errors.js';
import { RECONNECT_DEFAULTS, deviceIdOf } from '../proto/map-string.js';
import type { DeviceInfo, MappedRequest } from './device.js';
import { describePathSpecs } from './session.js';
import type { Logger } from '../logger.js';

interface Pending {
  name: string;
  request: MappedRequest;
  socketPath: string;
  reason: string;
  /** The last attempt reached the server, which refused (closed); else the server is away. */
  refused: boolean;
  since: Date;
  attempts: number;
  timer?: NodeJS.Timeout;
}

export class PendingMappings {
  readonly #byName = new Map<string, Pending>();
  #stopped = false;

  constructor(
    /** One restore attempt; throws with the reason it failed. wanted() turns false once the
     *  mapping is unmapped meanwhile: the attempt then undoes what it made. */
    private readonly attempt: (name: string, request: MappedRequest, wanted: () => boolean) => Promise<void>,
    private readonly retryMs: (request: MappedRequest) => number,
    private readonly log: Logger,
  ) {}

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  all(): Array<{ name: string; request: MappedRequest }> {
    return [...this.#byName.values()].map((p) => ({ name: p.name, request: p.request }));
  }

  /** The mapping of this session and device_path, if one waits. */
  findByDevice(sessname: string, devicePath: string): string | undefined {
    for (const p of this.#byName.values()) if (p.request.sessname === sessname && p.request.devicePath === devicePath) return p.name;
    return undefined;
  }

  add(name: string, request: MappedRequest, socketPath: string, error: unknown): void {
    const reason = errorText(error);
    const p: Pending = { name, request, socketPath, reason, refused: refusedBy(error), since: new Date(), attempts: 1 };
    this.#byName.set(name, p);
    this.log.warn(`${name}: not restored: ${reason}; trying again every ${this.retryMs(request) / 1000} s`, { device: name, session: request.sessname });
    this.#schedule(p);
  }

  /** Gone for good (unmap); false when no such mapping waits. */
  remove(name: string): boolean {
    const p = this.#byName.get(name);
    if (!p) return false;
    clearTimeout(p.timer);
    this.#byName.delete(name);
    return true;
  }

  stop(): void {
    this.#stopped = true;
    for (const p of this.#byName.values()) clearTimeout(p.timer);
  }

  info(name: string): DeviceInfo | undefined {
    const p = this.#byName.get(name);
    if (!p) return undefined;
    const r = p.request;
    // as a mapped device would be: waiting for a server that is away until ctrl_loss_tmo, closed
    // when the server refuses (the device is gone, taken) or the wait is over; tried again anyway
    const waited = (Date.now() - p.since.getTime()) / 1000;
    const expired = r.ctrlLossTmo >= 0 && waited >= r.ctrlLossTmo;
    const state = p.refused || expired ? 'closed' : 'reconnecting';
    const why = `not restored since the daemon started (${p.attempts} attempts, still tried every ${this.retryMs(r) / 1000} s): ${p.reason}` +
      (expired && !p.refused ? `; ctrl_loss_tmo (${r.ctrlLossTmo} s) expired` : '');
    return {
      name: p.name,
      device_id: deviceIdOf(r.devicePath),
      socket: p.socketPath,
      state,
      state_reason: why,
      state_since: p.since.toISOString(),
      session: r.sessname,
      mapping_path: r.devicePath,
      access_mode: r.accessMode,
      io_mode: r.ioMode,
      transport: r.transport,
      size: 0,
      logical_block_size: 0,
      physical_block_size: 0,
      queues: r.queues,
      read_only: r.accessMode === 'ro',
      frontend_connected: false,
      server_device_id: -1,
      paths: describePathSpecs(r.paths),
      reconnect_delay: r.reconnectDelay ?? RECONNECT_DEFAULTS.reconnectDelay,
      io_timeout: r.ioTimeout ?? RECONNECT_DEFAULTS.ioTimeout,
      ctrl_loss_tmo: r.ctrlLossTmo,
      fast_io_fail_tmo: r.fastIoFailTmo,
      size_changed_at: null,
      dirty_log: false,
    };
  }

  #schedule(p: Pending): void {
    if (this.#stopped) return;
    p.timer = setTimeout(() => {
      if (this.#byName.get(p.name) !== p || this.#stopped) return;
      this.attempt(p.name, p.request, () => this.#byName.get(p.name) === p && !this.#stopped).then(
        () => {
          if (this.#byName.get(p.name) === p) this.#byName.delete(p.name);
          this.log.info(`${p.name}: restored after ${p.attempts + 1} attempts`, { device: p.name, session: p.request.sessname });
        },
        (e: unknown) => {
          if (this.#byName.get(p.name) !== p) return;
          p.attempts++;
          p.reason = errorText(e);
          p.refused = refusedBy(e);
          this.#schedule(p);
        },
      );
    }, this.retryMs(p.request));
  }
}

/** The server answered and said no (OPEN refused), or this host did (the socket path is taken),
 *  as opposed to a server that cannot be reached: connection errors and timeouts. */
function refusedBy(e: unknown): boolean {
  const away = ['ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'ENOTCONN', 'ECONNABORTED', 'EIO', 'ECANCELED'];
  return !away.includes(toIbnbdError(e).code);
}
