// `npm run bench`: ours and the peers side by side, in one run, on one page-cached data file.
// Targets are started once; rounds interleave them (for each workload: a b c d e, then the next
// workload; the whole sequence again each round) so a noisy neighbour hits every target alike,
// and medians over the rounds are reported. See docs/performance.md.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { cpus, loadavg, release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chartSvg } from './chart.js';
import { parseOptions, type BenchOptions } from './options.js';
import { cpuSeconds, type ToolResult } from './procs.js';
import { summarize, summaryLines, table, type Sample, type TargetInfo } from './report.js';
import { makeTarget, oursUnavailableReason, type BenchContext, type Target } from './targets.js';
import { runInteropBench } from './interop.js';
import { runRdmaBench } from './rdma.js';
import { WORKLOADS, type Workload } from './workloads.js';

const log = (s: string) => process.stderr.write(s + '\n');

/** The data file: a pattern (not zeroes, not sparse) written and synced, so it sits in the page cache. */
function makeDataFile(path: string, bytes: number): void {
  const chunk = randomBytes(1 << 20);
  const fd = openSync(path, 'w');
  try {
    for (let off = 0; off < bytes; off += chunk.length) {
      chunk.writeBigUInt64LE(BigInt(off), 0);  // every MiB differs
      writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - off), off);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10000 });
  return (r.stdout || r.stderr || '').trim().split('\n')[0] ?? '';
}

function machine() {
  const c = cpus();
  return {
    cpu: c[0]?.model ?? 'unknown', cpus: c.length, kernel: release(), node: process.version,
    qemu: firstLine('qemu-storage-daemon', ['--version']), libblkio: firstLine('pkg-config', ['--modversion', 'blkio']),
    loadavg_start: loadavg().map((x) => Number(x.toFixed(2))),
  };
}

async function measure(target: Target, w: Workload, ctx: BenchContext, round: number): Promise<Sample> {
  const daemons = target.daemons();
  // a daemon that died has no /proc entry: its run fails below instead of ending the bench
  const cpu0 = (d: (typeof daemons)[number]) => { try { return cpuSeconds(d.pid); } catch { return NaN; } };
  const before = daemons.map(cpu0);
  let r: ToolResult;
  try {
    r = await target.run(w, ctx);
  } catch (e) {
    r = { ok: false, error: (e as Error).message };
  }
  const after = daemons.map(cpu0);
  target.afterRun?.(ctx);
  const cpu: Record<string, number> = {};
  daemons.forEach((d, i) => (cpu[d.name] = Number((after[i]! - before[i]!).toFixed(3))));
  const total = Object.values(cpu).reduce((a, b) => a + b, 0);
  const submitted = Number(r.submitted ?? r.ios ?? 0);
  const lat = (r.lat_us ?? {}) as Record<string, number>;
  const dead = daemons.find((d) => !d.running);
  const ok = r.ok === true && !dead;
  return {
    round, target: target.id, workload: w.id, ok,
    ...(ok ? {} : { error: dead ? `${dead.name} exited` : String(r.error ?? 'failed') }),
    iops: Number(r.iops ?? 0), mbps: Number(r.mbps ?? 0),
    lat_us: { mean: lat.mean ?? 0, p50: lat.p50 ?? 0, p99: lat.p99 ?? 0, p999: lat.p999 ?? 0 },
    ios: Number(r.ios ?? 0), submitted, daemon_cpu_s: cpu, client_cpu_s: Number(r.client_cpu_s ?? 0),
    cpu_s_per_mio: submitted ? (total / submitted) * 1e6 : 0,
    client_cpu_s_per_mio: submitted ? (Number(r.client_cpu_s ?? 0) / submitted) * 1e6 : 0,
  };
}

