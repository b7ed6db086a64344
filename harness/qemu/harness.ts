// Test guests: boot the Debian guest kernel under QEMU/TCG with our vhost-user-blk sockets
// attached, run a shell script inside, and hand back its output and exit code. Every guest is
// bounded by a timeout and its QEMU killed on every path out. See harness/qemu/README.md.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { IbnbdError } from '../../src/errors.js';
import { projectRoot } from '../../src/backend/native.js';
import { guestKernel } from './guest-kernel.js';
import { MARK } from './guest-init.js';
import { buildInitramfs, type GuestFile } from './initramfs.js';
import { qemuArgs, type DiskSpec, type ShareSpec } from './qemu-args.js';

export { buildInitramfs, buildBaseInitramfs, runArchive, type GuestFile } from './initramfs.js';
export { qemuArgs, type DiskSpec, type ShareSpec } from './qemu-args.js';
export { guestKernel, resolveModules } from './guest-kernel.js';
export { SCRIPT_PRELUDE } from './guest-init.js';

export interface GuestOptions {
  disks?: DiskSpec[];
  /** POSIX sh run in the guest: busybox in 'initramfs' mode, the host's own /bin/sh and programs in 'hostroot'. */
  script: string;
  /** 'initramfs' (default): busybox only, fastest. 'hostroot': the host / over read-only 9p, chrooted. */
  mode?: 'initramfs' | 'hostroot';
  /** extra kernel modules by name; dependencies are resolved from modules.dep */
  modules?: string[];
  /** guest RAM; default 256 (initramfs) or 512 (hostroot) */
  memMiB?: number;
  /** For a guest that is live-migrated: RAM 8 KiB over memMiB. QEMU 7.2's TCG loses guest
   *  stores in a migration when a RAM block is a multiple of 256 KiB: its word-at-a-time dirty
   *  bitmap sync clears the bits without making the vCPUs' TLB entries trap the next store, so a
   *  page written after it is neither logged nor copied again (fixed in QEMU 9.0). A block of
   *  another size is synced page by page, and that path resets the TLB entries. docs/migration.md */
  tcgMigrationRam?: boolean;
  /** vCPUs, default 1; the guest's virtio_blk drives at most one queue per vCPU, so numQueues > 1 needs cpus > 1 */
  cpus?: number;
  /** QEMU's -cpu model (`qemu64`, `max,-pku`, ...); default `max` */
  cpuModel?: string;
  /** hard bound on the guest's life; QEMU is killed when it passes */
  timeoutMs: number;
  /** 9p shares (writable unless readOnly), mounted in the guest at guestPath (default hostPath) */
  shares?: ShareSpec[];
  /** slirp NIC, eth0 = 10.0.2.15/24, host reachable as 10.0.2.2 */
  netdev?: boolean;
  /** every console line as it arrives (escape codes and CR removed) */
  onSerialLine?: (line: string) => void;
  /** extra kernel command line */
  append?: string;
  /** extra QEMU arguments appended as given (e.g. a second NIC on -netdev socket for two-guest tests) */
  qemuExtraArgs?: string[];
  /** files added to the per-run initramfs member, at bin/NAME or harness/NAME (e.g. a static tool) */
  files?: GuestFile[];
  /** a QMP monitor on this unix socket (harness/qemu/qmp.ts) */
  qmpSocket?: string;
  /** `-incoming URI` (`unix:/path`, `defer`, ...): a migration destination. Start it with the
   *  source's options but for its disk sockets, qmpSocket and this: the argv and the initramfs are
   *  then the same as the source's, which migration requires. Initramfs mode without shares only:
   *  a mounted 9p export blocks migration. */
  incoming?: string;
}

export interface GuestResult {
  /** the script's exit status; null when the guest never reported one */
  exitCode: number | null;
  /** the script's stdout+stderr (console lines between the markers, minus kernel log lines) */
  output: string;
  /** the whole console log, escape codes removed */
  serial: string;
  /** QEMU start to QEMU exit */
  durationMs: number;
  /** QEMU start to the script starting (boot + module load + mounts) */
  bootMs: number | null;
  timedOut: boolean;
  /** a step of /init that failed (insmod, mounts) */
  failure?: string;
  qemuStderr: string;
}

export interface GuestHandle {
  /** leader of the process group holding QEMU (a timeout(1) wrapper); the group dies with kill() */
  readonly pid: number | undefined;
  /** resolves (never rejects) when QEMU has exited and the guest's files are removed */
  readonly exited: Promise<GuestResult>;
  /** resolves when the script ran `mark TEXT`; rejects if the guest ends first or after timeoutMs */
  waitForMarker(text: string, timeoutMs?: number): Promise<void>;
  /** one line to the script's `host_wait` / `host_read` (send only after a mark saying it reads) */
  sendLine(text: string): void;
  /** the console so far */
  serial(): string;
  /** SIGKILL QEMU and wait for the clean-up */
  kill(): Promise<GuestResult>;
}

