// One client session as the export server sees it (RNBD's srv_sess): the negotiated protocol
// version and the devices it opened, each with a device id private to the session. Applies the
// OPEN/CLOSE rules of docs/protocol.md ("Server rules for OPEN and CLOSE", "Access modes"); the
// bytes are decoded and encoded elsewhere (admin.ts).
import { IbnbdError } from '../errors.js';
import type { DeviceGeometry } from '../backend/server-native.js';
import type { AccessMode, IoMode } from '../proto/ibnbd.js';
import { probeFd, type Export, type ExportTable, type FdSet } from './exports.js';
import type { DeviceLocator } from './export-list.js';

export const SERVER_PROTO_VER = 2;
const MAX_DEVICE_ID = 0xffffffff;

/** What the native data path needs to serve IO for one (session, device id). */
export interface AttachSpec {
  fds: FdSet;
  readOnly: boolean;
  blockDevice: boolean;
  geometry: DeviceGeometry;
}

/** The IO side, implemented over the native server (server.ts); IO never passes through JS. */
export interface DataPath {
  attach(sessionId: string, deviceId: number, spec: AttachSpec): void;
  /** Stops IO on the id; when it returns no IO uses the descriptors any more. */
  detach(sessionId: string, deviceId: number): void;
  /** A re-OPEN found another size: the range checks of the id's IO follow it. */
  resize?(sessionId: string, deviceId: number, sizeBytes: number): void;
}

export interface SessionContext {
  exports: ExportTable;
  /** named exports, then dev_search_path (%SESSNAME% not yet expanded): what device_path names */
  locator: DeviceLocator;
  dataPath: DataPath;
  /** devices one session may have open (--max-devices-per-session); more are EMFILE */
  maxDevices?: number;
}

export interface SessionDevice {
  deviceId: number;
  mappingPath: string;
  mode: AccessMode;
  ioMode: IoMode;
  exp: Export;
  fds: FdSet;
  geometry: DeviceGeometry;
  openedAt: Date;
}

export interface OpenRequest {
  accessMode: AccessMode;
  ioMode: IoMode;
  devName: string;
}

export interface OpenResult {
  deviceId: number;
  geometry: DeviceGeometry;
  ioMode: IoMode;
  /** true when the same session re-opened the same dev_name (reconnect): nothing new was taken */
  reused: boolean;
}

export class ExportSession {
  /** open devices by device id */
  readonly devices = new Map<number, SessionDevice>();
  /** ids of force-closed devices, kept so a still-mapped client gets errors, not another device */
  readonly reservedIds = new Set<number>();
  readonly #byName = new Map<string, SessionDevice>();
  /** negotiated protocol version, null before SESS_INFO */
  ver: number | null = null;
  #closed = false;
  /** the last OPEN under way (open()) */
  #opening: Promise<void> = Promise.resolve();

  constructor(
    readonly id: string,
    readonly sessname: string,
    public paths: string[],
    private readonly ctx: SessionContext,
  ) {}

  get closed(): boolean {
    return this.#closed;
  }

  /** SESS_INFO: ver = min(client, ours). */
  sessInfo(clientVer: number): number {
    this.ver = Math.min(clientVer, SERVER_PROTO_VER);
    return this.ver;
  }

  /**
   * OPEN, off the event loop where it can block (exports.ts). The OPENs of one session run one
   * after the other, as their checks (EEXIST, the device count, the id) assume. `givenUp` resolves
   * when the caller stops waiting (--open-timeout-ms): the next OPEN goes ahead, and what this one
   * took when it finally returns is given back.
   */
  open(req: OpenRequest, givenUp?: Promise<void>): Promise<OpenResult> {
    let gone = false;
    void givenUp?.then(() => {
      gone = true;
    });
    const run = this.#opening.then(() => this.#open(req, () => gone));
    // the next OPEN waits for this one, or for its caller giving up on it (a hung device)
    const settled = run.then(() => undefined, () => undefined);
    this.#opening = givenUp ? Promise.race([settled, givenUp]) : settled;
    return run;
  }

