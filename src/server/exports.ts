// The devices this server has open, shared by every session that maps them (RNBD's srv_dev).
// One Export per backing object — a block device is identified by its device number, a regular
// file by (filesystem, inode) — whatever path or symlink each session used to reach it, so the
// writer count (access.ts) really is per device. An Export keeps one descriptor set per
// (io_mode, writable) combination, shared by the sessions that asked for it and closed with the
// last of them.
import { closeSync, type Stats } from 'node:fs';
import type { DeviceGeometry } from '../backend/server-native.js';
import { IbnbdError } from '../errors.js';
import type { AccessMode, IoMode } from '../proto/ibnbd.js';
import { WriterCount } from './access.js';
import { claim, closeFdSet, deviceName, errnoFromFs, faultDelay, fdPath, openFdSet, openPath, statFd, statPath, type FdSet } from './device-fds.js';
import { isInside } from './device-path.js';
import { locateDevice, type DeviceLocator } from './export-list.js';

export type { FdSet } from './device-fds.js';

export type ProbeDevice = (fd: number, blockDevice: boolean) => Promise<DeviceGeometry>;

interface FdSetEntry {
  fds: FdSet;
  refs: number;
}

/** One session's mapping of an export: the seed's devices/<name>/sessions/<sessname>/ entry. */
export interface Holder {
  sessionId: string;
  sessname: string;
  deviceId: number;
  /** device_path as the client sent it: the seed's mapping_path */
  mappingPath: string;
  mode: AccessMode;
  ioMode: IoMode;
}

export class Export {
  readonly access = new WriterCount();
  /** Sessions mapping this export, by session name (one entry per name, as the sysfs tree). */
  readonly holders = new Map<string, Holder>();
  /** geometry of the last probe (each OPEN probes again: a file may have grown) */
  geometry: DeviceGeometry | null = null;
  /** Open references (session devices) to this export. */
  refs = 0;
  readonly #fdSets = new Map<string, FdSetEntry>();
  /** A block device's exclusive claim (O_EXCL), held while any session maps it: a mounted or
   *  otherwise claimed device is EBUSY, and nothing else can claim or mount it meanwhile. The
   *  sessions of this server share it (ro readers, migration), their descriptors opened without. */
  claimFd = -1;

  constructor(
    readonly key: string,
    /** the seed's <device_name>: kernel name of a block device, path with '!' for a file */
    readonly name: string,
    /** resolved path: the seed's block_dev */
    readonly realPath: string,
    readonly blockDevice: boolean,
  ) {}

  /** Takes a reference on the descriptor set for (ioMode, writable), opening it on first use
   *  (ExportTable serializes the opens of one export, so two never race to make one set). */
  async acquireFds(ioMode: IoMode, writable: boolean, openedFd: number): Promise<FdSet> {
    const k = `${ioMode}:${writable ? 'rw' : 'ro'}`;
    let e = this.#fdSets.get(k);
    if (!e) {
      e = { fds: await openFdSet(openedFd, ioMode, writable), refs: 0 };
      this.#fdSets.set(k, e);
    }
    e.refs++;
    return e.fds;
  }

  releaseFds(fds: FdSet): void {
    const k = `${fds.ioMode}:${fds.writable ? 'rw' : 'ro'}`;
    const e = this.#fdSets.get(k);
    if (!e || e.fds !== fds) return;
    if (--e.refs > 0) return;
    this.#fdSets.delete(k);
    closeFdSet(e.fds);
  }

  closeAll(): void {
    for (const e of this.#fdSets.values()) closeFdSet(e.fds);
    this.#fdSets.clear();
    if (this.claimFd >= 0) closeSync(this.claimFd);
    this.claimFd = -1;
  }
}

/** What one OPEN got: the export, a reference to its descriptors, and the current geometry. */
export interface OpenedDevice {
  exp: Export;
  ioMode: IoMode;
  fds: FdSet;
  geometry: DeviceGeometry;
  fullPath: string;
}

export class ExportTable {
  readonly #byKey = new Map<string, Export>();
  /** the last open of each export under way (#serialized) */
  readonly #busy = new Map<string, Promise<void>>();

  constructor(readonly probe: ProbeDevice) {}

  get size(): number {
    return this.#byKey.size;
  }

