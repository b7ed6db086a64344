// Small C programs for initramfs guests, compiled on the host. The guest has busybox and nothing
// else (no libc to link against, no 9p root: a mounted 9p export blocks migration), so a tool is
// linked statically and handed in through the per-run initramfs member (GuestOptions.files).
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { IbnbdError } from '../../src/errors.js';
import { projectRoot } from '../../src/backend/native.js';
import { cacheDir } from './guest-kernel.js';

const CFLAGS = ['-O2', '-static', '-pthread', '-Wall', '-Wextra', '-Werror'];

/**
 * Path of the static binary built from `source` (a .c file), in $IBNBD_CACHE_DIR/static-tools/.
 * Named by a hash of the source and the flags, so an edit rebuilds and an unchanged source costs
 * nothing; written under a temporary name and renamed, so concurrent test processes never run a
 * half-written binary.
 */
export function buildStaticTool(source: string): string {
  if (!existsSync(source)) throw new IbnbdError('ENOENT', `no tool source ${source}`);
  const text = readFileSync(source);
  const hash = createHash('sha256').update(CFLAGS.join(' ')).update('\0').update(text).digest('hex').slice(0, 16);
  const dir = join(cacheDir(), 'static-tools');
  const out = join(dir, `${basename(source, '.c')}-${hash}`);
  if (existsSync(out)) return out;
  mkdirSync(dir, { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    execFileSync('gcc', [...CFLAGS, '-o', tmp, source], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    rmSync(tmp, { force: true });
    const stderr = (e as { stderr?: Buffer }).stderr?.toString() ?? String(e);
    throw new IbnbdError('EIO', `gcc ${source} failed: ${stderr.trim()}`);
  }
  renameSync(tmp, out);
  return out;
}

/** A guest-side program of harness/guest/ by name (`verify-writer`), built static. */
export function guestTool(name: string): string {
  if (!/^[a-z0-9-]+$/.test(name)) throw new IbnbdError('EINVAL', `bad guest tool name ${name}`);
  return buildStaticTool(join(projectRoot, 'harness', 'guest', `${name}.c`));
}
