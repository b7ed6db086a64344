// `npm run bench -- --interop` in its short mode (one round, 1 s per run): the kernel's RNBD and
// ours side by side in one soft-RoCE guest. Asserted: every one of the 18 cells (kernel/our client
// × kernel/our server, ours→ours again with both daemons polling, and the kernel client + qsd,
// × 3 workloads) produced a figure, the ratios to the all-kernel pair and to the kernel client +
// qsd are computed from them, printed and saved by name, fio's cross-check ran on both
// /dev/rnbdN, our client daemons' three maps went over RDMA to the two servers and the polling
// one, and our server served both of its clients in the same io_mode. The figures themselves
// are reported, never asserted.
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseFio } from '../../bench/interop-results.js';
import { PAIRS } from '../../bench/interop-stacks.js';
import { WORKLOADS } from '../../bench/workloads.js';
import { runBench } from '../support/bench-runner.js';

const qd32 = WORKLOADS.find((w) => w.id === 'randread-4k-qd32')!;

// the shape fio 3.33 prints with --output-format=json --lat_percentiles=1 (figures from a guest run)
const FIO_JSON = `note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [ { "jobname" : "randread-4k-qd32", "error" : 0,
      "read" : { "io_bytes" : 3571712, "bw_bytes" : 3319434, "iops" : 781.598513, "runtime" : 1076, "total_ios" : 841,
        "clat_ns" : { "mean" : 42455724.0, "percentile" : { "50.000000" : 33423360 } },
        "lat_ns" : { "min" : 2559420, "max" : 188300810, "mean" : 42813289.94266, "N" : 872,
          "percentile" : { "50.000000" : 33816576, "99.000000" : 156237824, "99.900000" : 187695104 } } },
      "write" : { "iops" : 0, "total_ios" : 0 } } ]
}`;

test('fio JSON: IOPS, MB/s and the total latency (not the completion latency), after any text fio printed first', (t) => {
  const r = parseFio(FIO_JSON, qd32);
  t.true(r.ok);
  t.is(r.iops, 781.598513);
  t.is(r.mbps, 3.319434);
  t.deepEqual(r.lat_us, { mean: 42813.28994266, p50: 33816.576, p99: 156237.824, p999: 187695.104 });
});

test('fio output that says nothing measurable is a failed run with the reason', (t) => {
  t.regex(parseFio('fio: failed to open /dev/rnbd0: Permission denied\n', qd32).error ?? '', /no JSON/);
  t.regex(parseFio('{"jobs": [{"error": 5, "read": {"iops": 0, "total_ios": 0, "bw_bytes": 0, "lat_ns": {"mean": 0}}}]}', qd32).error ?? '', /job error 5/);
  t.regex(parseFio('{"jobs": [{"error": 0, "read": {"iops": 0, "total_ios": 0, "bw_bytes": 0, "lat_ns": {"mean": 0}}}]}', qd32).error ?? '', /no IO/);
  t.regex(parseFio('{"jobs": [', qd32).error ?? '', /fio JSON/);
});

interface Cell { iops: number; mbps: number; mean: number; p50: number; p99: number; rounds: number }

