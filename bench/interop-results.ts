// What the `bench --interop` guest leaves on its share, read back: every run's name, the load
// generator's and fio's results, and the kernel client's block requests per IO from the
// /sys/block stat taken around a run.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { errText, failedRun, readLoadRun, type LoadRun } from './guest-bench.js';
import { FIO_PAIRS, PAIRS, type PairId } from './interop-stacks.js';
import type { Workload } from './workloads.js';

export type Tool = 'blkio' | 'fio';
export const runName = (round: number, w: Workload, pair: PairId, tool: Tool) => `r${round}-${w.id}-${pair}-${tool}`;

export interface DeviceRequests { requests_per_io: number; merges_per_io: number }

export interface InteropSample { round: number; workload: string; pair: PairId; tool: Tool; run: LoadRun; device: DeviceRequests | null }

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
function deviceRequests(dir: string, name: string, run: LoadRun): DeviceRequests | null {
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

/** Every run of every round the guest script ran (a run it never reached is a failed sample). */
export function readSamples(dir: string, rounds: number, workloads: readonly Workload[]): InteropSample[] {
  const samples: InteropSample[] = [];
  for (let round = 1; round <= rounds; round++) {
    for (const w of workloads) {
      for (const pair of PAIRS) {
        const name = runName(round, w, pair.id, 'blkio');
        const run = readLoadRun(dir, name, w);
        samples.push({ round, workload: w.id, pair: pair.id, tool: 'blkio', run, device: pair.kernelDev ? deviceRequests(dir, name, run) : null });
      }
      for (const pair of FIO_PAIRS) samples.push({ round, workload: w.id, pair: pair.id, tool: 'fio', run: readFio(dir, runName(round, w, pair.id, 'fio'), w), device: null });
    }
  }
  return samples;
}
