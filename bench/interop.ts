// `npm run bench -- --interop`: the Linux kernel's RNBD and ours side by side, in one soft-RoCE
// guest (TCG, hostroot mode, rxe0 on eth0 = 10.0.2.15). The kernel's rnbd_server (port 1234) and
// our `ibnbd server` (port 4321) export the same loop device (a file on the guest's tmpfs); the
// kernel's rnbd_client maps it from each (/dev/rnbdN) and so does our client daemon (a
// vhost-user-blk socket each). Four pairs, three read workloads, interleaved rounds, one load
// generator for all of them (ibnbd-blkio-bench: libblkio's io_uring driver with O_DIRECT on
// /dev/rnbdN, its virtio-blk-vhost-user driver on our sockets), and fio on /dev/rnbdN as a
// cross-check of the load generator. Figures are reported as ratios to the all-kernel pair, never
// asserted. See docs/performance.md ("Kernel RNBD side by side").
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { BenchOptions } from './options.js';
import { human, median } from './report.js';
import { GUEST_WORKLOAD_IDS, WORKLOADS, type Workload } from './workloads.js';
import {
  errText, f1, f2, failedRun, GUEST_OUT, guestPaths, ibnbdCmd, loadgenShell, ourMapShell, readLoadRun, runBenchGuest, startOurDaemonsShell,
  STEP_SHELL, STOP_OUR_DAEMONS_SHELL, type GuestPaths, type LoadRun,
} from './guest-bench.js';
import { GUEST_IP, kernelRnbdGuestOptions, kernelRnbdPrelude } from '../harness/qemu/rnbd-kernel.js';

const log = (s: string) => process.stderr.write(s + '\n');

const OUR_PORT = 4321; // the kernel server has 1234
/** Requests in flight per session, both servers (the kernel client's nr_requests follows it). */
const SESSION_QUEUE_DEPTH = 64;
const BACKING_MIB = 256;
/**
 * One vCPU by default: with two, every hand-over between threads on different vCPUs wakes a halted
 * vCPU, i.e. waits for the host to schedule that vCPU's thread; on a busy host that is
 * milliseconds, and a pair with more hand-overs per IO (ours → ours) measured the host's scheduler
 * more than itself (docs/performance.md, "Kernel RNBD side by side").
 */
const DEFAULT_GUEST_CPUS = 1;
const GUEST_MEM_MIB = 1536;
/** Boot, module loads, daemons, maps and teardown under TCG, with room to spare. */
const SETUP_BUDGET_S = 180;

export type PairId = 'kk' | 'ko' | 'ok' | 'oo';
interface Pair { id: PairId; label: string; short: string; kernelClient: boolean; target: string }
export const PAIRS: readonly Pair[] = [
  { id: 'kk', label: 'kernel client → kernel server', short: 'K→K', kernelClient: true, target: '$KK' },
  { id: 'ko', label: 'kernel client → our server', short: 'K→ours', kernelClient: true, target: '$KO' },
  { id: 'ok', label: 'our client → kernel server', short: 'ours→K', kernelClient: false, target: '$OK' },
  { id: 'oo', label: 'our client → our server', short: 'ours→ours', kernelClient: false, target: '$OO' },
];
/** The pairs fio also measures: the ones with a /dev/rnbdN to run it on. */
const FIO_PAIRS = PAIRS.filter((p) => p.kernelClient);

type Tool = 'blkio' | 'fio';
const runName = (round: number, w: Workload, pair: PairId, tool: Tool) => `r${round}-${w.id}-${pair}-${tool}`;

/** Each run's bound, and the guest's: every run plus the set-up budget, with half again to spare. */
function runLimitS(o: BenchOptions): number {
  return Math.ceil((o.rampMs + o.runtimeMs + 3 * o.timeoutMs) / 1000) + 30;
}
function guestTimeoutMs(o: BenchOptions, workloads: number): number {
  const runs = o.rounds * workloads * (PAIRS.length + FIO_PAIRS.length);
  return Math.ceil(1.5 * (runs * ((o.rampMs + o.runtimeMs) / 1000 + 5) + SETUP_BUDGET_S)) * 1000;
}

