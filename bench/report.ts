// Turns the samples of all rounds into medians, ratios ours/peer, the checks of the issue's
// targets (reported, never asserted), a text table and one summary line per workload.
import type { TargetId } from './options.js';
import type { Workload } from './workloads.js';

export interface Latency { mean: number; p50: number; p99: number; p999: number }

export interface Sample {
  round: number;
  target: TargetId;
  workload: string;
  ok: boolean;
  error?: string;
  iops: number;
  mbps: number;
  lat_us: Latency;
  ios: number;
  submitted: number;
  daemon_cpu_s: Record<string, number>;
  client_cpu_s: number;
  /** CPU seconds of the target's daemons per million IOs submitted */
  cpu_s_per_mio: number;
  client_cpu_s_per_mio: number;
}

export interface Cell {
  rounds: number;
  iops: number;
  mbps: number;
  lat_us: Latency;
  cpu_s_per_mio: number;
  client_cpu_s_per_mio: number;
  iops_min: number;
  iops_max: number;
}

export interface TargetInfo { id: TargetId; name: string; description: string; notes: string[]; unavailable?: string }

export interface Check { workload: string; what: string; ratio: number | null; bound: string; met: boolean | null }

export interface Report {
  cells: Record<string, Partial<Record<TargetId, Cell>>>;
  errors: Record<string, Partial<Record<TargetId, string[]>>>;
  ratios: Record<string, Partial<Record<TargetId, { throughput: number; lat_mean: number; cpu_per_mio: number | null }>>>;
  checks: Check[];
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function summarize(samples: Sample[], workloads: readonly Workload[], targets: TargetId[]): Report {
  const report: Report = { cells: {}, errors: {}, ratios: {}, checks: [] };
  for (const w of workloads) {
    const cells: Partial<Record<TargetId, Cell>> = {};
    const errors: Partial<Record<TargetId, string[]>> = {};
    for (const t of targets) {
      const mine = samples.filter((s) => s.workload === w.id && s.target === t);
      const good = mine.filter((s) => s.ok);
      const bad = mine.filter((s) => !s.ok).map((s) => `round ${s.round}: ${s.error ?? 'failed'}`);
      if (bad.length) errors[t] = bad;
      if (!good.length) continue;
      const med = (f: (s: Sample) => number) => median(good.map(f));
      cells[t] = {
        rounds: good.length,
        iops: med((s) => s.iops),
        mbps: med((s) => s.mbps),
        lat_us: { mean: med((s) => s.lat_us.mean), p50: med((s) => s.lat_us.p50), p99: med((s) => s.lat_us.p99), p999: med((s) => s.lat_us.p999) },
        cpu_s_per_mio: med((s) => s.cpu_s_per_mio),
        client_cpu_s_per_mio: med((s) => s.client_cpu_s_per_mio),
        iops_min: Math.min(...good.map((s) => s.iops)),
        iops_max: Math.max(...good.map((s) => s.iops)),
      };
    }
    report.cells[w.id] = cells;
    report.errors[w.id] = errors;
    const ours = cells.a;
    const ratios: Report['ratios'][string] = {};
    if (ours) {
      for (const t of targets) {
        const peer = cells[t];
        if (t === 'a' || !peer) continue;
        ratios[t] = {
          throughput: ours[w.headline] / peer[w.headline],
          lat_mean: ours.lat_us.mean / peer.lat_us.mean,
          cpu_per_mio: t === 'e' ? null : ours.cpu_s_per_mio / peer.cpu_s_per_mio,
        };
      }
    }
    report.ratios[w.id] = ratios;
    report.checks.push(...checksFor(w, ratios, !!ours, targets));
  }
  report.checks.push(...queueScaling(report, workloads));
  return report;
}

// issue 21: 4 queues × QD32 (with --io-threads 2 on both daemons) ≥ 1.6× ours' 1 queue × QD32
function queueScaling(report: Report, workloads: readonly Workload[]): Check[] {
  const ids = workloads.map((w) => w.id);
  if (!ids.includes('randread-4k-4q-qd32') || !ids.includes('randread-4k-qd32')) return [];
  const one = report.cells['randread-4k-qd32']?.a;
  const four = report.cells['randread-4k-4q-qd32']?.a;
  const r = one && four ? four.iops / one.iops : null;
  return [{ workload: 'randread-4k-4q-qd32', what: 'IOPS vs ours at 1 queue × QD32', ratio: r, bound: '>= 1.6', met: r === null ? null : r >= 1.6 }];
}

// The issue's targets, as ratios ours/peer.
const TARGETS: { workload: string; peer: TargetId; metric: 'throughput' | 'lat_mean' | 'cpu_per_mio'; op: '>=' | '<='; bound: number; what: string }[] = [
  { workload: 'randread-4k-qd32', peer: 'c', metric: 'throughput', op: '>=', bound: 2.0, what: 'IOPS vs (c) qemu-nbd TCP' },
  // the first round asked ≥ 0.8; the fault-tolerance issue (16) ≥ 1.2 (no cost on the healthy
  // path), the performance issue (21) ≥ 1.4
  { workload: 'randread-4k-qd32', peer: 'b', metric: 'throughput', op: '>=', bound: 1.2, what: 'IOPS vs (b) qsd local' },
  { workload: 'randread-4k-qd32', peer: 'b', metric: 'throughput', op: '>=', bound: 1.4, what: 'IOPS vs (b) qsd local' },
  { workload: 'randread-4k-qd32', peer: 'e', metric: 'throughput', op: '>=', bound: 0.7, what: 'IOPS vs (e) raw TCP floor' },
  { workload: 'randread-4k-qd1', peer: 'e', metric: 'lat_mean', op: '<=', bound: 1.5, what: "mean latency vs (e)'s round trip" },
  { workload: 'read-128k-qd8', peer: 'b', metric: 'throughput', op: '>=', bound: 0.8, what: 'MB/s vs (b) qsd local' },
  { workload: 'write-128k-qd8', peer: 'b', metric: 'throughput', op: '>=', bound: 0.8, what: 'MB/s vs (b) qsd local' },
  ...['randread-4k-qd1', 'randread-4k-qd32', 'randwrite-4k-qd1', 'randwrite-4k-qd32', 'read-128k-qd8', 'write-128k-qd8'].map((workload) => ({
    workload, peer: 'c' as const, metric: 'cpu_per_mio' as const, op: '<=' as const, bound: 1.0, what: 'daemon CPU s per MIO vs (c)',
  })),
  // issue 19: scraping /metrics every second costs < 2 % of 4 KiB QD32 IOPS, i.e. a/m < 1/0.98
  ...['randread-4k-qd32', 'randwrite-4k-qd32'].map((workload) => ({
    workload, peer: 'm' as const, metric: 'throughput' as const, op: '<=' as const, bound: 1.0204, what: 'IOPS vs (m) ours scraped every second',
  })),
];

/** Peers that run only when asked for: their checks are left out of a run without them. */
const OPTIONAL_PEERS: TargetId[] = ['m', 'p'];

function checksFor(w: Workload, ratios: Report['ratios'][string], oursRan: boolean, targets: TargetId[]): Check[] {
  return TARGETS.filter((t) => t.workload === w.id && (targets.includes(t.peer) || !OPTIONAL_PEERS.includes(t.peer))).map((t) => {
    const r = ratios[t.peer]?.[t.metric] ?? null;
    return {
      workload: w.id, what: t.what, ratio: oursRan ? r : null, bound: `${t.op} ${t.bound}`,
      met: r === null ? null : t.op === '>=' ? r >= t.bound : r <= t.bound,
    };
  });
}

// ---- text ----

export function human(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  if (n >= 100) return n.toFixed(0);
  return n.toFixed(n >= 10 ? 1 : 2);
}

const pad = (s: string, n: number) => s.padStart(n);

export function table(report: Report, workloads: readonly Workload[], infos: TargetInfo[]): string {
  const lines: string[] = [];
  const head = `  ${'target'.padEnd(24)}${pad('IOPS', 9)}${pad('MB/s', 9)}${pad('mean µs', 10)}${pad('p50', 9)}${pad('p99', 9)}${pad('p99.9', 9)}${pad('CPU s/MIO', 11)}${pad('ours/this', 11)}${pad('lat ours/this', 15)}`;
  for (const w of workloads) {
    lines.push(w.label, head);
    for (const info of infos) {
      const c = report.cells[w.id]?.[info.id];
      const label = `${info.id} ${info.name}`.padEnd(24);
      if (!c) {
        const why = info.unavailable ?? report.errors[w.id]?.[info.id]?.[0] ?? 'no result';
        lines.push(`  ${label}  — ${why}`);
        continue;
      }
      const r = report.ratios[w.id]?.[info.id];
      lines.push(`  ${label}${pad(human(c.iops), 9)}${pad(human(c.mbps), 9)}${pad(human(c.lat_us.mean), 10)}${pad(human(c.lat_us.p50), 9)}` +
        `${pad(human(c.lat_us.p99), 9)}${pad(human(c.lat_us.p999), 9)}${pad(info.id === 'e' ? 'n/a' : human(c.cpu_s_per_mio), 11)}` +
        `${pad(r ? `${r.throughput.toFixed(2)}×` : '', 11)}${pad(r ? `${r.lat_mean.toFixed(2)}×` : '', 15)}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

export function summaryLines(report: Report, workloads: readonly Workload[], infos: TargetInfo[]): string[] {
  const ours = infos.find((i) => i.id === 'a');
  return workloads.map((w) => {
    const cells = report.cells[w.id] ?? {};
    const unit = w.headline === 'iops' ? 'IOPS' : 'MB/s';
    const peers = infos.filter((i) => i.id !== 'a' && cells[i.id]).map((i) => `${i.id} ${human(cells[i.id]![w.headline])}`).join(', ');
    const a = cells.a;
    if (!a) {
      const why = ours?.unavailable ?? report.errors[w.id]?.a?.[0] ?? (ours ? 'no result' : 'not selected');
      return `${w.label}: ours pending (${why}); peers ${unit}: ${peers}`;
    }
    const checks = report.checks.filter((c) => c.workload === w.id)
      .map((c) => `${c.what} ${c.ratio === null ? 'n/a' : `${c.ratio.toFixed(2)}×`} [target ${c.bound}: ${c.met === null ? 'n/a' : c.met ? 'met' : 'missed'}]`);
    const ratios = Object.entries(report.ratios[w.id] ?? {}).map(([t, r]) => `${r!.throughput.toFixed(2)}× ${t}`).join(', ');
    return `${w.label}: ours ${human(a[w.headline])} ${unit}, mean ${human(a.lat_us.mean)} µs (${ratios})${checks.length ? '; ' + checks.join('; ') : ''}`;
  });
}
