// The figures of `bench --interop`: medians per stack and workload, every stack divided by the two
// bases (the all-kernel pair K→K, and K+qsd, what a user would build instead of our client), the
// ratios by name for bench.json (`ratios.oo_over_kq.<workload>`), and the tables as printed.
// Ratios are reported, never asserted; issue 21's target (ours→ours ≥ 1.0× K+qsd) is printed as
// met or missed.
import { f1, f2, type LoadRun } from './guest-bench.js';
import type { DeviceRequests, InteropSample, Tool } from './interop-results.js';
import { BASES, FIO_PAIRS, pairById, PAIRS, type BaseId, type PairId } from './interop-stacks.js';
import { human, median } from './report.js';
import type { Workload } from './workloads.js';

export interface Cell { rounds: number; iops: number; mbps: number; mean: number; p50: number; p99: number; requests_per_io?: number; merges_per_io?: number }
export interface Ratio { throughput: number; lat_mean: number }

/** Issue 21: ours→ours at least this × K+qsd in every workload. */
export const OO_OVER_KQ_TARGET = 1.0;

export interface InteropFigures {
  /** blkio-bench medians, [workload][pair] */
  cells: Record<string, Partial<Record<PairId, Cell | null>>>;
  /** fio medians on the /dev/rnbdN pairs, [workload][pair] */
  fioCells: Record<string, Partial<Record<PairId, Cell | null>>>;
  /** every pair ÷ K→K, [workload][pair] (the shape of earlier runs' bench.json) */
  overKernelPair: Record<string, Partial<Record<PairId, Ratio | null>>>;
  /** by name, `<pair>_over_<base>` then workload: e.g. oo_over_kq['randread-4k-qd1'].throughput */
  ratios: Record<string, Record<string, Ratio | null>>;
}

function cellOf(runs: LoadRun[], dev: (DeviceRequests | null)[] = []): Cell | null {
  const good = runs.filter((r) => r.ok);
  if (!good.length) return null;
  const med = (f: (r: LoadRun) => number) => median(good.map(f));
  const d = dev.filter((x): x is DeviceRequests => x !== null);
  return {
    rounds: good.length, iops: med((r) => r.iops), mbps: med((r) => r.mbps),
    mean: med((r) => r.lat_us.mean ?? NaN), p50: med((r) => r.lat_us.p50 ?? NaN), p99: med((r) => r.lat_us.p99 ?? NaN),
    ...(d.length ? { requests_per_io: median(d.map((x) => x.requests_per_io)), merges_per_io: median(d.map((x) => x.merges_per_io)) } : {}),
  };
}

const ratioOf = (w: Workload, c: Cell | null | undefined, base: Cell | null | undefined): Ratio | null =>
  c && base ? { throughput: c[w.headline] / base[w.headline], lat_mean: c.mean / base.mean } : null;

export function pick(samples: InteropSample[], w: Workload, pair: PairId, tool: Tool): InteropSample[] {
  return samples.filter((s) => s.workload === w.id && s.pair === pair && s.tool === tool);
}

export function interopFigures(samples: InteropSample[], workloads: readonly Workload[]): InteropFigures {
  const f: InteropFigures = { cells: {}, fioCells: {}, overKernelPair: {}, ratios: {} };
  for (const base of BASES) for (const pair of PAIRS) if (pair.id !== base) f.ratios[`${pair.id}_over_${base}`] = {};
  for (const w of workloads) {
    const cells: Partial<Record<PairId, Cell | null>> = {};
    for (const pair of PAIRS) {
      const s = pick(samples, w, pair.id, 'blkio');
      cells[pair.id] = cellOf(s.map((x) => x.run), s.map((x) => x.device));
    }
    f.cells[w.id] = cells;
    f.fioCells[w.id] = Object.fromEntries(FIO_PAIRS.map((pair) => [pair.id, cellOf(pick(samples, w, pair.id, 'fio').map((x) => x.run))]));
    f.overKernelPair[w.id] = Object.fromEntries(PAIRS.map((pair) => [pair.id, ratioOf(w, cells[pair.id], cells.kk)]));
    for (const base of BASES) for (const pair of PAIRS) if (pair.id !== base) f.ratios[`${pair.id}_over_${base}`]![w.id] = ratioOf(w, cells[pair.id], cells[base]);
  }
  return f;
}

