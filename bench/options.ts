// Command line of the bench runner. Every value is checked here, with a message naming the flag.
import { DEFAULT_WORKLOAD_IDS, WORKLOADS } from './workloads.js';

export const TARGET_IDS = ['a', 'b', 'c', 'd', 'e', 'm', 'p'] as const;
export type TargetId = (typeof TARGET_IDS)[number];
/** m (ours with /metrics scraped every second) and p (ours with --poll-us) run only when asked
 *  for: --metrics-cost, --targets …,p. */
const DEFAULT_TARGETS: TargetId[] = ['a', 'b', 'c', 'd', 'e'];

export interface BenchOptions {
  quick: boolean;
  rdma: boolean;
  interop: boolean;
  /** vCPUs of the guest benches; undefined: each bench's default */
  guestCpus: number | undefined;
  rounds: number;
  runtimeMs: number;
  rampMs: number;
  timeoutMs: number;
  fileBytes: number;
  fileDir: string;
  outDir: string | undefined;
  targets: TargetId[];
  workloads: string[];
  seed: number;
  ioThreads: number | undefined;
  /** --poll-us of target p's daemons (default 50) */
  pollUs: number;
  keep: boolean;
}

export const USAGE = `usage: npm run bench -- [options]
  --quick               smoke run: 1 round, 400 ms per run, 64 MiB file
  --rounds N            interleaved rounds (default 3; medians are reported)
  --runtime-ms T        measured time per run (default 3000)
  --ramp-ms T           unmeasured warm-up per run (default 300)
  --timeout-ms T        longest wait for any single completion (default 10000)
  --size BYTES          data file size (default 1G; k/M/G suffixes)
  --file-dir DIR        where the data file lives (default /dev/shm: tmpfs is page cache only)
  --out DIR             results folder (default results/<timestamp>)
  --targets a,b,c,d,e,m,p which targets (default a-e; m: ours with both daemons' /metrics
                        scraped every second, compared with a; p: ours with both daemons'
                        adaptive polling on, --poll-us, compared with a)
  --metrics-cost        add m and a: what scraping /metrics every second costs ours (a/m)
  --workloads ID,...    ${WORKLOADS.map((w) => w.id).join(',')}
                        (default all but ${WORKLOADS.filter((w) => !DEFAULT_WORKLOAD_IDS.includes(w.id)).map((w) => w.id).join(',')}:
                        with --io-threads 2 and randread-4k-qd32 it gives ours' 4-queue ÷ 1-queue ratio)
  --seed N              seed of the IO pattern (default 1)
  --io-threads N        passed to our server and client daemons
  --poll-us N           the polling window of target p's daemons, 1..1000 µs (default 50)
  --keep                keep the work folder (logs, sockets)
  --rdma                ours over RDMA in one soft-RoCE guest next to perftest's ib_send_lat +
                        ib_write_lat (4 KiB randread QD1/QD32, 128 KiB read QD8; --runtime-ms, --ramp-ms,
                        --workloads apply)
  --interop             the kernel's RNBD and ours side by side in one soft-RoCE guest: kernel/our client
                        × kernel/our server on one loop device, 4 KiB randread QD1/QD32, 128 KiB read
                        QD8 (--rounds, --runtime-ms, --ramp-ms, --workloads, --seed apply)
  --guest-cpus N        vCPUs of the --rdma / --interop guest (defaults 2 / 1)`;

function positive(flag: string, v: string | undefined, min = 1): number {
  if (v === undefined || !/^\d+$/.test(v) || Number(v) < min) throw new Error(`${flag}: expected an integer >= ${min}, got ${v ?? 'nothing'}`);
  return Number(v);
}

