// What the guest benches (`--rdma`, `--interop`) share: the guest's shell preamble, our daemons
// started in the guest, the load generator's command line and its result read back from the
// writable 9p share, and the guest run itself (progress lines, a hard time limit, killed on a
// signal). Each bench keeps only what it measures and how it reports it.
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BenchOptions } from './options.js';
import type { Workload } from './workloads.js';
import { startGuest, type GuestOptions, type GuestResult } from '../harness/qemu/harness.js';

const log = (s: string) => process.stderr.write(s + '\n');

/** Where the guest writes its raw results (a writable 9p share of a host temp folder). */
export const GUEST_OUT = '/tmp/out';

/** Strict shell, and `step TEXT`: a progress line with the seconds since the script started. */
export const STEP_SHELL = `set -u
T0=$(date +%s)
step() { echo "STEP $(( $(date +%s) - T0 ))s $*"; }`;

export interface GuestPaths {
  node: string;
  /** bin/ibnbd.js */
  cli: string;
  /** native/build/Release/ibnbd-blkio-bench */
  loadgen: string;
}

export function guestPaths(root: string): GuestPaths {
  return { node: process.execPath, cli: join(root, 'bin', 'ibnbd.js'), loadgen: join(root, 'native', 'build', 'Release', 'ibnbd-blkio-bench') };
}

/** The `ibnbd` CLI in the guest, bounded (node under TCG takes seconds to start). */
export function ibnbdCmd(p: GuestPaths): string {
  return `timeout 90 ${p.node} ${p.cli}`;
}

/** The client daemon's control socket of daemon set `set` ('' for the first). */
export const ourClientControl = (set = '') => `/tmp/clt${set}.sock`;

/**
 * Shell that starts `ibnbd server` (on `listen`, exporting from `searchPath`) and `ibnbd client`
 * in the background as $SRV and $CLT with logs in GUEST_OUT, and waits (90 s at most, else
 * exit 23) for both control sockets. The caller ends them with `stopOurDaemonsShell`. A second
 * set running beside the first has its own `set` suffix on the variables, sockets, folders and logs.
 */
export function startOurDaemonsShell(p: GuestPaths, listen: string, searchPath: string, serverArgs = '', clientArgs = '', set = ''): string {
  const srvSock = `/tmp/srv${set}.sock`;
  const cltSock = ourClientControl(set);
  return `mkdir -p /tmp/run${set}
${p.node} ${p.cli} server --listen ${listen} --dev-search-path ${searchPath} --control ${srvSock} ${serverArgs}2>> ${GUEST_OUT}/server${set}.log &
SRV${set}=$!
${p.node} ${p.cli} client --control ${cltSock} --run-dir /tmp/run${set} --state-dir /tmp/clt-state${set} ${clientArgs}2>> ${GUEST_OUT}/client${set}.log &
CLT${set}=$!
i=0; while [ ! -S ${srvSock} ] || [ ! -S ${cltSock} ]; do i=$((i+1)); [ $i -gt 900 ] && exit 23; sleep 0.1; done
step daemons${set} up`;
}

/** Ends the daemons of `startOurDaemonsShell` and waits for them (the port is free afterwards). */
export const stopOurDaemonsShell = (set = '') => `kill -TERM $CLT${set} $SRV${set}; wait $CLT${set}; wait $SRV${set}`;
export const STOP_OUR_DAEMONS_SHELL = stopOurDaemonsShell();

/**
 * Shell that maps `mapString` through our client daemon, leaves the map's JSON in
 * GUEST_OUT/<name>.json and its vhost-user socket in $<variable> (exit `failCode` if either fails).
 */
export function ourMapShell(p: GuestPaths, mapString: string, name: string, variable: string, failCode: number, set = ''): string {
  return `${ibnbdCmd(p)} map "${mapString}" --control ${ourClientControl(set)} --json > ${GUEST_OUT}/${name}.json 2> ${GUEST_OUT}/${name}.err || exit ${failCode}
${variable}=$(sed -n 's/.*"socket": *"\\([^"]*\\)".*/\\1/p' ${GUEST_OUT}/${name}.json | head -1)
[ -S "$${variable}" ] || exit ${failCode}
step "mapped ${name} $${variable}"`;
}

/**
 * One run of ibnbd-blkio-bench on `target` (a vhost-user socket, or a block device with
 * `--driver io_uring`), bounded by `timeout`: its JSON line goes to GUEST_OUT/<name>.json, its
 * stderr to <name>.err, and a STEP line says the exit code.
 */
export function loadgenShell(p: GuestPaths, o: BenchOptions, w: Workload, target: string, name: string, driverArgs = ''): string {
  const limit = Math.ceil((o.rampMs + o.runtimeMs + 3 * o.timeoutMs) / 1000) + 30;
  return `timeout ${limit} ${p.loadgen} ${driverArgs}--path ${target} --rw ${w.rw} --bs ${w.bs} --qd ${w.qd} --queues 1 ` +
    `--runtime-ms ${o.runtimeMs} --ramp-ms ${o.rampMs} --seed ${o.seed} --timeout-ms ${o.timeoutMs} > ${GUEST_OUT}/${name}.json 2> ${GUEST_OUT}/${name}.err; step "${name} rc $?"`;
}