test.serial('bench --interop, short: 18 cells with figures and ratios to the all-kernel pair and to K+qsd, fio beside it, our maps over RDMA', async (t) => {
  t.timeout(240_000);
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-bench-interop-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'out');
  const started = Date.now();
  const r = await runBench(['--interop', '--rounds', '1', '--runtime-ms', '1000', '--ramp-ms', '100', '--out', out], 225_000);
  t.log(`bench --interop (1 round × 1 s): ${((Date.now() - started) / 1000).toFixed(0)} s wall`);
  t.log(r.stdout);
  t.is(r.code, 0, r.stderr.slice(-4000));

  const json = JSON.parse(readFileSync(join(out, 'bench.json'), 'utf8')) as {
    workloads: { id: string; label: string; bs: number; headline: 'iops' | 'mbps' }[];
    medians: Record<string, Record<string, Cell | null>>;
    fio_medians: Record<string, Record<string, Cell | null>>;
    ratios_over_kernel_pair: Record<string, Record<string, { throughput: number; lat_mean: number } | null>>;
    ratios: Record<string, Record<string, { throughput: number; lat_mean: number } | null>>;
    qsd: { version: string };
    our_devices: { devices: { session: string; transport: string; read_only: boolean; paths: string[] }[] };
    our_devices_polled: { devices: { session: string; transport: string; read_only: boolean; paths: string[] }[] };
    our_server_sessions: { sessions: { sessname: string; devices: { io_mode: string; access_mode: string }[] }[] };
    guest: { exitCode: number };
  };
  t.is(json.guest.exitCode, 0);
  t.deepEqual(json.workloads.map((w) => w.id), ['randread-4k-qd1', 'randread-4k-qd32', 'read-128k-qd8']);
  let cells = 0;
  for (const w of json.workloads) {
    const kk = json.medians[w.id]!.kk!;
    const kq = json.medians[w.id]!.kq!;
    for (const pair of PAIRS) {
      const c = json.medians[w.id]![pair.id];
      if (!c) { t.fail(`${pair.label}: no figures for ${w.id}`); continue; }
      t.true(c.iops > 0 && c.mean > 0, `${pair.id} ${w.id}: ${c.iops} IOPS, mean ${c.mean} µs`);
      // MB/s is IOPS × block size: the load generator counted what it moved
      t.true(Math.abs(c.mbps - (c.iops * w.bs) / 1e6) <= 0.01 * c.mbps + 0.05, `${pair.id} ${w.id} MB/s`);
      const ratio = json.ratios_over_kernel_pair[w.id]![pair.id]!;
      t.true(Math.abs(ratio.throughput - c[w.headline] / kk[w.headline]) < 1e-9, `${pair.id} ${w.id} ratio`);
      t.true(Math.abs(ratio.lat_mean - c.mean / kk.mean) < 1e-9);
      // by name too, for scripts comparing runs: <pair>_over_kk and <pair>_over_kq
      if (pair.id !== 'kk') t.deepEqual(json.ratios[`${pair.id}_over_kk`]![w.id], ratio);
      if (pair.id !== 'kq' && kq) {
        const q = json.ratios[`${pair.id}_over_kq`]![w.id]!;
        t.true(Math.abs(q.throughput - c[w.headline] / kq[w.headline]) < 1e-9, `${pair.id} ${w.id} ÷ K+qsd`);
        t.true(Math.abs(q.lat_mean - c.mean / kq.mean) < 1e-9);
      }
      cells++;
    }
    for (const pair of ['kk', 'ko']) t.true((json.fio_medians[w.id]![pair]?.iops ?? 0) > 0, `fio ${pair} ${w.id}`);
  }
  t.is(cells, 3 * 6);
  t.regex(json.qsd.version, /qemu-storage-daemon/);

  // the table: one row per cell, each with its four ratios; the rows of each base are 1.00× to it
  const rows = r.stdout.split('\n').filter((l) => /^\| .* \| (K→K|K→ours|ours→K|ours→ours|ours→ours polled|K\+qsd) \| [\d.]+k? \|.*×.*×.*×.*× \|$/.test(l));
  t.is(rows.length, 3 * 6, r.stdout);
  t.is(rows.filter((l) => / K→K \|.* 1\.00× \| 1\.00× \| [\d.]+× \| [\d.]+× \|$/.test(l)).length, 3);
  t.is(rows.filter((l) => / K\+qsd \|.* 1\.00× \| 1\.00× \|$/.test(l)).length, 3);
  // and ours→ours ÷ K+qsd per workload, the target beside it
  t.is(r.stdout.split('\n').filter((l) => /^\| .* \| [\d.]+× \| [\d.]+× \| (met|missed) \|$/.test(l)).length, 3, r.stdout);
  t.is(readFileSync(join(out, 'table.txt'), 'utf8'), r.stdout);

  // our client's maps: one from each server, over RDMA, read-only
  const devs = json.our_devices.devices;
  t.deepEqual(devs.map((d) => [d.session, d.transport, d.read_only, d.paths]).sort(), [
    ['ok', 'rdma', true, ['ip:10.0.2.15:1234']],
    ['oo', 'rdma', true, ['ip:10.0.2.15:4321']],
  ]);
  // and the polling pair's map, from the second client daemon to the second server
  t.deepEqual(json.our_devices_polled.devices.map((d) => [d.session, d.transport, d.read_only, d.paths]), [['op', 'rdma', true, ['ip:10.0.2.15:4322']]]);
  // our server serves the kernel client (whose OPEN names no io_mode) and our client alike
  t.deepEqual(json.our_server_sessions.sessions.map((x) => [x.sessname, x.devices.map((d) => `${d.access_mode} ${d.io_mode}`)]).sort(), [
    ['ko', ['ro fileio']],
    ['oo', ['ro fileio']],
  ]);
});