/** fio on a kernel block device with the load generator's parameters; JSON on GUEST_OUT/<name>.json. */
function fioShell(o: BenchOptions, w: Workload, dev: string, name: string): string {
  return `timeout ${runLimitS(o)} fio --name=${w.id} --filename=${dev} --readonly --direct=1 --ioengine=io_uring --rw=${w.rw} ` +
    `--bs=${w.bs} --iodepth=${w.qd} --numjobs=1 --time_based --runtime=${o.runtimeMs}ms --ramp_time=${o.rampMs}ms ` +
    `--randrepeat=1 --randseed=${o.seed} --norandommap --lat_percentiles=1 --output-format=json ` +
    `> ${GUEST_OUT}/${name}.json 2> ${GUEST_OUT}/${name}.err; step "${name} rc $?"`;
}

/** A run on a kernel client's device, with the device's /sys/block stat before and after it. */
function withDeviceStat(dev: string, name: string, run: string): string {
  const stat = `/sys/block/\${${dev.slice(1)}##*/}/stat`;
  return `cat ${stat} > ${GUEST_OUT}/${name}.stat0\n${run}\ncat ${stat} > ${GUEST_OUT}/${name}.stat1`;
}

function guestScript(o: BenchOptions, p: GuestPaths, workloads: Workload[]): string {
  const IB = ibnbdCmd(p);
  const runs: string[] = [];
  // interleaved: each round runs every workload on every pair, so a busy moment costs all alike
  for (let round = 1; round <= o.rounds; round++) {
    for (const w of workloads) {
      for (const pair of PAIRS) {
        const name = runName(round, w, pair.id, 'blkio');
        runs.push(pair.kernelClient
          ? withDeviceStat(pair.target, name, loadgenShell(p, o, w, pair.target, name, '--driver io_uring '))
          : loadgenShell(p, o, w, pair.target, name));
      }
      for (const pair of FIO_PAIRS) runs.push(fioShell(o, w, pair.target, runName(round, w, pair.id, 'fio')));
    }
  }
  const kdev = (v: string) => `/sys/block/\${${v}##*/}`;
  return `${kernelRnbdPrelude({ sessQueueDepth: SESSION_QUEUE_DEPTH, devSearchPath: '/dev' })}
${STEP_SHELL}
rxe_up || exit 20
rnbd_server_load || exit 21
rnbd_client_load || exit 22
step modules loaded
# the one backing device both servers export: a loop device over a file on the guest's tmpfs
dd if=/dev/zero of=/tmp/backing.img bs=1M count=${BACKING_MIB} status=none || exit 24
LOOP=$(rnbd_loop /tmp/backing.img) || exit 25
DEV=\${LOOP##*/}
step "backing $LOOP"
${startOurDaemonsShell(p, `${GUEST_IP}:${OUR_PORT}`, '/dev', `--queue-depth ${SESSION_QUEUE_DEPTH} `)}
# read-only everywhere: four opens of one device, and the workloads only read
KK=$(rnbd_map kk $DEV ro) || exit 26
RNBD_PORT=${OUR_PORT}
KO=$(rnbd_map ko $DEV ro) || exit 27
RNBD_PORT=1234
step "kernel client: $KK from the kernel server, $KO from ours"
${ourMapShell(p, `sessname=ok path=ip:${GUEST_IP} device_path=$DEV access_mode=ro`, 'map-ok', 'OK', 28)}
# io_mode=fileio: the kernel client's OPEN carries no io_mode (its byte is reserved, 0 = fileio
# in IBNBD's encoding), so our server serves K→ours in fileio; ours→ours asks for the same, and
# both rows of our server run the same server path
${ourMapShell(p, `sessname=oo path=ip:${GUEST_IP}:${OUR_PORT} device_path=$DEV access_mode=ro io_mode=fileio`, 'map-oo', 'OO', 29)}
for d in $KK $KO; do echo "$d max_hw_sectors_kb=$(cat ${kdev('d')}/queue/max_hw_sectors_kb) max_sectors_kb=$(cat ${kdev('d')}/queue/max_sectors_kb) nr_requests=$(cat ${kdev('d')}/queue/nr_requests) nomerges=$(cat ${kdev('d')}/queue/nomerges) scheduler=$(cat ${kdev('d')}/queue/scheduler)"; done > ${GUEST_OUT}/kdev.txt
fio --version > ${GUEST_OUT}/fio-version.txt 2>&1
${runs.join('\n')}
${IB} list --control /tmp/clt.sock --json > ${GUEST_OUT}/list.json 2>&1
${IB} server sessions --control /tmp/srv.sock --json > ${GUEST_OUT}/server-sessions.json 2>&1
step measured
rnbd_unmap $KK; rnbd_unmap $KO
# our client daemon closes its sessions as it ends (no CLI round trips: node under TCG starts slowly)
${STOP_OUR_DAEMONS_SHELL}
losetup -d $LOOP
step done
exit 0`;
}

