// The Debian guest kernel unpacked by scripts/setup.sh, and module lookup in its modules.dep.
// The guest has no modprobe and no module auto-loading, so the harness resolves dependencies
// here and the guest insmods a flat, already ordered list.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { IbnbdError } from '../../src/errors.js';

export function cacheDir(): string {
  return process.env.IBNBD_CACHE_DIR || join(homedir(), '.cache', 'ibnbd-vhost');
}

export interface GuestKernel {
  kver: string;
  vmlinuz: string;
  modulesDir: string;
}

let cached: GuestKernel | undefined;

export function guestKernel(): GuestKernel {
  if (cached) return cached;
  const base = join(cacheDir(), 'guest-kernel');
  const kverFile = join(base, 'kver');
  if (!existsSync(kverFile)) {
    throw new IbnbdError('ENOENT', `no guest kernel at ${base}: run scripts/setup.sh`);
  }
  const kver = readFileSync(kverFile, 'utf8').trim();
  const vmlinuz = join(base, 'root', 'boot', `vmlinuz-${kver}`);
  const modulesDir = join(base, 'root', 'lib', 'modules', kver);
  for (const p of [vmlinuz, join(modulesDir, 'modules.dep')]) {
    if (!existsSync(p)) throw new IbnbdError('ENOENT', `guest kernel incomplete, missing ${p}`);
  }
  cached = { kver, vmlinuz, modulesDir };
  return cached;
}

/** Module names compare with '-' and '_' equal, as modprobe does. */
function normalise(name: string): string {
  return name.replace(/-/g, '_');
}

function moduleName(relPath: string): string {
  const file = relPath.slice(relPath.lastIndexOf('/') + 1);
  return normalise(file.replace(/\.ko(\.(xz|zst|gz))?$/, ''));
}

interface DepTable {
  pathOf: Map<string, string>; // name -> path relative to modulesDir
  depsOf: Map<string, string[]>; // name -> names it needs
}

const depTables = new Map<string, DepTable>();

function depTable(k: GuestKernel): DepTable {
  let t = depTables.get(k.modulesDir);
  if (t) return t;
  t = { pathOf: new Map(), depsOf: new Map() };
  for (const line of readFileSync(join(k.modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    const name = moduleName(path);
    t.pathOf.set(name, path);
    t.depsOf.set(name, deps.map(moduleName));
  }
  depTables.set(k.modulesDir, t);
  return t;
}

export interface ResolvedModule {
  name: string;
  path: string; // absolute path of the .ko (possibly compressed)
}

/**
 * The modules named plus everything they depend on, each after its dependencies, each once.
 * modules.dep lists the full closure per module; recursing on each entry's own line yields an
 * order that satisfies every edge without trusting the closure's listing order.
 */
export function resolveModules(names: string[], k: GuestKernel = guestKernel()): ResolvedModule[] {
  const t = depTable(k);
  const out: ResolvedModule[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (raw: string): void => {
    const name = normalise(raw);
    if (done.has(name)) return;
    const path = t.pathOf.get(name);
    if (!path) throw new IbnbdError('ENOENT', `kernel ${k.kver} has no module ${raw}`);
    if (visiting.has(name)) throw new IbnbdError('ELOOP', `module dependency cycle at ${raw}`);
    visiting.add(name);
    for (const d of t.depsOf.get(name) ?? []) visit(d);
    visiting.delete(name);
    done.add(name);
    out.push({ name, path: join(k.modulesDir, path) });
  };
  for (const n of names) visit(n);
  return out;
}

/** The module's bytes, decompressed: busybox insmod loads plain ELF objects only. */
export function moduleBytes(m: ResolvedModule): Buffer {
  if (m.path.endsWith('.ko')) return readFileSync(m.path);
  if (m.path.endsWith('.ko.xz')) return execFileSync('xz', ['-dc', m.path], { maxBuffer: 256 << 20 });
  if (m.path.endsWith('.ko.zst')) return execFileSync('zstd', ['-dc', m.path], { maxBuffer: 256 << 20 });
  if (m.path.endsWith('.ko.gz')) return execFileSync('gzip', ['-dc', m.path], { maxBuffer: 256 << 20 });
  throw new IbnbdError('EINVAL', `unknown module format ${m.path}`);
}
