// Shared set-up for the server tests: temp trees, files, loop devices (always detached in
// teardown), and IBNBD admin message bytes.
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encode, type AccessMode, type IoMode } from '../src/proto/ibnbd.js';

export function tempDir(t: ExecutionContext, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `ibnbd-${prefix}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function sparseFile(path: string, size: number): string {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  return path;
}

/** A loop device over `file`, detached in teardown (registered before anything can fail). */
export function loopDevice(t: ExecutionContext, file: string): string {
  const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8', timeout: 10_000 }).trim();
  t.teardown(() => {
    try {
      execFileSync('losetup', ['-d', dev], { timeout: 10_000 });
    } catch {
      /* already gone */
    }
  });
  return dev;
}

export const sessInfo = (ver = 2): Buffer => encode({ type: 'SESS_INFO', ver });
export const openMsg = (devName: string, accessMode: AccessMode = 'rw', ioMode: IoMode = 'blockio'): Buffer =>
  encode({ type: 'OPEN', accessMode, ioMode, devName });
export const closeMsg = (deviceId: number): Buffer => encode({ type: 'CLOSE', deviceId });