/** pair ÷ base in one workload; the base over itself is 1 when it has figures. */
function over(f: InteropFigures, w: Workload, pair: PairId, base: BaseId): Ratio | null {
  return ratioOf(w, f.cells[w.id]?.[pair], f.cells[w.id]?.[base]);
}

/** The tables (markdown) below the caller's header lines. */
export function interopTables(f: InteropFigures, samples: InteropSample[], workloads: readonly Workload[]): string[] {
  const [kk, kq] = [pairById('kk').short, pairById('kq').short];
  const out: string[] = [];
  out.push(`| workload | stack | IOPS | MB/s | mean µs | p50 µs | p99 µs | throughput ÷ ${kk} | mean latency ÷ ${kk} | throughput ÷ ${kq} | mean latency ÷ ${kq} |`);
  out.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const w of workloads) {
    for (const pair of PAIRS) {
      const c = f.cells[w.id]?.[pair.id];
      const [a, b] = [over(f, w, pair.id, 'kk'), over(f, w, pair.id, 'kq')];
      const err = pick(samples, w, pair.id, 'blkio').find((s) => !s.run.ok)?.run.error;
      out.push(c
        ? `| ${w.label} | ${pair.short} | ${human(c.iops)} | ${f1(c.mbps)} | ${f1(c.mean)} | ${f1(c.p50)} | ${f1(c.p99)} | ` +
          `${f2(a?.throughput)}× | ${f2(a?.lat_mean)}× | ${f2(b?.throughput)}× | ${f2(b?.lat_mean)}× |`
        : `| ${w.label} | ${pair.short} | FAILED: ${err ?? 'no result'} | | | | | | | | |`);
    }
  }
  out.push('');
  const oo = pairById('oo').short;
  out.push(`${oo} ÷ ${kq} (issue 21's target: ≥ ${OO_OVER_KQ_TARGET.toFixed(2)}× in every workload; reported, not asserted):`, '');
  out.push(`| workload | ${oo} | ${kq} | throughput ÷ ${kq} | mean latency ÷ ${kq} | target |`);
  out.push('|---|---|---|---|---|---|');
  for (const w of workloads) {
    const [o, q] = [f.cells[w.id]?.oo, f.cells[w.id]?.kq];
    const r = f.ratios.oo_over_kq?.[w.id] ?? null;
    const unit = w.headline === 'iops' ? 'IOPS' : 'MB/s';
    const fig = (c: Cell | null | undefined) => (c ? `${w.headline === 'iops' ? human(c.iops) : f1(c.mbps)} ${unit}` : '—');
    const met = r ? (r.throughput >= OO_OVER_KQ_TARGET ? 'met' : 'missed') : 'n/a';
    out.push(`| ${w.label} | ${fig(o)} | ${fig(q)} | ${f2(r?.throughput)}× | ${f2(r?.lat_mean)}× | ${met} |`);
  }
  out.push('');
  out.push('Kernel client, the two load generators on the same /dev/rnbdN (medians):', '');
  out.push('| workload | pair | fio IOPS | fio MB/s | fio mean µs | blkio-bench IOPS | fio ÷ blkio-bench | block requests per IO (merged) |');
  out.push('|---|---|---|---|---|---|---|---|');
  const req = (c: Cell | null | undefined) => (c?.requests_per_io === undefined ? '—' : `${f2(c.requests_per_io)} (${f2(c.merges_per_io)})`);
  for (const w of workloads) {
    for (const pair of FIO_PAIRS) {
      const fc = f.fioCells[w.id]?.[pair.id];
      const bc = f.cells[w.id]?.[pair.id];
      const err = pick(samples, w, pair.id, 'fio').find((s) => !s.run.ok)?.run.error;
      out.push(fc
        ? `| ${w.label} | ${pair.short} | ${human(fc.iops)} | ${f1(fc.mbps)} | ${f1(fc.mean)} | ${bc ? human(bc.iops) : '—'} | ${bc ? f2(fc[w.headline] / bc[w.headline]) : '—'}× | ${req(bc)} |`
        : `| ${w.label} | ${pair.short} | FAILED: ${err ?? 'no result'} | | | | | ${req(bc)} |`);
    }
  }
  out.push('', `${kq}: block requests qsd issued on the K→K /dev/rnbdN per load-generator IO (merged): ` +
    workloads.map((w) => `${w.label} ${req(f.cells[w.id]?.kq)}`).join('; '));
  return out;
}
