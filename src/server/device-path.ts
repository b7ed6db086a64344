// Where an OPEN's device_path lands on the server (docs/server.md, "Search path rules (OPEN)").
// The client names a device relative to the server's search path; the server must never let that
// name reach outside it. Two layers: a pure check of the name (no "..", no NUL, bounded length),
// then, on the real filesystem, the symlink-resolved path must still be inside the (resolved)
// search directory. The opener re-checks the descriptor it actually got (see exports.ts), which
// closes the window between this check and open().
import { realpath } from 'node:fs/promises';
import { posix } from 'node:path';
import { IbnbdError } from '../errors.js';

export const SESSNAME_TOKEN = '%SESSNAME%';
/** Linux PATH_MAX, terminating NUL included: RNBD refuses search path + name >= PATH_MAX. */
export const PATH_MAX = 4096;
/** dev_name is a NUL-terminated field of 255 bytes in the OPEN message. */
export const DEV_NAME_MAX = 254;

/**
 * The search directory for one session: every %SESSNAME% replaced by the session name.
 * With %SESSNAME% the session name becomes a path component, so it must be one: not empty,
 * not "." or "..", no "/" and no NUL (EINVAL otherwise).
 */
export function searchDirFor(template: string, sessname: string): string {
  if (!template.includes(SESSNAME_TOKEN)) return squeeze(template);
  if (
    sessname.length === 0 ||
    sessname === '.' ||
    sessname === '..' ||
    sessname.includes('/') ||
    sessname.includes('\0')
  ) {
    throw new IbnbdError('EINVAL', `session name ${JSON.stringify(sessname)} cannot name a directory of the search path`);
  }
  return squeeze(template.split(SESSNAME_TOKEN).join(sessname));
}

/**
 * The full path of device_path under searchDir, textually (no filesystem access).
 * device_path is always relative to the search directory, a leading "/" included, as RNBD does:
 * "/dev/ram0" under "/" is "/dev/ram0", under "/srv/devs" it is "/srv/devs/dev/ram0".
 * EINVAL: empty name, NUL, a ".." component, a name longer than the OPEN field, or a result of
 * PATH_MAX bytes or more.
 */
export function joinDevicePath(searchDir: string, devName: string): string {
  if (devName.length === 0) throw new IbnbdError('EINVAL', 'empty device_path');
  if (devName.includes('\0')) throw new IbnbdError('EINVAL', 'device_path contains a NUL byte');
  if (Buffer.byteLength(devName) > DEV_NAME_MAX) {
    throw new IbnbdError('EINVAL', `device_path longer than ${DEV_NAME_MAX} bytes`);
  }
  if (devName.split('/').includes('..')) {
    throw new IbnbdError('EINVAL', `device_path ${JSON.stringify(devName)} has a ".." component`);
  }
  const relative = posix.normalize(devName.replace(/^\/+/, ''));
  if (relative === '.' || relative === '' ) {
    throw new IbnbdError('EINVAL', `device_path ${JSON.stringify(devName)} names the search directory itself`);
  }
  const full = squeeze(`${searchDir}/${relative}`);
  if (Buffer.byteLength(full) >= PATH_MAX) throw new IbnbdError('EINVAL', 'device path too long (PATH_MAX)');
  return full;
}

/** True when `path` is `dir` itself or below it (both absolute, normalized). */
export function isInside(dir: string, path: string): boolean {
  if (dir === '/') return path.startsWith('/');
  return path === dir || path.startsWith(dir.endsWith('/') ? dir : dir + '/');
}

export interface ResolvedDevicePath {
  /** search directory with %SESSNAME% expanded, as configured (not resolved) */
  searchDir: string;
  /** searchDir + device_path, textually */
  fullPath: string;
  /** fullPath with every symlink resolved: what gets opened */
  realPath: string;
  /** searchDir with every symlink resolved: what realPath must stay inside */
  realSearchDir: string;
}

/**
 * Resolves device_path for a session on the real filesystem (off the event loop).
 * ENOENT when the device (or the search directory) does not exist; EPERM when the resolved path
 * leaves the resolved search directory (a symlink pointing out of it); EINVAL as joinDevicePath.
 */
export async function resolveDevicePath(template: string, sessname: string, devName: string): Promise<ResolvedDevicePath> {
  const searchDir = searchDirFor(template, sessname);
  const fullPath = joinDevicePath(searchDir, devName);
  const realSearchDir = await realpathOrThrow(searchDir, 'search directory');
  const realPath = await realpathOrThrow(fullPath, 'device');
  if (!isInside(realSearchDir, realPath)) {
    throw new IbnbdError('EPERM', `device_path ${JSON.stringify(devName)} resolves outside the search path`);
  }
  return { searchDir, fullPath, realPath, realSearchDir };
}

/**
 * A named export's path on the real filesystem: the file it resolves to is also the only thing
 * the opened descriptor may be (realSearchDir = realPath: isInside() then means "is it").
 */
export async function resolveNamedPath(path: string): Promise<ResolvedDevicePath> {
  const realPath = await realpathOrThrow(path, 'export');
  return { searchDir: path, fullPath: path, realPath, realSearchDir: realPath };
}

/** realpath(3) on libuv's thread pool: a hung filesystem holds a pool thread, not the loop. */
async function realpathOrThrow(path: string, what: string): Promise<string> {
  try {
    return await realpath(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new IbnbdError('ENOENT', `${what} ${path} does not exist`);
    if (code === 'ELOOP') throw new IbnbdError('ELOOP', `${what} ${path}: too many symlinks`);
    if (code === 'EACCES') throw new IbnbdError('EACCES', `${what} ${path}: permission denied`);
    if (code === 'ENAMETOOLONG') throw new IbnbdError('EINVAL', `${what} ${path}: name too long`);
    throw new IbnbdError('EIO', `${what} ${path}: ${(e as Error).message}`);
  }
}

function squeeze(p: string): string {
  const s = p.replace(/\/{2,}/g, '/');
  return s.length > 1 && s.endsWith('/') ? s.slice(0, -1) : s;
}
