// The devices this server has open, shared by every session that maps them (RNBD's srv_dev).
// One Export per backing object — a block device is identified by its device number, a regular
// file by (filesystem, inode) — whatever path or symlink each session used to reach it, so the
// writer count (access.ts) really is per device. An Export keeps one descriptor set per
// (io_mode, writable) combination, shared by the sessions that asked for it and closed with the
// last of them.
import { closeSync, constants as fsc, fstatSync, openSync, statSync, readFileSync, readlinkSync, type Stats } from 'node:fs';
import { basename } from 'node:path';
import { IbnbdError } from '../errors.js';
import type { DeviceGeometry } from '../backend/server-native.js';
import type { AccessMode, IoMode } from '../proto/ibnbd.js';
import { WriterCount } from './access.js';
import { isInside, resolveDevicePath } from './device-path.js';

export type ProbeDevice = (fd: number, blockDevice: boolean) => DeviceGeometry;

/**
 * The descriptors one io_mode needs. blockio: one descriptor opened O_DIRECT (or, where the
 * filesystem refuses O_DIRECT, O_DSYNC) for reads and writes. fileio: reads through the page
 * cache on readFd, writes straight to disk on writeFd (O_DIRECT, else O_DSYNC).
 */
export interface FdSet {
  ioMode: IoMode;
  writable: boolean;
  readFd: number;
  writeFd: number; // == readFd for blockio; -1 when read-only
  readDirect: boolean;
  writeDirect: boolean; // false: the write descriptor is O_DSYNC instead
}

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

  /** Takes a reference on the descriptor set for (ioMode, writable), opening it on first use. */
  acquireFds(ioMode: IoMode, writable: boolean, openedFd: number): FdSet {
    const k = `${ioMode}:${writable ? 'rw' : 'ro'}`;
    let e = this.#fdSets.get(k);
    if (!e) {
      e = { fds: openFdSet(openedFd, ioMode, writable), refs: 0 };
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
   */
  open(
    searchPath: string,
    sessname: string,
    devName: string,
    mode: AccessMode,
    admit: (exp: Export) => IoMode,
  ): OpenedDevice {
    const where = resolveDevicePath(searchPath, sessname, devName);
    // Never open(2) anything else (a tty, a fifo, a tape that rewinds on open); the type is
    // checked again on the descriptor.
    let pre: Stats;
    try {
      pre = statSync(where.realPath);
    } catch (e) {
      throw errnoFromFs(e, `stat ${where.realPath}`);
    }
    if (!pre.isBlockDevice() && !pre.isFile()) {
      throw new IbnbdError('EINVAL', `${where.realPath} is neither a block device nor a regular file`);
    }
    let fd: number;
    try {
      fd = openSync(where.realPath, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOFOLLOW);
    } catch (e) {
      throw errnoFromFs(e, `open ${where.realPath}`);
    }
    try {
      // The descriptor is what counts: a symlink swapped in after resolveDevicePath() is caught here.
      const actual = fdPath(fd);
      if (!isInside(where.realSearchDir, actual)) {
        throw new IbnbdError('EPERM', `device_path ${JSON.stringify(devName)} resolves outside the search path`);
      }
      const st = fstatSync(fd);
      const blockDevice = st.isBlockDevice();
      if (!blockDevice && !st.isFile()) {
        throw new IbnbdError('EINVAL', `${actual} is neither a block device nor a regular file`);
      }
      const key = identity(st);
      let exp = this.#byKey.get(key);
      const created = !exp;
      if (!exp) exp = new Export(key, deviceName(actual, st), actual, blockDevice);
      const ioMode = admit(exp);
      if (created && blockDevice) exp.claimFd = claim(fd, actual);
      exp.access.acquire(mode);
      let fds: FdSet;
      try {
        fds = exp.acquireFds(ioMode, mode !== 'ro', fd);
      } catch (e) {
        exp.access.release(mode);
        if (created) exp.closeAll();
        throw e;
      }
      let geometry: DeviceGeometry;
      try {
        geometry = this.probe(probeFd(fds), blockDevice);
      } catch (e) {
        exp.releaseFds(fds);
        exp.access.release(mode);
        if (created) exp.closeAll();
        throw e instanceof IbnbdError ? e : errnoFromFs(e, `probe ${actual}`);
      }
      exp.geometry = geometry;
      exp.refs++;
      if (created) this.#byKey.set(key, exp);
      return { exp, ioMode, fds, geometry, fullPath: where.fullPath };
    } finally {
      closeSync(fd);
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

/**
 * <device_name> of the seed's devices/ tree. A block device: its kernel name (sysfs, e.g. "loop0",
 * "ram0"), whatever node was opened. A regular file: its resolved path with "/" replaced by "!"
 * (the client's device_id convention), which, unlike the base name, is unique.
 */
function deviceName(realPath: string, st: Stats): string {
  if (st.isBlockDevice()) {
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((Math.floor(st.rdev / 4096) & 0xfff00));
    try {
      return basename(readlinkSync(`/sys/dev/block/${major}:${minor}`));
    } catch {
      try {
        const uevent = readFileSync(`/sys/dev/block/${major}:${minor}/uevent`, 'utf8');
        const m = /^DEVNAME=(.*)$/m.exec(uevent);
        if (m) return basename(m[1]!);
      } catch {
        /* no sysfs entry: fall back to the node's name */
      }
      return basename(realPath);
    }
  }
  return realPath.replace(/^\/+/, '').replace(/\//g, '!');
}

/** O_EXCL on the block device behind `fd` (the same inode, through /proc/self/fd). */
function claim(fd: number, path: string): number {
  try {
    return openSync(`/proc/self/fd/${fd}`, fsc.O_RDONLY | fsc.O_EXCL | fsc.O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EBUSY') {
      throw new IbnbdError('EBUSY', `${path} is in use: mounted, or claimed by another program (opened O_EXCL)`);
    }
    throw errnoFromFs(e, `open ${path} O_EXCL`);
  }
}

function fdPath(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch (e) {
    throw errnoFromFs(e, 'readlink /proc/self/fd');
  }
}

/**
 * Reopens the object behind `fd` (through /proc/self/fd, so the very same inode, never a path
 * that could have changed) with the flags of one io_mode.
 */
function openFdSet(fd: number, ioMode: IoMode, writable: boolean): FdSet {
  const via = `/proc/self/fd/${fd}`;
  const base = 0; // libuv opens every descriptor O_CLOEXEC
  if (ioMode === 'blockio') {
    const acc = writable ? fsc.O_RDWR : fsc.O_RDONLY;
    const { fd: rw, direct } = openDirectOrSync(via, base | acc, writable);
    return { ioMode, writable, readFd: rw, writeFd: writable ? rw : -1, readDirect: direct, writeDirect: direct };
  }
  const readFd = reopen(via, base | fsc.O_RDONLY);
  if (!writable) return { ioMode, writable, readFd, writeFd: -1, readDirect: false, writeDirect: false };
  try {
    const { fd: writeFd, direct } = openDirectOrSync(via, base | fsc.O_WRONLY, true);
    return { ioMode, writable, readFd, writeFd, readDirect: false, writeDirect: direct };
  } catch (e) {
    closeSync(readFd);
    throw e;
  }
}

/** O_DIRECT; where the filesystem has none (EINVAL, e.g. tmpfs), O_DSYNC for writers. */
function openDirectOrSync(path: string, flags: number, writable: boolean): { fd: number; direct: boolean } {
  try {
    return { fd: openSync(path, flags | fsc.O_DIRECT), direct: true };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw errnoFromFs(e, `open ${path} O_DIRECT`);
  }
  return { fd: reopen(path, flags | (writable ? fsc.O_DSYNC : 0)), direct: false };
}

function reopen(path: string, flags: number): number {
  try {
    return openSync(path, flags);
  } catch (e) {
    throw errnoFromFs(e, `open ${path}`);
  }
}

function closeFdSet(f: FdSet): void {
  closeSync(f.readFd);
  if (f.writeFd >= 0 && f.writeFd !== f.readFd) closeSync(f.writeFd);
}

/** A filesystem error as the errno the client gets (EROFS/EACCES for a read-only backing file...). */
export function errnoFromFs(e: unknown, what: string): IbnbdError {
  if (e instanceof IbnbdError) return e;
  const err = e as NodeJS.ErrnoException;
  const known = ['ENOENT', 'EACCES', 'EPERM', 'EROFS', 'EBUSY', 'EISDIR', 'ENXIO', 'ENODEV', 'ELOOP', 'EMFILE', 'ENFILE', 'ENOMEM', 'ETXTBSY'] as const;
  const code = known.find((c) => c === err.code) ?? 'EIO';
  return new IbnbdError(code, `${what}: ${err.message}`);
}
