// An OPEN's system calls tried first off the event loop (docs/security.md, "A hung device"). The
// OPEN itself (exports.ts: realpath, stat, open, the reopen of its descriptors, the probe) runs
// synchronously, because the device table must not change under it; a device or filesystem
// that hangs (a dead NFS server under the search path) would then stop the whole daemon: every
// session's OPEN, the control socket, the log. So each OPEN first resolves, stats and opens its
// path on libuv's thread pool, bounded by --open-timeout-ms: a path that does not answer in time
// fails that OPEN with ETIMEDOUT and is never touched on the loop; one that answers is then
// opened for real, its inodes warm. The pool's thread stays in the hung call until the kernel
// lets go; the daemon starts with a pool large enough that a few such paths leave the rest free.
import { constants as fsc } from 'node:fs';
import { open, realpath, stat } from 'node:fs/promises';
import { IbnbdError } from '../errors.js';
import { joinDevicePath, searchDirFor } from './device-path.js';

/** Test-only fault hook (docs/server.md): "<device_path>:<ms>", the pre-flight of that OPEN takes
 *  that long, as a hung open(2) would. Read once, when the module loads. */
const SLOW_OPEN = (() => {
  const v = process.env.IBNBD_FAULT_SLOW_OPEN;
  const m = v ? /^(.+):(\d+)$/.exec(v) : null;
  return m ? { name: m[1]!, ms: Number(m[2]) } : undefined;
})();

/** What the daemon sets UV_THREADPOOL_SIZE to when the environment does not say. */
export const OPEN_POOL_THREADS = 16;

async function touch(searchPath: string, sessname: string, devName: string): Promise<void> {
  if (SLOW_OPEN && SLOW_OPEN.name === devName) await new Promise((r) => setTimeout(r, SLOW_OPEN.ms));
  try {
    const dir = searchDirFor(searchPath, sessname);
    await realpath(dir);
    const real = await realpath(joinDevicePath(dir, devName));
    const st = await stat(real);
    if (!st.isBlockDevice() && !st.isFile()) return; // refused by the OPEN itself, never opened
    const fh = await open(real, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOFOLLOW);
    await fh.close();
  } catch {
    // whatever went wrong, the OPEN finds it again, with its precise errno
  }
}

/** Resolves once the path answered; ETIMEDOUT after timeoutMs. */
export async function preflightOpen(searchPath: string, sessname: string, devName: string, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new IbnbdError('ETIMEDOUT', `opening ${JSON.stringify(devName)} did not finish within ${timeoutMs} ms (--open-timeout-ms): a hung device or filesystem?`)),
      timeoutMs,
    );
  });
  try {
    await Promise.race([touch(searchPath, sessname, devName), late]);
  } finally {
    clearTimeout(timer);
  }
}