function size(flag: string, v: string | undefined): number {
  const m = v === undefined ? null : /^(\d+)([kKmMgG]?)$/.exec(v);
  if (!m) throw new Error(`${flag}: expected a size like 1G or 64M, got ${v ?? 'nothing'}`);
  const shift = { '': 0, k: 10, m: 20, g: 30 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  const n = Number(m[1]) * 2 ** shift;
  if (n < 1 << 20 || n % 4096) throw new Error(`${flag}: at least 1M and a multiple of 4096`);
  return n;
}

export function parseOptions(argv: string[]): BenchOptions {
  const o: BenchOptions = {
    quick: false, rdma: false, interop: false, guestCpus: undefined, rounds: 3, runtimeMs: 3000, rampMs: 300, timeoutMs: 10000,
    fileBytes: 1 << 30, fileDir: '/dev/shm', outDir: undefined, targets: [...DEFAULT_TARGETS],
    workloads: [...DEFAULT_WORKLOAD_IDS], seed: 1, ioThreads: undefined, pollUs: 50, keep: false,
  };
  const explicit = new Set<string>();
  let metricsCost = false;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const value = (): string | undefined => argv[++i];
    explicit.add(flag);
    switch (flag) {
      case '--quick': o.quick = true; break;
      case '--rdma': o.rdma = true; break;
      case '--interop': o.interop = true; break;
      case '--guest-cpus': o.guestCpus = positive(flag, value()); if (o.guestCpus > 8) throw new Error('--guest-cpus: at most 8'); break;
      case '--keep': o.keep = true; break;
      case '--metrics-cost': metricsCost = true; break;
      case '--rounds': o.rounds = positive(flag, value()); break;
      case '--runtime-ms': o.runtimeMs = positive(flag, value(), 50); break;
      case '--ramp-ms': o.rampMs = positive(flag, value(), 0); break;
      case '--timeout-ms': o.timeoutMs = positive(flag, value(), 100); break;
      case '--size': o.fileBytes = size(flag, value()); break;
      case '--file-dir': o.fileDir = value() ?? ''; if (!o.fileDir) throw new Error('--file-dir: expected a folder'); break;
      case '--out': o.outDir = value(); if (!o.outDir) throw new Error('--out: expected a folder'); break;
      case '--seed': o.seed = positive(flag, value(), 0); break;
      case '--io-threads': o.ioThreads = positive(flag, value()); break;
      case '--poll-us': o.pollUs = positive(flag, value()); if (o.pollUs > 1000) throw new Error('--poll-us: at most 1000'); break;
      case '--targets': {
        const list = (value() ?? '').split(',').filter(Boolean);
        const bad = list.filter((t) => !(TARGET_IDS as readonly string[]).includes(t));
        if (!list.length || bad.length) throw new Error(`--targets: expected some of ${TARGET_IDS.join(',')}, got ${bad.join(',') || 'nothing'}`);
        o.targets = TARGET_IDS.filter((t) => list.includes(t));
        break;
      }
      case '--workloads': {
        const list = (value() ?? '').split(',').filter(Boolean);
        const known = WORKLOADS.map((w) => w.id);
        const bad = list.filter((w) => !known.includes(w));
        if (!list.length || bad.length) throw new Error(`--workloads: unknown ${bad.join(',') || '(empty list)'}; known: ${known.join(',')}`);
        o.workloads = known.filter((w) => list.includes(w));
        break;
      }
      case '--help': case '-h': throw new Error(USAGE);
      default: throw new Error(`unknown option ${flag}\n${USAGE}`);
    }
  }
  if (metricsCost) o.targets = TARGET_IDS.filter((t) => t === 'a' || t === 'm' || o.targets.includes(t));
  if (o.rdma && o.interop) throw new Error('--rdma and --interop are two different guest runs: pick one');
  if (o.quick) {
    if (!explicit.has('--rounds')) o.rounds = 1;
    if (!explicit.has('--runtime-ms')) o.runtimeMs = 400;
    if (!explicit.has('--ramp-ms')) o.rampMs = 100;
    if (!explicit.has('--size')) o.fileBytes = 64 << 20;
  }
  return o;
}