const BASE_MODULES = ['virtio_pci', 'virtio_blk'];
const NINEP_MODULES = ['9pnet_virtio', '9p'];
const NET_MODULES = ['virtio_net'];
const TAG_RE = /^[A-Za-z0-9_-]{1,31}$/;
const FILE_RE = /^(bin|harness)\/[A-Za-z0-9._-]{1,64}$/;
// what /init and the base archive put there themselves
const RESERVED_FILES = new Set(['bin/busybox', 'harness/mode', 'harness/net', 'harness/shares', 'harness/script.sh']);

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function killGroup(c: ChildProcess): void {
  if (c.pid === undefined) return;
  try {
    process.kill(-c.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

function trackChild(c: ChildProcess): void {
  live.add(c);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // a test that crashes or forgets a guest must not leave QEMU running
    process.on('exit', () => {
      for (const p of live) killGroup(p);
    });
  }
}

function invalid(msg: string): never {
  throw new IbnbdError('EINVAL', msg);
}

function validate(o: GuestOptions): void {
  if (typeof o.script !== 'string') invalid('script must be a string');
  if (!Number.isFinite(o.timeoutMs) || o.timeoutMs <= 0) invalid('timeoutMs must be a positive number');
  if (o.mode !== undefined && o.mode !== 'initramfs' && o.mode !== 'hostroot') invalid(`unknown mode ${o.mode}`);
  if (o.memMiB !== undefined && !(Number.isInteger(o.memMiB) && o.memMiB >= 64 && o.memMiB <= 8192)) {
    invalid('memMiB must be an integer in 64..8192');
  }
  if (o.tcgMigrationRam !== undefined && typeof o.tcgMigrationRam !== 'boolean') invalid('tcgMigrationRam must be a boolean');
  if (o.qemuExtraArgs !== undefined && !(Array.isArray(o.qemuExtraArgs) && o.qemuExtraArgs.every((a) => typeof a === 'string'))) {
    invalid('qemuExtraArgs must be an array of strings');
  }
  if (o.cpus !== undefined && !(Number.isInteger(o.cpus) && o.cpus >= 1 && o.cpus <= 8)) invalid('cpus must be in 1..8');
  if (o.cpuModel !== undefined && !(typeof o.cpuModel === 'string' && /^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.+=-]+)*$/.test(o.cpuModel))) {
    invalid(`cpuModel must be a QEMU -cpu value: ${o.cpuModel}`);
  }
  for (const d of o.disks ?? []) {
    if (!isAbsolute(d.socket) || d.socket.includes('\n')) invalid(`disk socket must be an absolute path: ${d.socket}`);
    if (d.numQueues !== undefined && d.numQueues !== 'qemu' && !(Number.isInteger(d.numQueues) && d.numQueues >= 1 && d.numQueues <= 64)) {
      invalid("numQueues must be an integer in 1..64, or 'qemu'");
    }
  }
  const tags = new Set<string>(['hostroot', 'project']);
  for (const s of o.shares ?? []) {
    if (!TAG_RE.test(s.tag)) invalid(`share tag must match ${TAG_RE}: ${s.tag}`);
    if (tags.has(s.tag)) invalid(`share tag used twice or reserved: ${s.tag}`);
    tags.add(s.tag);
    if (!isAbsolute(s.hostPath) || !existsSync(s.hostPath) || !statSync(s.hostPath).isDirectory()) {
      invalid(`share hostPath must be an existing absolute directory: ${s.hostPath}`);
    }
    const g = s.guestPath ?? s.hostPath;
    if (!isAbsolute(g) || /[\n]/.test(g)) invalid(`share guestPath must be absolute: ${g}`);
  }
  const paths = new Set<string>();
  for (const f of o.files ?? []) {
    if (typeof f.path !== 'string' || !FILE_RE.test(f.path) || f.path.includes('..')) invalid(`file path must be bin/NAME or harness/NAME: ${f.path}`);
    if (RESERVED_FILES.has(f.path) || paths.has(f.path)) invalid(`file path used twice or reserved: ${f.path}`);
    paths.add(f.path);
    if (!Buffer.isBuffer(f.data) && typeof f.data !== 'string') invalid(`file data must be a Buffer or a string: ${f.path}`);
    if (f.mode !== undefined && !(Number.isInteger(f.mode) && f.mode >= 0 && f.mode <= 0o777)) invalid(`file mode must be in 0..0o777: ${f.path}`);
  }
  if (o.qmpSocket !== undefined && (typeof o.qmpSocket !== 'string' || !isAbsolute(o.qmpSocket) || o.qmpSocket.includes('\n'))) {
    invalid(`qmpSocket must be an absolute path: ${o.qmpSocket}`);
  }
  if (o.incoming !== undefined) {
    if (typeof o.incoming !== 'string' || !/^\S+$/.test(o.incoming)) invalid(`incoming must be a migration URI: ${o.incoming}`);
    if (o.mode === 'hostroot' || (o.shares ?? []).length > 0) invalid('incoming: a guest with 9p (hostroot mode or shares) cannot migrate');
  }
}

