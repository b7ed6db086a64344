// The system calls of an OPEN that can block on a device or filesystem (open, stat, the
// exclusive claim, the reopens of each io_mode), made on libuv's thread pool: a hung device
// (a dead NFS server under the search path, a stuck disk) holds a pool thread, never the
// event loop (docs/security.md, "A hung device"). readlink and the sysfs reads stay direct:
// procfs and sysfs answer from memory. Closing is direct too: every descriptor here is read-only
// or written with O_DIRECT/O_DSYNC, so close(2) has nothing to flush.
import { closeSync, constants as fsc, fstat, open, readFileSync, readlinkSync, stat, type Stats } from 'node:fs';
import { basename } from 'node:path';
import { promisify } from 'node:util';
import { IbnbdError } from '../errors.js';
import type { IoMode } from '../proto/ibnbd.js';

const openAsync = promisify(open);
const fstatAsync = promisify(fstat);
const statAsync = promisify(stat);

/** Test-only fault hooks (docs/server.md): "<device_path>:<ms>", the open(2) of that OPEN (or the
 *  probe of its device) takes that long, as on a hung device. Read once, when the module loads. */
function hook(name: string): { devName: string; ms: number } | undefined {
  const v = process.env[name];
  const m = v ? /^(.+):(\d+)$/.exec(v) : null;
  return m ? { devName: m[1]!, ms: Number(m[2]) } : undefined;
}
const SLOW_OPEN = hook('IBNBD_FAULT_SLOW_OPEN');
const SLOW_PROBE = hook('IBNBD_FAULT_SLOW_PROBE');

/** Waits as the hook says when it names this device_path. */
export async function faultDelay(stage: 'open' | 'probe', devName: string): Promise<void> {
  const h = stage === 'open' ? SLOW_OPEN : SLOW_PROBE;
  if (h && h.devName === devName) await new Promise((r) => setTimeout(r, h.ms));
}

/** What the daemon sets UV_THREADPOOL_SIZE to when the environment does not say: a few hung
 *  devices each hold a pool thread and leave the rest free. */
export const OPEN_POOL_THREADS = 16;

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

export async function statPath(path: string): Promise<Stats> {
  try {
    return await statAsync(path);
  } catch (e) {
    throw errnoFromFs(e, `stat ${path}`);
  }
}

/** The first descriptor of an OPEN: read-only, non-blocking, never through a symlink. */
export async function openPath(path: string): Promise<number> {
  try {
    return await openAsync(path, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOFOLLOW);
  } catch (e) {
    throw errnoFromFs(e, `open ${path}`);
  }
}

export async function statFd(fd: number, what: string): Promise<Stats> {
  try {
    return await fstatAsync(fd);
  } catch (e) {
    throw errnoFromFs(e, `fstat ${what}`);
  }
}

/** The path of what `fd` is open on (procfs). */
export function fdPath(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch (e) {
    throw errnoFromFs(e, 'readlink /proc/self/fd');
  }
}

/** O_EXCL on the block device behind `fd` (the same inode, through /proc/self/fd). */
export async function claim(fd: number, path: string): Promise<number> {
  try {
    return await openAsync(`/proc/self/fd/${fd}`, fsc.O_RDONLY | fsc.O_EXCL | fsc.O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EBUSY') {
      throw new IbnbdError('EBUSY', `${path} is in use: mounted, or claimed by another program (opened O_EXCL)`);
    }
    throw errnoFromFs(e, `open ${path} O_EXCL`);
  }
}

/**
 * Reopens the object behind `fd` (through /proc/self/fd, so the very same inode, never a path
 * that could have changed) with the flags of one io_mode.
 */
export async function openFdSet(fd: number, ioMode: IoMode, writable: boolean): Promise<FdSet> {
  const via = `/proc/self/fd/${fd}`;
  if (ioMode === 'blockio') {
    const acc = writable ? fsc.O_RDWR : fsc.O_RDONLY;
    const { fd: rw, direct } = await openDirectOrSync(via, acc, writable);
    return { ioMode, writable, readFd: rw, writeFd: writable ? rw : -1, readDirect: direct, writeDirect: direct };
  }
  const readFd = await reopen(via, fsc.O_RDONLY);
  if (!writable) return { ioMode, writable, readFd, writeFd: -1, readDirect: false, writeDirect: false };
  try {
    const { fd: writeFd, direct } = await openDirectOrSync(via, fsc.O_WRONLY, true);
    return { ioMode, writable, readFd, writeFd, readDirect: false, writeDirect: direct };
  } catch (e) {
    closeSync(readFd);
    throw e;
  }
}

/** O_DIRECT; where the filesystem has none (EINVAL, e.g. tmpfs), O_DSYNC for writers. libuv
 *  opens every descriptor O_CLOEXEC. */
async function openDirectOrSync(path: string, flags: number, writable: boolean): Promise<{ fd: number; direct: boolean }> {
  try {
    return { fd: await openAsync(path, flags | fsc.O_DIRECT), direct: true };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw errnoFromFs(e, `open ${path} O_DIRECT`);
  }
  return { fd: await reopen(path, flags | (writable ? fsc.O_DSYNC : 0)), direct: false };
}

async function reopen(path: string, flags: number): Promise<number> {
  try {
    return await openAsync(path, flags);
  } catch (e) {
    throw errnoFromFs(e, `open ${path}`);
  }
}

export function closeFdSet(f: FdSet): void {
  closeSync(f.readFd);
  if (f.writeFd >= 0 && f.writeFd !== f.readFd) closeSync(f.writeFd);
}

/**
 * <device_name> of the seed's devices/ tree. A block device: its kernel name (sysfs, e.g. "loop0",
 * "ram0"), whatever node was opened. A regular file: its resolved path with "/" replaced by "!"
 * (the client's device_id convention), which, unlike the base name, is unique.
 */
export function deviceName(realPath: string, st: Stats): string {
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

/** A filesystem error as the errno the client gets (EROFS/EACCES for a read-only backing file...). */
export function errnoFromFs(e: unknown, what: string): IbnbdError {
  if (e instanceof IbnbdError) return e;
  const err = e as NodeJS.ErrnoException;
  const known = ['ENOENT', 'EACCES', 'EPERM', 'EROFS', 'EBUSY', 'EISDIR', 'ENXIO', 'ENODEV', 'ELOOP', 'EMFILE', 'ENFILE', 'ENOMEM', 'ETXTBSY'] as const;
  const code = known.find((c) => c === err.code) ?? 'EIO';
  return new IbnbdError(code, `${what}: ${err.message}`);
}