async function main(opts: BenchOptions): Promise<number> {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const release = join(root, 'native', 'build', 'Release');
  const tools = { blkio: join(release, 'ibnbd-blkio-bench'), probe: join(release, 'ibnbd-tcp-probe'), shim: join(release, 'nodelay_shim.so') };
  for (const t of Object.values(tools)) if (!existsSync(t)) throw new Error(`${t} is missing: run npm run build:native`);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const outDir = resolve(opts.outDir ?? join(root, 'results', opts.rdma ? `${stamp}-rdma` : opts.interop ? `${stamp}-interop` : stamp));
  // RDMA: no device on this host; everything runs in one soft-RoCE guest (bench/rdma.ts, bench/interop.ts)
  if (opts.rdma) return runRdmaBench(opts, root, outDir);
  if (opts.interop) return runInteropBench(opts, root, outDir);
  if (!existsSync(opts.fileDir)) throw new Error(`--file-dir ${opts.fileDir} does not exist`);
  const workloads = WORKLOADS.filter((w) => opts.workloads.includes(w.id));

  mkdirSync(outDir, { recursive: true });
  const work = mkdtempSync('/tmp/ibnbd-bench-');
  const dataDir = mkdtempSync(join(opts.fileDir, 'ibnbd-bench-data-'));
  const file = join(dataDir, 'bench.img');
  const ctx: BenchContext = { opts, root, work, file, tools };
  const started: Target[] = [];
  const infos: TargetInfo[] = [];
  const cleanup = async () => {
    await Promise.all(started.map((t) => t.stop().catch(() => undefined)));
    rmSync(dataDir, { recursive: true, force: true });
    if (!opts.keep) rmSync(work, { recursive: true, force: true });
  };
  const onSignal = () => void cleanup().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const info = machine();
    log(`bench: ${opts.rounds} round(s) × ${workloads.length} workload(s) × targets ${opts.targets.join(',')}, ` +
      `${opts.runtimeMs} ms per run (+${opts.rampMs} ms ramp), ${opts.fileBytes >> 20} MiB file in ${opts.fileDir}; work ${work}`);
    makeDataFile(file, opts.fileBytes);

    for (const id of opts.targets) {
      const target = makeTarget(id, opts.pollUs);
      const ti: TargetInfo = { id, name: target.name, description: target.description, notes: target.notes };
      infos.push(ti);
      if (id === 'a' || id === 'm' || id === 'p') {
        const why = oursUnavailableReason(root);
        if (why) { ti.unavailable = `not available in this build: ${why}`; log(`a: ${ti.unavailable}`); continue; }
      }
      try {
        await target.start(ctx);
        started.push(target);
        ti.name = target.name;  // ours says which client it ran with
        log(`${id}: started (${target.daemons().map((d) => `${d.name} pid ${d.pid}`).join(', ')})`);
      } catch (e) {
        await target.stop().catch(() => undefined);
        ti.unavailable = `start failed: ${(e as Error).message}`;
        log(`${id}: ${ti.unavailable}`);
      }
    }

    const samples: Sample[] = [];
    for (let round = 1; round <= opts.rounds; round++) {
      for (const w of workloads) {
        for (const target of started) {
          const s = await measure(target, w, ctx, round);
          samples.push(s);
          log(`round ${round} ${w.id.padEnd(18)} ${target.id}: ` +
            (s.ok ? `${s.iops.toFixed(0)} IOPS ${s.mbps.toFixed(1)} MB/s mean ${s.lat_us.mean.toFixed(1)} µs, daemons ${(s.cpu_s_per_mio).toFixed(2)} CPU s/MIO` : `FAILED ${s.error}`));
        }
      }
    }

    const report = summarize(samples, workloads, opts.targets);
    const text = table(report, workloads, infos);
    const summary = summaryLines(report, workloads, infos);
    const notes = infos.flatMap((i) => i.notes.map((n) => `${i.id}: ${n}`));
    const header = [
      `ibnbd-vhost bench ${new Date().toISOString()} — ${info.cpus} × ${info.cpu}, Linux ${info.kernel}, ${info.qemu}, libblkio ${info.libblkio}`,
      `${opts.rounds} round(s), medians; ${opts.runtimeMs} ms per run; ${opts.fileBytes >> 20} MiB file on ${opts.fileDir}; load average at start ${info.loadavg_start.join(' ')}`,
      ...infos.map((i) => `  ${i.id}: ${i.description}${i.unavailable ? ` — ${i.unavailable}` : ''}`),
      ...notes.map((n) => `  note ${n}`),
      '  CPU s/MIO = CPU seconds (utime+stime from /proc/<pid>/stat) of the target\'s daemons per million IOs; ours/this = ours ÷ that target',
      '',
    ].join('\n');
    const output = `${header}\n${text}\nSummary:\n${summary.map((l) => `  ${l}`).join('\n')}\n`;
    process.stdout.write(output);

    const json = {
      when: new Date().toISOString(), machine: { ...info, loadavg_end: loadavg().map((x) => Number(x.toFixed(2))) },
      options: opts, targets: infos, workloads, medians: report.cells, ratios_ours_over_peer: report.ratios,
      checks: report.checks, errors: report.errors, summary, samples,
    };
    writeFileSync(join(outDir, 'bench.json'), JSON.stringify(json, null, 2) + '\n');
    writeFileSync(join(outDir, 'table.txt'), output);
    writeFileSync(join(outDir, 'chart.svg'), chartSvg(report, workloads, infos, `ibnbd-vhost bench — ${info.cpus} CPUs, ${opts.rounds} round(s), medians`));
    log(`results: ${join(outDir, 'bench.json')}, ${join(outDir, 'chart.svg')}, ${join(outDir, 'table.txt')}`);
    return samples.some((s) => !s.ok) || infos.some((i) => i.id !== 'a' && i.unavailable) ? 1 : 0;
  } finally {
    await cleanup();
  }
}

let opts: BenchOptions;
try {
  opts = parseOptions(process.argv.slice(2));
} catch (e) {
  log((e as Error).message);
  process.exit(2);
}
main(opts).then(
  (code) => process.exit(code),
  (e) => {
    log(`bench: ${(e as Error).message}`);
    process.exit(2);
  },
);