/**
 * Shell that appends one line to GUEST_OUT/<name>.ctx: the voluntary context switches of every
 * thread of the daemons started by `startOurDaemonsShell` ($SRV, then $CLT). Taken before and
 * after a load run, the difference is how often their threads went to sleep (and so had to be
 * woken): the wake-ups a request costs, a count TCG's noisy clocks do not blur.
 */
export function sleepsShell(name: string): string {
  return `for P in $SRV $CLT; do cat /proc/$P/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s+=$2} END {printf "%d ", s}'; done >> ${GUEST_OUT}/${name}.ctx; echo >> ${GUEST_OUT}/${name}.ctx`;
}

/** Daemon sleeps of one load run (`sleepsShell` before and after it), per request submitted. */
export interface SleepsPerIo { server: number; client: number; total: number }

/** Reads GUEST_OUT/<name>.ctx; null when the run or its counts are missing. */
export function readSleepsPerIo(dir: string, name: string, run: LoadRun): SleepsPerIo | null {
  const f = join(dir, `${name}.ctx`);
  if (!run.ok || run.submitted <= 0 || !existsSync(f)) return null;
  const lines = readFileSync(f, 'utf8').trim().split('\n').map((l) => l.trim().split(/\s+/).map(Number));
  if (lines.length !== 2 || lines.some((l) => l.length !== 2 || l.some((x) => !Number.isFinite(x)))) return null;
  const [[s0, c0], [s1, c1]] = lines as [[number, number], [number, number]];
  const server = (s1 - s0) / run.submitted;
  const client = (c1 - c0) / run.submitted;
  return { server, client, total: server + client };
}

/** One load generator's result as read back from the share. */
export interface LoadRun {
  workload: string; label: string; ok: boolean; error?: string; iops: number; mbps: number; lat_us: Record<string, number>;
  /** requests submitted in the whole run, ramp included */
  submitted: number;
}

/** A run that produced no figures, and why. */
export function failedRun(w: Workload, error: string): LoadRun {
  return { workload: w.id, label: w.label, ok: false, error, iops: 0, mbps: 0, lat_us: {}, submitted: 0 };
}

/** The stderr of a run (the first 300 characters), for the error column. */
export function errText(dir: string, name: string): string {
  const f = join(dir, `${name}.err`);
  return existsSync(f) ? readFileSync(f, 'utf8').trim().slice(0, 300) : '';
}

/** Reads GUEST_OUT/<name>.json of `loadgenShell` (its last line: the tool prints one JSON object). */
export function readLoadRun(dir: string, name: string, w: Workload): LoadRun {
  try {
    const text = readFileSync(join(dir, `${name}.json`), 'utf8').trim();
    const r = JSON.parse(text.split('\n').pop() ?? '') as Record<string, unknown>;
    if (r.ok !== true) return failedRun(w, String(r.error ?? 'failed'));
    return {
      workload: w.id, label: w.label, ok: true, iops: Number(r.iops), mbps: Number(r.mbps), lat_us: r.lat_us as Record<string, number>,
      submitted: Number(r.submitted_reads ?? 0) + Number(r.submitted_writes ?? 0),
    };
  } catch (e) {
    return failedRun(w, `no result (${(e as Error).message}) ${errText(dir, name)}`);
  }
}

/** A figure with one decimal, or — when there is none. */
export const f1 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(1));
/** A figure with two decimals, or —. */
export const f2 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(2));

/**
 * Boots the bench guest and waits for it. startGuest, not runGuest: a guest that runs out of time
 * still leaves what it measured on the share, and the caller reports that with the missing parts
 * marked. STEP lines go to stderr as progress (every console line to $IBNBD_GUEST_LOG when set);
 * SIGINT/SIGTERM kill the guest before this process ends.
 */
export async function runBenchGuest(name: string, o: Omit<GuestOptions, 'onSerialLine'>): Promise<GuestResult> {
  const started = Date.now();
  const guest = await startGuest({
    ...o,
    onSerialLine: (l) => {
      if (l.startsWith('STEP ')) log(`guest: ${l}`);
      if (process.env.IBNBD_GUEST_LOG) appendFileSync(process.env.IBNBD_GUEST_LOG, `${l}\n`);
    },
  });
  const onSignal = () => void guest.kill().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const r = await guest.exited;
    if (r.timedOut) log(`${name}: guest killed after ${o.timeoutMs / 1000} s; reporting what it wrote`);
    else if (r.exitCode === null) log(`${name}: guest ended without an exit code${r.failure ? ` (/init failed at ${r.failure})` : ''}; console tail:\n${r.serial.slice(-2000)}`);
    log(`${name}: guest exit ${r.exitCode} after ${((Date.now() - started) / 1000).toFixed(0)} s (boot ${r.bootMs} ms)`);
    return r;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
