// `npm run bench -- --quick` end to end on the real peers (qemu-storage-daemon, qemu-nbd, the raw
// TCP probe) through the real libblkio client: every peer yields figures for every workload, the
// results folder holds JSON, table and chart, and ours is either measured or reported as not in
// this build. The figures themselves are not asserted: the bench is not a timed test.
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runBench } from '../support/bench-runner.js';

interface Lat { mean: number; p50: number; p99: number; p999: number }
interface Cell { iops: number; mbps: number; lat_us: Lat; cpu_s_per_mio: number; rounds: number }

test('quick bench runs every peer on every workload and writes JSON, table and chart', async (t) => {
  t.timeout(110_000);
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-bench-smoke-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'out');
  const r = await runBench(['--quick', '--runtime-ms', '600', '--ramp-ms', '100', '--size', '16M', '--file-dir', dir, '--out', out], 100_000);
  t.is(r.code, 0, r.stderr);

  const json = JSON.parse(readFileSync(join(out, 'bench.json'), 'utf8')) as {
    medians: Record<string, Record<string, Cell>>;
    ratios_ours_over_peer: Record<string, Record<string, { throughput: number }>>;
    targets: { id: string; unavailable?: string; notes: string[] }[];
    workloads: { id: string; bs: number; headline: 'iops' | 'mbps' }[];
    summary: string[];
    samples: unknown[];
  };
  t.is(json.workloads.length, 6);
  t.is(json.summary.length, 6);
  for (const w of json.workloads) {
    for (const peer of ['b', 'c', 'd', 'e']) {
      const c = json.medians[w.id]?.[peer];
      if (!c) { t.fail(`${peer} has no figures for ${w.id}`); continue; }
      t.true(c.iops > 0, `${peer} ${w.id} IOPS`);
      // MB/s is IOPS × block size: the tools agree on what they measured
      t.true(Math.abs(c.mbps - (c.iops * w.bs) / 1e6) <= 0.01 * c.mbps + 0.05, `${peer} ${w.id} MB/s`);
      t.true(c.lat_us.mean > 0 && c.lat_us.p50 <= c.lat_us.p99 && c.lat_us.p99 <= c.lat_us.p999, `${peer} ${w.id} latency`);
      // the qemu daemons did the work, and their CPU time was read from /proc
      if (peer !== 'e') t.true(c.cpu_s_per_mio > 0, `${peer} ${w.id} CPU`);
    }
  }
  const c = json.targets.find((x) => x.id === 'c')!;
  t.true(c.notes.some((n) => /TCP_NODELAY shim loaded in qemu-nbd/.test(n)));

  const ours = json.targets.find((x) => x.id === 'a')!;
  if (ours.unavailable) {
    // only acceptable while the daemons are not in this build; a start failure is a failure
    t.regex(ours.unavailable, /^not available in this build/);
    t.true(json.summary.every((l) => l.includes('ours pending')));
  } else {
    for (const w of json.workloads) {
      const a = json.medians[w.id]!.a!;
      t.true(a.iops > 0, `ours ${w.id}`);
      const ratio = json.ratios_ours_over_peer[w.id]!.b!.throughput;
      t.true(Math.abs(ratio - a[w.headline] / json.medians[w.id]!.b![w.headline]) < 1e-9);
    }
  }

  const table = readFileSync(join(out, 'table.txt'), 'utf8');
  t.regex(table, /TCP_NODELAY forced on qemu-nbd/);
  t.regex(table, /4 KiB randread QD32/);
  const svg = readFileSync(join(out, 'chart.svg'), 'utf8');
  t.true(svg.startsWith('<svg') && svg.trimEnd().endsWith('</svg>'));
  // two panels × 6 workloads × the four peers at least
  t.true((svg.match(/<rect x=/g) ?? []).length >= 2 * 6 * 4);
});

// the RDMA run itself boots a guest for minutes (not a test); its option check is immediate
test('--rdma refuses to run without its 4 KiB QD1 read, before booting anything', async (t) => {
  const r = await runBench(['--rdma', '--workloads', 'randread-4k-qd32', '--out', join(tmpdir(), `ibnbd-rdma-none-${process.pid}`)], 30_000);
  t.is(r.code, 2);
  t.regex(r.stderr, /4 KiB randread QD1 workload is the point/);
  t.notRegex(r.stderr, /soft-RoCE guest/, 'no guest was started');
});

test('bad options are refused with the flag named', async (t) => {
  const r = await runBench(['--targets', 'b,x'], 30_000);
  t.is(r.code, 2);
  t.regex(r.stderr, /--targets/);
});