/** fio's JSON (`--output-format=json`, one job) as a LoadRun; percentiles of the total latency (`lat_percentiles=1`). */
export function parseFio(text: string, w: Workload): LoadRun {
  const start = text.indexOf('{');
  if (start < 0) return failedRun(w, 'no JSON in fio output');
  let j: any;
  try {
    j = JSON.parse(text.slice(start));
  } catch (e) {
    return failedRun(w, `fio JSON: ${(e as Error).message}`);
  }
  const job = j?.jobs?.[0];
  const rd = job?.read;
  if (!rd || typeof rd.iops !== 'number') return failedRun(w, 'fio JSON without a read section');
  if (job.error) return failedRun(w, `fio job error ${job.error}`);
  if (!(rd.total_ios > 0)) return failedRun(w, 'fio completed no IO');
  const pct = (rd.lat_ns?.percentile ?? {}) as Record<string, number>;
  const at = (p: string) => (typeof pct[p] === 'number' ? pct[p]! / 1e3 : NaN);
  return {
    workload: w.id, label: w.label, ok: true, submitted: 0, iops: rd.iops, mbps: rd.bw_bytes / 1e6,
    lat_us: { mean: rd.lat_ns.mean / 1e3, p50: at('50.000000'), p99: at('99.000000'), p999: at('99.900000') },
  };
}

function readFio(dir: string, name: string, w: Workload): LoadRun {
  const f = join(dir, `${name}.json`);
  if (!existsSync(f)) return failedRun(w, `no result ${errText(dir, name)}`);
  const r = parseFio(readFileSync(f, 'utf8'), w);
  return r.ok ? r : { ...r, error: `${r.error} ${errText(dir, name)}`.trim() };
}

/** Block requests the kernel client issued (and merged) per load-generator IO, from /sys/block/<dev>/stat. */
function deviceRequests(dir: string, name: string, run: LoadRun): { requests_per_io: number; merges_per_io: number } | null {
  try {
    // fields 1 and 2: reads completed, reads merged
    const read = (s: string) => readFileSync(join(dir, `${name}.${s}`), 'utf8').trim().split(/\s+/).map(Number);
    const [a, b] = [read('stat0'), read('stat1')];
    if (!run.submitted) return null;
    return { requests_per_io: (b[0]! - a[0]!) / run.submitted, merges_per_io: (b[1]! - a[1]!) / run.submitted };
  } catch {
    return null;
  }
}

interface Cell { rounds: number; iops: number; mbps: number; mean: number; p50: number; p99: number; requests_per_io?: number; merges_per_io?: number }

function cellOf(runs: LoadRun[], dev: ({ requests_per_io: number; merges_per_io: number } | null)[] = []): Cell | null {
  const good = runs.filter((r) => r.ok);
  if (!good.length) return null;
  const med = (f: (r: LoadRun) => number) => median(good.map(f));
  const d = dev.filter((x): x is NonNullable<typeof x> => x !== null);
  return {
    rounds: good.length, iops: med((r) => r.iops), mbps: med((r) => r.mbps),
    mean: med((r) => r.lat_us.mean ?? NaN), p50: med((r) => r.lat_us.p50 ?? NaN), p99: med((r) => r.lat_us.p99 ?? NaN),
    ...(d.length ? { requests_per_io: median(d.map((x) => x.requests_per_io)), merges_per_io: median(d.map((x) => x.merges_per_io)) } : {}),
  };
}