  list(): Export[] {
    return [...this.#byKey.values()];
  }

  /**
   * Opens device_path for a session: path rules (device-path.ts), then the file itself, which
   * must be a block device or a regular file inside the search directory (checked again on the
   * descriptor actually opened). `admit(exp)` runs before anything is taken: it does the
   * per-session checks, may throw (nothing stays held then) and picks the io_mode.
   * Then the access mode is counted (EPERM) and the descriptors for the io_mode taken.
   * Every call that can block runs off the event loop (device-fds.ts, the native probe); the
   * opens of one export are serialized, so the table never changes under one of them.
   */
  async open(
    locator: DeviceLocator,
    sessname: string,
    devName: string,
    mode: AccessMode,
    admit: (exp: Export) => IoMode,
  ): Promise<OpenedDevice> {
    const where = await locateDevice(locator, sessname, devName, mode);
    // Never open(2) anything else (a tty, a fifo, a tape that rewinds on open); the type is
    // checked again on the descriptor.
    const pre = await statPath(where.realPath);
    if (!pre.isBlockDevice() && !pre.isFile()) {
      throw new IbnbdError('EINVAL', `${where.realPath} is neither a block device nor a regular file`);
    }
    await faultDelay('open', devName);
    const fd = await openPath(where.realPath);
    try {
      // The descriptor is what counts: a symlink swapped in after resolveDevicePath() is caught here.
      const actual = fdPath(fd);
      if (!isInside(where.realSearchDir, actual)) {
        throw new IbnbdError('EPERM', `device_path ${JSON.stringify(devName)} resolves outside the search path`);
      }
      const st = await statFd(fd, actual);
      const blockDevice = st.isBlockDevice();
      if (!blockDevice && !st.isFile()) {
        throw new IbnbdError('EINVAL', `${actual} is neither a block device nor a regular file`);
      }
      const key = identity(st);
      return await this.#serialized(key, async () => {
        let exp = this.#byKey.get(key);
        const created = !exp;
        if (!exp) exp = new Export(key, deviceName(actual, st), actual, blockDevice);
        const ioMode = admit(exp);
        // a reference from here on: another session's CLOSE meanwhile cannot close it under us
        const held = exp;
        held.refs++;
        if (created) this.#byKey.set(key, held);
        const undo = (): void => {
          if (--held.refs > 0) return;
          held.closeAll();
          this.#byKey.delete(key);
        };
        try {
          if (created && blockDevice) held.claimFd = await claim(fd, actual);
          held.access.acquire(mode);
        } catch (e) {
          undo();
          throw e;
        }
        let fds: FdSet;
        try {
          fds = await held.acquireFds(ioMode, mode !== 'ro', fd);
        } catch (e) {
          held.access.release(mode);
          undo();
          throw e;
        }
        let geometry: DeviceGeometry;
        try {
          await faultDelay('probe', devName);
          geometry = await this.probe(probeFd(fds), blockDevice);
        } catch (e) {
          held.releaseFds(fds);
          held.access.release(mode);
          undo();
          throw e instanceof IbnbdError ? e : errnoFromFs(e, `probe ${actual}`);
        }
        held.geometry = geometry;
        return { exp: held, ioMode, fds, geometry, fullPath: where.fullPath };
      });
    } finally {
      closeSync(fd);
    }
  }

  /** Runs the opens of one export one after the other (a hung one holds only its own export). */
  async #serialized<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const run = (this.#busy.get(key) ?? Promise.resolve()).then(fn);
    const tail = run.then(() => undefined, () => undefined);
    this.#busy.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.#busy.get(key) === tail) this.#busy.delete(key);
    }
  }

  /** Gives back one open: access mode, descriptor reference, and the export with its last user. */
  close(exp: Export, fds: FdSet, mode: AccessMode): void {
    exp.access.release(mode);
    exp.releaseFds(fds);
    if (--exp.refs === 0) {
      exp.closeAll();
      this.#byKey.delete(exp.key);
    }
  }

  closeAll(): void {
    for (const exp of this.#byKey.values()) exp.closeAll();
    this.#byKey.clear();
  }
}

/** The descriptor to probe: the writable one when there is one (see probe.ts). */
export function probeFd(fds: FdSet): number {
  return fds.writeFd >= 0 ? fds.writeFd : fds.readFd;
}

function identity(st: Stats): string {
  return st.isBlockDevice() ? `blk:${st.rdev}` : `file:${st.dev}:${st.ino}`;
}