  async #open(req: OpenRequest, gone: () => boolean): Promise<OpenResult> {
    const check = (): void => {
      if (this.#closed) throw new IbnbdError('ENOTCONN', 'session is closing');
      if (gone()) throw new IbnbdError('ETIMEDOUT', 'the OPEN was given up (--open-timeout-ms)');
    };
    check();
    const mode = req.accessMode;
    const existing = this.#byName.get(req.devName);
    if (existing) {
      // The reconnect re-OPEN: same id, fresh geometry, no second permission check.
      const geometry = await this.#reprobe(existing);
      check();
      return { deviceId: existing.deviceId, geometry, ioMode: existing.ioMode, reused: true };
    }
    if (this.ctx.maxDevices !== undefined && this.devices.size >= this.ctx.maxDevices) {
      throw new IbnbdError('EMFILE', `session ${this.sessname} has ${this.devices.size} devices open, its most (--max-devices-per-session)`);
    }
    const opened = await this.ctx.exports.open(this.ctx.locator, this.sessname, req.devName, mode, (exp) => {
      const holder = exp.holders.get(this.sessname);
      if (holder) {
        throw new IbnbdError(
          'EEXIST',
          `${exp.name} is already mapped by session ${this.sessname} as ${JSON.stringify(holder.mappingPath)}`,
        );
      }
      return req.ioMode;
    });
    try {
      check();
    } catch (e) {
      this.ctx.exports.close(opened.exp, opened.fds, mode);
      throw e;
    }
    const deviceId = this.#allocateId();
    const ioMode = opened.ioMode;
    const dev: SessionDevice = {
      deviceId,
      mappingPath: req.devName,
      mode,
      ioMode,
      exp: opened.exp,
      fds: opened.fds,
      geometry: opened.geometry,
      openedAt: new Date(),
    };
    try {
      this.ctx.dataPath.attach(this.id, deviceId, {
        fds: opened.fds,
        readOnly: mode === 'ro',
        blockDevice: opened.exp.blockDevice,
        geometry: opened.geometry,
      });
    } catch (e) {
      this.ctx.exports.close(opened.exp, opened.fds, mode);
      throw e;
    }
    opened.exp.holders.set(this.sessname, {
      sessionId: this.id,
      sessname: this.sessname,
      deviceId,
      mappingPath: req.devName,
      mode,
      ioMode,
    });
    this.devices.set(deviceId, dev);
    this.#byName.set(req.devName, dev);
    return { deviceId, geometry: opened.geometry, ioMode, reused: false };
  }

  /** CLOSE: releases the device; an unknown id is ignored, a force-closed one is forgotten. */
  close(deviceId: number): void {
    if (this.reservedIds.delete(deviceId)) return;
    const dev = this.devices.get(deviceId);
    if (dev) this.#release(dev);
  }

  /** The server side's force_close: the device goes, its id stays reserved until the client CLOSEs. */
  forceClose(deviceId: number): void {
    const dev = this.devices.get(deviceId);
    if (!dev) throw new IbnbdError('ENOENT', `session ${this.sessname} has no device ${deviceId}`);
    this.#release(dev);
    this.reservedIds.add(deviceId);
  }

  /** The session died or the server stops: every device is released. Idempotent. */
  closeAll(): void {
    this.#closed = true;
    for (const dev of [...this.devices.values()]) this.#release(dev);
    this.reservedIds.clear();
  }

  #release(dev: SessionDevice): void {
    this.devices.delete(dev.deviceId);
    this.#byName.delete(dev.mappingPath);
    const holder = dev.exp.holders.get(this.sessname);
    if (holder && holder.sessionId === this.id && holder.deviceId === dev.deviceId) dev.exp.holders.delete(this.sessname);
    try {
      this.ctx.dataPath.detach(this.id, dev.deviceId);
    } finally {
      this.ctx.exports.close(dev.exp, dev.fds, dev.mode);
    }
  }

  async #reprobe(dev: SessionDevice): Promise<DeviceGeometry> {
    try {
      const before = dev.geometry.sizeBytes;
      dev.geometry = await this.ctx.exports.probe(probeFd(dev.fds), dev.exp.blockDevice);
      dev.exp.geometry = dev.geometry;
      // a grown file or device (ibnbd resize): this mapping's IO may now reach the new end
      if (dev.geometry.sizeBytes !== before) this.ctx.dataPath.resize?.(this.id, dev.deviceId, dev.geometry.sizeBytes);
    } catch {
      /* keep the geometry of the first OPEN */
    }
    return dev.geometry;
  }

  /** Lowest id neither open nor reserved (RNBD: xa_alloc over 32 bits). */
  #allocateId(): number {
    for (let id = 0; id <= MAX_DEVICE_ID; id++) {
      if (!this.devices.has(id) && !this.reservedIds.has(id)) return id;
    }
    throw new IbnbdError('ENOSPC', 'no free device id');
  }
}