// SeaBIOS and the kernel's console write terminal escape sequences and CRLF line ends
// eslint-disable-next-line no-control-regex
const ESCAPES = /\x1b\[[0-9;?]*[A-Za-z]|\x1b[c78]|\x1b[()][0-9A-Za-z]|\r/g;
const KERNEL_LOG = /^\[\s*\d+\.\d+\] /;

// In hostroot mode the guest mounts tmpfs over /tmp, /run and /root, hiding whatever the host has
// there. A checkout living below one of them (a CI clone in /tmp, say) would vanish with its addon
// and scripts, so it is shared into the guest at the same path.
const GUEST_TMPFS = ['/tmp', '/run', '/root'];

function withProjectShare(mode: 'initramfs' | 'hostroot', shares: ShareSpec[]): ShareSpec[] {
  if (mode !== 'hostroot') return shares;
  const hidden = GUEST_TMPFS.some((d) => projectRoot === d || projectRoot.startsWith(`${d}/`));
  const covered = shares.some((s) => {
    const g = s.guestPath ?? s.hostPath;
    return projectRoot === g || projectRoot.startsWith(`${g}/`);
  });
  if (!hidden || covered) return shares;
  // Read-only and cached, as the checkout is when hostroot shows it: an uncached 9p mount made
  // every node start-up in the guest (module loading, thousands of lookups) 1.3-2x slower.
  return [{ hostPath: projectRoot, tag: 'project', readOnly: true }, ...shares];
}

export async function startGuest(o: GuestOptions): Promise<GuestHandle> {
  validate(o);
  const mode = o.mode ?? 'initramfs';
  const shares = withProjectShare(mode, o.shares ?? []);
  const disks = o.disks ?? [];
  const needs9p = mode === 'hostroot' || shares.length > 0;
  const modules = [
    ...BASE_MODULES,
    ...(needs9p ? NINEP_MODULES : []),
    ...(o.netdev ? NET_MODULES : []),
    ...(o.modules ?? []),
  ];
  const kernel = guestKernel();
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-guest-'));
  const cleanupDir = () => rmSync(dir, { recursive: true, force: true });

  let initrd: string;
  let server: Server | undefined;
  const controlSocket = join(dir, 'ctl.sock');
  let control: Socket | undefined;
  const pending: string[] = [];
  try {
    initrd = buildInitramfs(
      modules,
      {
        mode,
        net: !!o.netdev,
        shares: shares.map((s) => ({ tag: s.tag, guestPath: s.guestPath ?? s.hostPath, readOnly: s.readOnly })),
        script: o.script,
        files: o.files,
      },
      join(dir, 'initrd.cpio.gz'),
    );
    const srv = createServer((sock) => {
      control = sock;
      sock.on('error', () => {});
      for (const l of pending.splice(0)) sock.write(l);
    });
    server = srv;
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(controlSocket, () => resolve());
    });
  } catch (e) {
    server?.close();
    cleanupDir();
    throw e;
  }
  const controlServer = server!;

  const args = qemuArgs({
    kernel: kernel.vmlinuz,
    initrd,
    memMiB: o.memMiB ?? (mode === 'hostroot' ? 512 : 256),
    ramPlus8K: o.tcgMigrationRam === true,
    cpus: o.cpus,
    cpuModel: o.cpuModel,
    controlSocket,
    disks,
    hostRoot: mode === 'hostroot',
    shares,
    net: !!o.netdev,
    append: o.append,
    incoming: o.incoming,
    qmpSocket: o.qmpSocket,
  });
  args.push(...(o.qemuExtraArgs ?? []));

  const t0 = Date.now();
  // timeout(1) bounds QEMU even if this process dies without running its exit hook; it leads a
  // process group of its own (detached), so killing the group takes QEMU with it
  const hardLimitS = Math.ceil(o.timeoutMs / 1000) + 10;
  const child = spawn('timeout', ['-s', 'KILL', String(hardLimitS), 'qemu-system-x86_64', ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  trackChild(child);

  const lines: string[] = [];
  let partial = '';
  let stderr = '';
  let beginAt: number | null = null;
  let exitCode: number | null = null;
  let failure: string | undefined;
  let ended = false;
  const marks = new Set<string>();
  const markWaiters = new Set<{ text: string; resolve: () => void; reject: (e: Error) => void }>();

  const onLine = (line: string) => {
    lines.push(line);
    let m: RegExpMatchArray | null;
    if (line === MARK.begin && beginAt === null) beginAt = Date.now() - t0;
    else if ((m = line.match(MARK.exitRe)) && exitCode === null) exitCode = Number(m[1]);
    else if ((m = line.match(MARK.failRe)) && failure === undefined) failure = m[1];
    else if ((m = line.match(MARK.markRe))) {
      marks.add(m[1]);
      for (const w of markWaiters) if (w.text === m[1]) w.resolve();
    }
    try {
      o.onSerialLine?.(line);
    } catch {
      // a throwing observer must not take the harness down
    }
  };
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    // strip escapes per whole line: a sequence may be split across chunks
    const parts = (partial + chunk).split('\n');
    partial = parts.pop()!;
    for (const p of parts) onLine(p.replace(ESCAPES, ''));
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => {
    if (stderr.length < 65536) stderr += c;
  });
  child.stdin!.on('error', () => {});

  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child);
  }, o.timeoutMs);

  const exited = new Promise<GuestResult>((resolve) => {
    let done = false;
    const finish = (spawnError?: Error) => {
      if (done) return;
      done = true;
      ended = true;
      clearTimeout(timer);
      live.delete(child);
      if (partial) onLine(partial.replace(ESCAPES, '')), (partial = '');
      control?.destroy();
      controlServer.close();
      cleanupDir();
      for (const w of markWaiters) w.reject(new IbnbdError('EIO', `guest ended before mark "${w.text}"`));
      const begin = lines.indexOf(MARK.begin);
      const end = lines.findIndex((l) => MARK.exitRe.test(l));
      const output =
        begin < 0
          ? ''
          : lines
              .slice(begin + 1, end < 0 ? lines.length : end)
              .filter((l) => !KERNEL_LOG.test(l) && !MARK.markRe.test(l))
              .map((l) => l + '\n')
              .join('');
      resolve({
        exitCode,
        output,
        serial: lines.join('\n'),
        durationMs: Date.now() - t0,
        bootMs: beginAt,
        timedOut,
        ...(failure !== undefined ? { failure } : {}),
        qemuStderr: spawnError ? `${stderr}${spawnError.message}` : stderr,
      });
    };
    // 'close' comes after stdout is drained, so the exit marker has been parsed
    child.once('close', () => finish());
    child.once('error', (e) => {
      // spawn failed (no qemu binary): no 'close' may follow
      if (child.pid === undefined) finish(e);
    });
  });

  const handle: GuestHandle = {
    pid: child.pid,
    exited,
    waitForMarker(text, timeoutMs) {
      if (marks.has(text)) return Promise.resolve();
      if (ended) return Promise.reject(new IbnbdError('EIO', `guest ended before mark "${text}"`));
      return new Promise<void>((resolve, reject) => {
        const w = {
          text,
          resolve: () => {
            settle();
            resolve();
          },
          reject: (e: Error) => {
            settle();
            reject(e);
          },
        };
        const t =
          timeoutMs === undefined
            ? undefined
            : setTimeout(() => w.reject(new IbnbdError('ETIMEDOUT', `no mark "${text}" within ${timeoutMs} ms`)), timeoutMs);
        const settle = () => {
          if (t) clearTimeout(t);
          markWaiters.delete(w);
        };
        markWaiters.add(w);
      });
    },
    sendLine(text) {
      if (text.includes('\n')) invalid('sendLine text must be a single line');
      const l = text + '\n';
      if (control) control.write(l);
      else pending.push(l);
    },
    serial: () => lines.join('\n'),
    kill() {
      if (!ended) killGroup(child);
      return exited;
    },
  };
  return handle;
}

function tail(s: string, n = 3000): string {
  return s.length > n ? '…' + s.slice(-n) : s;
}

/** Boot, run the script, power off. Throws ETIMEDOUT or EIO (with the console tail) when no exit code came back. */
export async function runGuest(o: GuestOptions): Promise<GuestResult> {
  const g = await startGuest(o);
  const r = await g.exited;
  if (r.timedOut) {
    throw new IbnbdError('ETIMEDOUT', `guest did not finish within ${o.timeoutMs} ms; console:\n${tail(r.serial)}`);
  }
  if (r.exitCode === null) {
    const why = r.failure ? `guest /init failed at: ${r.failure}` : 'guest ended without an exit code';
    throw new IbnbdError('EIO', `${why}; qemu: ${tail(r.qemuStderr, 1000)}; console:\n${tail(r.serial)}`);
  }
  return r;
}