/** Boots the guest, runs everything, prints and saves; the exit code of the bench. */
export async function runInteropBench(opts: BenchOptions, root: string, outDir: string): Promise<number> {
  const workloads = WORKLOADS.filter((w) => GUEST_WORKLOAD_IDS.includes(w.id) && opts.workloads.includes(w.id));
  if (!workloads.length) throw new Error(`--interop: the workloads are ${GUEST_WORKLOAD_IDS.join(', ')}; --workloads left none of them`);
  const share = mkdtempSync('/tmp/ibnbd-bench-interop-');
  const load0 = loadavg().map((x) => Number(x.toFixed(2)));
  const timeoutMs = guestTimeoutMs(opts, workloads.length);
  const cpus = opts.guestCpus ?? DEFAULT_GUEST_CPUS;
  log(`bench --interop: one soft-RoCE guest (TCG, ${cpus} vCPU(s)), ${opts.rounds} round(s) × ${workloads.map((w) => w.id).join(', ')} × ` +
    `${PAIRS.length} pairs + fio on ${FIO_PAIRS.length}, ${opts.runtimeMs} ms each (+${opts.rampMs} ms ramp); guest limit ${timeoutMs / 1000} s; share ${share}`);
  try {
    const r = await runBenchGuest('bench --interop', {
      ...kernelRnbdGuestOptions({ shares: [{ hostPath: share, tag: 'out', guestPath: GUEST_OUT }] }),
      cpus,
      memMiB: GUEST_MEM_MIB,
      timeoutMs,
      script: guestScript(opts, guestPaths(root), workloads),
    });
    if (opts.keep) log(`guest output kept in ${share}`);

    // every run of every round, then the medians per pair and workload
    const samples: { round: number; workload: string; pair: PairId; tool: Tool; run: LoadRun; device: ReturnType<typeof deviceRequests> }[] = [];
    for (let round = 1; round <= opts.rounds; round++) {
      for (const w of workloads) {
        for (const pair of PAIRS) {
          const name = runName(round, w, pair.id, 'blkio');
          const run = readLoadRun(share, name, w);
          samples.push({ round, workload: w.id, pair: pair.id, tool: 'blkio', run, device: pair.kernelClient ? deviceRequests(share, name, run) : null });
        }
        for (const pair of FIO_PAIRS) samples.push({ round, workload: w.id, pair: pair.id, tool: 'fio', run: readFio(share, runName(round, w, pair.id, 'fio'), w), device: null });
      }
    }
    const pick = (w: Workload, pair: PairId, tool: Tool) => samples.filter((s) => s.workload === w.id && s.pair === pair && s.tool === tool);
    const cells: Record<string, Partial<Record<PairId, Cell | null>>> = {};
    const fioCells: Record<string, Partial<Record<PairId, Cell | null>>> = {};
    const ratios: Record<string, Partial<Record<PairId, { throughput: number; lat_mean: number } | null>>> = {};
    for (const w of workloads) {
      cells[w.id] = {};
      fioCells[w.id] = {};
      ratios[w.id] = {};
      for (const pair of PAIRS) {
        const s = pick(w, pair.id, 'blkio');
        cells[w.id]![pair.id] = cellOf(s.map((x) => x.run), s.map((x) => x.device));
      }
      for (const pair of FIO_PAIRS) fioCells[w.id]![pair.id] = cellOf(pick(w, pair.id, 'fio').map((x) => x.run));
      const kk = cells[w.id]!.kk;
      for (const pair of PAIRS) {
        const c = cells[w.id]![pair.id];
        ratios[w.id]![pair.id] = c && kk ? { throughput: c[w.headline] / kk[w.headline], lat_mean: c.mean / kk.mean } : null;
      }
    }
    const readJson = (f: string): unknown => { try { return JSON.parse(readFileSync(join(share, f), 'utf8')); } catch { return null; } };
    const ours = readJson('list.json');
    const ourServerSessions = readJson('server-sessions.json');
    const readText = (f: string) => (existsSync(join(share, f)) ? readFileSync(join(share, f), 'utf8').trim() : '');
    const kdev = readText('kdev.txt');

    const out: string[] = [];
    out.push(`ibnbd-vhost bench --interop ${new Date().toISOString()} — one QEMU/TCG guest (${cpus} vCPU(s), ${GUEST_MEM_MIB} MiB, Debian 6.1 kernel), rdma_rxe on eth0 ${GUEST_IP}`);
    out.push(`backing: a loop device over a ${BACKING_MIB} MiB file on the guest's tmpfs, exported read-only by the kernel's rnbd_server (:1234) and our ibnbd server (:${OUR_PORT}), ` +
      `session queue depth ${SESSION_QUEUE_DEPTH} on both`);
    out.push(`load: ibnbd-blkio-bench for all four pairs (--driver io_uring, O_DIRECT, on /dev/rnbdN; virtio-blk-vhost-user on our sockets), one queue, seed ${opts.seed}, ` +
      `${opts.runtimeMs} ms per run (+${opts.rampMs} ms ramp), ${opts.rounds} interleaved round(s), medians; fio (${readText('fio-version.txt') || '?'}, io_uring, direct=1) on /dev/rnbdN as a cross-check`);
    out.push(`host load average at start ${load0.join(' ')}, end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
    out.push('');
    out.push('| workload | pair | IOPS | MB/s | mean µs | p50 µs | p99 µs | throughput ÷ K→K | mean latency ÷ K→K |');
    out.push('|---|---|---|---|---|---|---|---|---|');
    for (const w of workloads) {
      for (const pair of PAIRS) {
        const c = cells[w.id]![pair.id];
        const ratio = ratios[w.id]![pair.id];
        const err = pick(w, pair.id, 'blkio').find((s) => !s.run.ok)?.run.error;
        out.push(c
          ? `| ${w.label} | ${pair.short} | ${human(c.iops)} | ${f1(c.mbps)} | ${f1(c.mean)} | ${f1(c.p50)} | ${f1(c.p99)} | ${f2(ratio?.throughput)}× | ${f2(ratio?.lat_mean)}× |`
          : `| ${w.label} | ${pair.short} | FAILED: ${err ?? 'no result'} | | | | | | |`);
      }
    }
    out.push('');
    out.push('Kernel client, the two load generators on the same /dev/rnbdN (medians):');
    out.push('| workload | pair | fio IOPS | fio MB/s | fio mean µs | blkio-bench IOPS | fio ÷ blkio-bench | block requests per IO (merged) |');
    out.push('|---|---|---|---|---|---|---|---|');
    for (const w of workloads) {
      for (const pair of FIO_PAIRS) {
        const fc = fioCells[w.id]![pair.id];
        const bc = cells[w.id]![pair.id];
        const err = pick(w, pair.id, 'fio').find((s) => !s.run.ok)?.run.error;
        const req = bc?.requests_per_io === undefined ? '—' : `${f2(bc.requests_per_io)} (${f2(bc.merges_per_io)})`;
        out.push(fc
          ? `| ${w.label} | ${pair.short} | ${human(fc.iops)} | ${f1(fc.mbps)} | ${f1(fc.mean)} | ${bc ? human(bc.iops) : '—'} | ${bc ? f2(fc[w.headline] / bc[w.headline]) : '—'}× | ${req} |`
          : `| ${w.label} | ${pair.short} | FAILED: ${err ?? 'no result'} | | | | | ${req} |`);
      }
    }
    out.push('');
    if (kdev) out.push(`kernel client queues: ${kdev.split('\n').join('; ')}`);
    const text = out.join('\n') + '\n';
    process.stdout.write(text);

    mkdirSync(outDir, { recursive: true });
    const json = {
      when: new Date().toISOString(), kind: 'interop-guest', options: opts,
      machine: {
        loadavg_start: load0, loadavg_end: loadavg().map((x) => Number(x.toFixed(2))),
        guest: { cpus, memMiB: GUEST_MEM_MIB, accel: 'tcg', rdma: 'rdma_rxe on eth0', backing: `loop over ${BACKING_MIB} MiB tmpfs file`, session_queue_depth: SESSION_QUEUE_DEPTH },
      },
      guest: { exitCode: r.exitCode, timedOut: r.timedOut, durationMs: r.durationMs, bootMs: r.bootMs, steps: r.output.split('\n').filter((l) => l.startsWith('STEP')) },
      pairs: PAIRS, workloads, medians: cells, ratios_over_kernel_pair: ratios, fio_medians: fioCells,
      kernel_client_queues: kdev, our_devices: ours, our_server_sessions: ourServerSessions, samples,
    };
    writeFileSync(join(outDir, 'bench.json'), JSON.stringify(json, null, 2) + '\n');
    writeFileSync(join(outDir, 'table.txt'), text);
    log(`results: ${join(outDir, 'bench.json')}, ${join(outDir, 'table.txt')}`);
    if (r.exitCode !== 0) log(`guest output tail:\n${r.output.slice(-3000)}`);
    const complete = samples.every((s) => s.run.ok);
    return r.exitCode === 0 && complete ? 0 : 1;
  } finally {
    if (!opts.keep) rmSync(share, { recursive: true, force: true });
  }
}
