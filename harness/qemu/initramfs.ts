// The guest's initramfs, in two gzip'd cpio members the kernel unpacks one after the other:
// a base (busybox, modules, /init), cached by content hash because it is the same for every
// run with the same modules, and a small per-run member with the script and its settings.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cpioGzip, type CpioEntry } from './cpio.js';
import { cacheDir, guestKernel, moduleBytes, resolveModules } from './guest-kernel.js';
import { INIT_SCRIPT, SCRIPT_PRELUDE } from './guest-init.js';

const BUSYBOX = '/bin/busybox';

/** A file the per-run member adds, e.g. a static tool as `bin/verify-writer` (harness/qemu/static-tool.ts). */
export interface GuestFile {
  /** relative to the guest's /: `bin/NAME` or `harness/NAME` */
  path: string;
  data: Buffer | string;
  /** permission bits; default 0o644 */
  mode?: number;
}

export interface RunSettings {
  mode: 'initramfs' | 'hostroot';
  net: boolean;
  shares: { tag: string; guestPath: string; readOnly?: boolean }[];
  script: string;
  files?: GuestFile[];
}

/** Path of the cached base archive holding busybox, /init and `modules` (with dependencies). */
export function buildBaseInitramfs(modules: string[]): string {
  const resolved = resolveModules(modules);
  const entries: CpioEntry[] = [
    ...['bin', 'sbin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'run', 'lib', 'lib/modules', 'harness'].map(
      (path) => ({ kind: 'dir' as const, path }),
    ),
    { kind: 'file', path: 'bin/busybox', data: readFileSync(BUSYBOX), mode: 0o755 },
    { kind: 'file', path: 'init', data: Buffer.from(INIT_SCRIPT), mode: 0o755 },
    { kind: 'file', path: 'etc/harness-modules', data: Buffer.from(resolved.map((m) => m.name).join('\n') + '\n') },
    ...resolved.map((m) => ({ kind: 'file' as const, path: `lib/modules/${m.name}.ko`, data: moduleBytes(m) })),
  ];
  const hash = createHash('sha256');
  for (const e of entries) {
    hash.update(`${e.kind}\0${e.path}\0`);
    if (e.kind === 'file') hash.update(e.data);
  }
  const dir = join(cacheDir(), 'initramfs');
  const file = join(dir, `base-${guestKernel().kver}-${hash.digest('hex').slice(0, 16)}.cpio.gz`);
  if (existsSync(file)) return file;
  mkdirSync(dir, { recursive: true });
  // write-then-rename: concurrent test processes may build the same archive
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, cpioGzip(entries));
  renameSync(tmp, file);
  return file;
}

/** The per-run member: /harness/{mode,net,shares,script.sh} and the caller's files. */
export function runArchive(s: RunSettings): Buffer {
  const file = (path: string, text: string, mode = 0o644): CpioEntry => ({
    kind: 'file',
    path,
    data: Buffer.from(text),
    mode,
  });
  return cpioGzip([
    file('harness/mode', s.mode + '\n'),
    file('harness/net', s.net ? '1\n' : '0\n'),
    file('harness/shares', s.shares.map((x) => `${x.tag} ${x.readOnly ? 'ro' : 'rw'} ${x.guestPath}\n`).join('')),
    file('harness/script.sh', SCRIPT_PRELUDE + '\n' + s.script + '\n', 0o755),
    ...(s.files ?? []).map((f): CpioEntry => ({ kind: 'file', path: f.path, data: Buffer.from(f.data), mode: f.mode ?? 0o644 })),
  ]);
}

/** Writes base + per-run member into `dest` (the file given to -initrd). */
export function buildInitramfs(modules: string[], s: RunSettings, dest: string): string {
  writeFileSync(dest, Buffer.concat([readFileSync(buildBaseInitramfs(modules)), runArchive(s)]));
  return dest;
}
