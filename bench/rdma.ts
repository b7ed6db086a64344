// `npm run bench -- --rdma`: ours over RTRS on soft-RoCE, inside one QEMU guest (hostroot mode,
// rxe0 on eth0 = 10.0.2.15, docs/testing.md "Soft-RoCE in a guest"), next to perftest's
// ib_send_lat and ib_write_lat in the same guest. The guest writes raw results (the load generator's JSON lines, perftest's text) into a
// writable 9p share; this side parses them, prints the table and saves bench.json / table.txt.
// The guest runs under TCG: every figure is slow in absolute terms, and only the ratio within the
// guest means something. See docs/performance.md ("RDMA in a soft-RoCE guest").
import { mkdirSync, mkdtempSync, readFileSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { BenchOptions } from './options.js';
import { GUEST_WORKLOAD_IDS, WORKLOADS, type Workload } from './workloads.js';
import {
  f1, f2, GUEST_OUT, guestPaths, ibnbdCmd, loadgenShell, ourMapShell, readLoadRun, readSleepsPerIo, runBenchGuest, sleepsShell, startOurDaemonsShell, STEP_SHELL, STOP_OUR_DAEMONS_SHELL,
} from './guest-bench.js';
import { RXE_MODULES } from '../harness/qemu/rnbd-kernel.js';

const log = (s: string) => process.stderr.write(s + '\n');

/** perftest message sizes: 2 B (its default, the size of a bare message) and 4 KiB (our block) */
const PERFTEST_SIZES = [2, 4096];
const PERFTEST_ITERS = 1000;
const PORT = 4321;
const GUEST_TIMEOUT_MS = 420_000;
/** the polling run: both daemons with --poll-us (docs/operations.md, "Adaptive polling") */
// The polling window of step 5. Under TCG a round trip in this guest takes about 1 ms, so the
// host bench's 50 µs window ends long before the answer comes (2026-12-07: polled ÷ interrupt-
// driven QD1 mean 0.98× at 50, 0.33-0.55× at 1000 over eight runs); 1000 is the daemons' maximum.
const POLL_US = 1000;
const POLL_SUFFIX = '-poll';
const FILE_MIB = 256;

export interface PerftestLine { bytes: number; iterations: number; t_min: number; t_max: number; t_typical: number; t_avg: number; p99: number | null }

/**
 * perftest's latency table: a header line naming the columns (#bytes #iterations t_min[usec] ...),
 * then one line of numbers. Columns are found by name, not position: versions differ.
 */
export function parsePerftest(text: string): PerftestLine | undefined {
  const lines = text.split('\n');
  const h = lines.findIndex((l) => l.includes('#bytes') && l.includes('t_typical'));
  if (h < 0) return undefined;
  // "99% percentile[usec]" is two words: join them before splitting
  const names = lines[h]!.replace(/(\d+(?:\.\d+)?)% percentile/g, 'p$1').trim().split(/\s+/);
  const row = lines.slice(h + 1).find((l) => /^\s*\d+\s+\d+\s+\d/.test(l));
  if (!row) return undefined;
  const values = row.trim().split(/\s+/).map(Number);
  const col = (name: string) => {
    const i = names.findIndex((n) => n.startsWith(name));
    return i < 0 || !Number.isFinite(values[i]) ? null : values[i]!;
  };
  const need = ['#bytes', '#iterations', 't_min', 't_max', 't_typical', 't_avg'].map(col);
  if (need.some((v) => v === null)) return undefined;
  const [bytes, iterations, t_min, t_max, t_typical, t_avg] = need as number[];
  return { bytes: bytes!, iterations: iterations!, t_min: t_min!, t_max: t_max!, t_typical: t_typical!, t_avg: t_avg!, p99: col('p99') };
}

function guestScript(o: BenchOptions, root: string, workloads: Workload[]): string {
  const p = guestPaths(root);
  const IB = ibnbdCmd(p);
  // server in the background, client after 2 s; both bounded; the server is waited for so the
  // next run finds its port free
  const perftest = (prog: string, size: number, suffix = '', flags = '') => {
    const f = `/tmp/out/${prog}${flags ? '-ev' : ''}-${size}${suffix}`;
    // a client that comes before the server listens is rejected (invalid service id) and
    // perftest then crashes: try again while the server is still there, a few times
    return `timeout 60 ${prog} -R -F ${flags}-d rxe0 -n ${PERFTEST_ITERS} -s ${size} > ${f}.server 2>&1 & P=$!; sleep 2
n=0; while :; do n=$((n+1)); timeout 60 ${prog} -R -F ${flags}-d rxe0 -n ${PERFTEST_ITERS} -s ${size} 10.0.2.15 > ${f}.txt 2>&1; rc=$?
  [ $rc = 0 ] || ! kill -0 $P 2>/dev/null || [ $n -ge 5 ] && break; sleep 2; done
step "${prog} ${flags}${size} rc $rc tries $n"; kill $P 2>/dev/null; wait $P`;
  };
  // ib_send_lat -e sleeps on CQ events as our transport does (perftest polls by default;
  // ib_write_lat has no event mode): how much waking up costs in this guest
  const perf = (suffix = '') => [...PERFTEST_SIZES.flatMap((s) => ['ib_send_lat', 'ib_write_lat'].map((p) => perftest(p, s, suffix))),
    perftest('ib_send_lat', 2, suffix, '-e ')].join('\n');
  return `
${STEP_SHELL}
rdma link add rxe0 type rxe netdev eth0 || exit 20
i=0; until rdma link show rxe0/1 2>/dev/null | grep -q 'state ACTIVE'; do i=$((i+1)); [ $i -gt 100 ] && exit 21; sleep 0.1; done
step rxe0 active
${perf()}
mkdir -p /tmp/exp
dd if=/dev/zero of=/tmp/exp/bench.img bs=1M count=${FILE_MIB} status=none || exit 22
${startOurDaemonsShell(p, `10.0.2.15:${PORT}`, '/tmp/exp')}
${ourMapShell(p, `sessname=bench path=ip:10.0.2.15:${PORT} device_path=bench.img io_mode=fileio`, 'map', 'SOCK', 24)}
${workloads.map((w) => [sleepsShell(w.id), loadgenShell(p, o, w, '$SOCK', w.id), sleepsShell(w.id)].join('\n')).join('\n')}
# the transport alone: same server, native QD1 submit loop, no vhost-user hop
timeout 60 ${p.node} ${join(root, 'dist', 'bench', 'rdma-transport-qd1.js')} 10.0.2.15 ${PORT} bench.img ${o.runtimeMs} > ${GUEST_OUT}/transport-qd1.json 2> ${GUEST_OUT}/transport-qd1.err; step "transport qd1 rc $?"
${IB} show ibnbd0 --control /tmp/clt.sock --json > ${GUEST_OUT}/show.json 2>&1
${IB} unmap ibnbd0 --control /tmp/clt.sock > /dev/null 2>&1
${STOP_OUR_DAEMONS_SHELL}
# the same workloads with adaptive polling on both daemons (--poll-us; interrupt-driven above)
${startOurDaemonsShell(p, `10.0.2.15:${PORT}`, '/tmp/exp', `--poll-us ${POLL_US} `, `--poll-us ${POLL_US} `)}
${ourMapShell(p, `sessname=bench path=ip:10.0.2.15:${PORT} device_path=bench.img io_mode=fileio`, 'map-poll', 'SOCK', 25)}
${workloads.map((w) => [sleepsShell(`${w.id}${POLL_SUFFIX}`), loadgenShell(p, o, w, '$SOCK', `${w.id}${POLL_SUFFIX}`), sleepsShell(`${w.id}${POLL_SUFFIX}`)].join('\n')).join('\n')}
${IB} show ibnbd0 --control /tmp/clt.sock --json > ${GUEST_OUT}/show-poll.json 2>&1
${IB} unmap ibnbd0 --control /tmp/clt.sock > /dev/null 2>&1
${STOP_OUR_DAEMONS_SHELL}
# perftest once more after ours: the floor is taken before and after, under the same guest load
${perf('-after')}
step done
exit 0`;
}

function readPerftest(dir: string, name: string): PerftestLine | null {
  const f = join(dir, `${name}.txt`);
  return existsSync(f) ? parsePerftest(readFileSync(f, 'utf8')) ?? null : null;
}

/** Boots the guest, runs everything, prints and saves; the exit code of the bench. */
export async function runRdmaBench(opts: BenchOptions, root: string, outDir: string): Promise<number> {
  const workloads = WORKLOADS.filter((w) => GUEST_WORKLOAD_IDS.includes(w.id) && opts.workloads.includes(w.id));
  if (!workloads.some((w) => w.id === 'randread-4k-qd1')) throw new Error('--rdma: the 4 KiB randread QD1 workload is the point of this run; do not leave it out');
  const share = mkdtempSync('/tmp/ibnbd-bench-rdma-');
  const load0 = loadavg().map((x) => Number(x.toFixed(2)));
  log(`bench --rdma: one soft-RoCE guest (TCG, ${opts.guestCpus ?? 2} vCPUs), ${workloads.map((w) => w.id).join(', ')} at ${opts.runtimeMs} ms each, ` +
    `ib_send_lat/ib_write_lat ${PERFTEST_SIZES.join(' and ')} B × ${PERFTEST_ITERS} before and after; guest limit ${GUEST_TIMEOUT_MS / 1000} s; share ${share}`);
  try {
    const r = await runBenchGuest('bench --rdma', {
      // hostroot: the host's node, perftest, rdma tool and our build, read-only over 9p
      mode: 'hostroot',
      netdev: true,
      modules: RXE_MODULES,
      shares: [{ hostPath: share, tag: 'out', guestPath: GUEST_OUT }],
      cpus: opts.guestCpus ?? 2,
      memMiB: 1536,
      timeoutMs: GUEST_TIMEOUT_MS,
      script: guestScript(opts, root, workloads),
    });
    if (opts.keep) log(`guest output kept in ${share}`);

    const ours = workloads.map((w) => readLoadRun(share, w.id, w));
    const oursPoll = workloads.map((w) => readLoadRun(share, `${w.id}${POLL_SUFFIX}`, w));
    const sleeps = Object.fromEntries(workloads.map((w, i) => [w.id, readSleepsPerIo(share, w.id, ours[i]!)]));
    const sleepsPoll = Object.fromEntries(workloads.map((w, i) => [w.id, readSleepsPerIo(share, `${w.id}${POLL_SUFFIX}`, oursPoll[i]!)]));
    const perf: Record<string, PerftestLine | null> = {};
    for (const p of ['ib_send_lat', 'ib_write_lat']) for (const s of PERFTEST_SIZES) for (const when of ['', '-after']) perf[`${p}-${s}${when}`] = readPerftest(share, `${p}-${s}${when}`);
    for (const when of ['', '-after']) perf[`ib_send_lat-ev-2${when}`] = readPerftest(share, `ib_send_lat-ev-2${when}`);
    let show: Record<string, any> | undefined;
    let map: Record<string, any> | undefined;
    try { show = JSON.parse(readFileSync(join(share, 'show.json'), 'utf8')).device; } catch { show = undefined; }
    let showPoll: Record<string, any> | undefined;
    try { showPoll = JSON.parse(readFileSync(join(share, 'show-poll.json'), 'utf8')).device; } catch { showPoll = undefined; }
    try { map = JSON.parse(readFileSync(join(share, 'map.json'), 'utf8')).device; } catch { map = undefined; }
    let transport: { ok: boolean; meanUs?: number; p50Us?: number; p99Us?: number; iops?: number; bounce?: number; error?: string } | undefined;
    try { transport = JSON.parse(readFileSync(join(share, 'transport-qd1.json'), 'utf8').trim().split('\n').pop()!); } catch { transport = undefined; }

    // the floor of one 4 KiB read: a small request sent one way, 4 KiB RDMA-written back. perftest's
    // *_lat report half of a ping-pong, i.e. one way: send(2 B) + write(4 KiB) is that round trip.
    // Taken before and after ours; the lower of the two (the quieter moment) is the floor.
    const best = (k: string, field: 't_avg' | 't_typical') => {
      const v = [perf[k]?.[field], perf[`${k}-after`]?.[field]].filter((x): x is number => typeof x === 'number');
      return v.length ? Math.min(...v) : null;
    };
    const floor = (sendSize: number, writeSize: number, field: 't_avg' | 't_typical') => {
      const a = best(`ib_send_lat-${sendSize}`, field);
      const b = best(`ib_write_lat-${writeSize}`, field);
      return a === null || b === null ? null : a + b;
    };
    const qd1 = ours.find((o) => o.workload === 'randread-4k-qd1')!;
    const sums = {
      send2_write4k: { avg: floor(2, 4096, 't_avg'), typical: floor(2, 4096, 't_typical') },
      send4k_write4k: { avg: floor(4096, 4096, 't_avg'), typical: floor(4096, 4096, 't_typical') },
      send2_write2: { avg: floor(2, 2, 't_avg'), typical: floor(2, 2, 't_typical') },
      send2_events_write4k: {
        avg: best('ib_send_lat-ev-2', 't_avg') === null || best('ib_write_lat-4096', 't_avg') === null ? null : best('ib_send_lat-ev-2', 't_avg')! + best('ib_write_lat-4096', 't_avg')!,
        typical: best('ib_send_lat-ev-2', 't_typical') === null || best('ib_write_lat-4096', 't_typical') === null ? null : best('ib_send_lat-ev-2', 't_typical')! + best('ib_write_lat-4096', 't_typical')!,
      },
    };
    const ratio = (num: number | undefined, den: number | null) => (qd1.ok && num && den ? num / den : null);
    const check = {
      what: '4 KiB randread QD1 mean ÷ (ib_send_lat 2 B avg + ib_write_lat 4 KiB avg)',
      ratio: ratio(qd1.lat_us.mean, sums.send2_write4k.avg),
      ratio_p50_over_typical: ratio(qd1.lat_us.p50, sums.send2_write4k.typical),
      ratio_all_4k: ratio(qd1.lat_us.mean, sums.send4k_write4k.avg),
      ratio_all_2b: ratio(qd1.lat_us.mean, sums.send2_write2.avg),
      bound: '≤ 3',
      met: null as boolean | null,
    };
    check.met = check.ratio === null ? null : check.ratio <= 3;
    const qd1Poll = oursPoll.find((o) => o.workload === 'randread-4k-qd1')!;
    const pollRatio = qd1Poll.ok && sums.send2_write4k.avg ? qd1Poll.lat_us.mean / sums.send2_write4k.avg : null;
    const checkPoll = {
      what: `4 KiB randread QD1 mean with --poll-us ${POLL_US} ÷ (ib_send_lat 2 B avg + ib_write_lat 4 KiB avg)`,
      ratio: pollRatio,
      bound: '≤ 2',
      met: pollRatio === null ? null : pollRatio <= 2,
      polled_over_interrupt: pollRatio !== null && check.ratio !== null ? pollRatio / check.ratio : null,
      client_io_threads: showPoll?.io_threads ?? null,
    };

    const out: string[] = [];
    out.push(`ibnbd-vhost bench --rdma ${new Date().toISOString()} — one QEMU/TCG guest (${opts.guestCpus ?? 2} vCPUs, 1536 MiB, Debian 6.1 kernel), rdma_rxe on eth0 10.0.2.15`);
    out.push(`ours: ibnbd server + client in the guest, map transport ${map?.transport ?? '?'} io_mode=fileio, ${FILE_MIB} MiB file on the guest's tmpfs; ` +
      `ibnbd-blkio-bench on the vhost-user socket, ${opts.runtimeMs} ms per run (+${opts.rampMs} ms ramp); bounce_count ${show?.bounce_count ?? '?'}`);
    out.push(`perftest: -R -F -d rxe0 -n ${PERFTEST_ITERS}, server and client in the guest; one-way latency (half a ping-pong), µs; taken before and after ours`);
    out.push(`host load average at start ${load0.join(' ')}, end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
    out.push('');
    // sleeps: how often the daemons' threads went to sleep per request (sleepsShell)
    out.push('| ours | IOPS | MB/s | mean µs | p50 µs | p99 µs | sleeps per IO: server + client |');
    out.push('|---|---|---|---|---|---|---|');
    for (const [runs, how, sl] of [[ours, '', sleeps], [oursPoll, `, --poll-us ${POLL_US}`, sleepsPoll]] as const) {
      for (const o of runs) {
        const z = sl[o.workload];
        const zs = z ? `${f2(z.server)} + ${f2(z.client)} = ${f2(z.total)}` : '—';
        out.push(o.ok
          ? `| ${o.label}${how} | ${o.iops.toFixed(0)} | ${o.mbps.toFixed(1)} | ${f1(o.lat_us.mean)} | ${f1(o.lat_us.p50)} | ${f1(o.lat_us.p99)} | ${zs} |`
          : `| ${o.label}${how} | FAILED: ${o.error} | | | | | |`);
      }
    }
    const polls = showPoll?.io_threads;
    if (polls) out.push(`client daemon's polls with --poll-us ${POLL_US}: ${polls.polls} polls, ${polls.poll_hits} found work`);
    out.push('');
    out.push('| perftest | bytes | typical µs (before / after) | avg µs (before / after) |');
    out.push('|---|---|---|---|');
    for (const p of ['ib_send_lat', 'ib_write_lat']) {
      for (const s of PERFTEST_SIZES) {
        const b = perf[`${p}-${s}`];
        const a = perf[`${p}-${s}-after`];
        out.push(`| ${p} | ${s} | ${f1(b?.t_typical)} / ${f1(a?.t_typical)} | ${f1(b?.t_avg)} / ${f1(a?.t_avg)} |`);
      }
    }
    const ev = perf['ib_send_lat-ev-2'];
    const eva = perf['ib_send_lat-ev-2-after'];
    out.push(`| ib_send_lat -e (CQ events, not polling) | 2 | ${f1(ev?.t_typical)} / ${f1(eva?.t_typical)} | ${f1(ev?.t_avg)} / ${f1(eva?.t_avg)} |`);
    out.push('');
    out.push('| 4 KiB read round trip | ours | floor: ib_send_lat + ib_write_lat (lower of before/after) | ours ÷ floor |');
    out.push('|---|---|---|---|');
    out.push(`| mean vs avg, send 2 B + write 4 KiB | ${f1(qd1.lat_us.mean)} | ${f1(sums.send2_write4k.avg)} | ${f2(check.ratio)}× |`);
    out.push(`| the same with --poll-us ${POLL_US} | ${f1(qd1Poll.ok ? qd1Poll.lat_us.mean : null)} | ${f1(sums.send2_write4k.avg)} | ${f2(checkPoll.ratio)}× |`);
    out.push(`| p50 vs typical, send 2 B + write 4 KiB | ${f1(qd1.lat_us.p50)} | ${f1(sums.send2_write4k.typical)} | ${f2(check.ratio_p50_over_typical)}× |`);
    out.push(`| mean vs avg, send 4 KiB + write 4 KiB | ${f1(qd1.lat_us.mean)} | ${f1(sums.send4k_write4k.avg)} | ${f2(check.ratio_all_4k)}× |`);
    out.push(`| mean vs avg, send 2 B + write 2 B | ${f1(qd1.lat_us.mean)} | ${f1(sums.send2_write2.avg)} | ${f2(check.ratio_all_2b)}× |`);
    out.push(`| mean vs avg, send 2 B with CQ events (-e) + write 4 KiB | ${f1(qd1.lat_us.mean)} | ${f1(sums.send2_events_write4k.avg)} | ${f2(ratio(qd1.lat_us.mean, sums.send2_events_write4k.avg))}× |`);
    if (transport?.ok) {
      out.push(`| our RTRS transport alone (native QD1 loop, no vhost-user): mean vs avg | ${f1(transport.meanUs)} | ${f1(sums.send2_write4k.avg)} | ${f2(ratio(transport.meanUs, sums.send2_write4k.avg))}× |`);
      out.push(`| our RTRS transport alone: p50 vs typical | ${f1(transport.p50Us)} | ${f1(sums.send2_write4k.typical)} | ${f2(ratio(transport.p50Us, sums.send2_write4k.typical))}× |`);
    } else {
      out.push(`| our RTRS transport alone | not measured: ${transport?.error ?? 'no result'} | | |`);
    }
    out.push('');
    const qd32 = ours.find((o) => o.workload === 'randread-4k-qd32');
    out.push(`Target: ${check.what} ${check.bound}: ${f2(check.ratio)}× — ${check.met === null ? 'not measured' : check.met ? 'met' : 'missed'}` +
      (qd32?.ok ? `; 4 KiB randread QD32 ${qd32.iops.toFixed(0)} IOPS` : ''));
    out.push(`Target: ${checkPoll.what} ${checkPoll.bound}: ${f2(checkPoll.ratio)}× — ${checkPoll.met === null ? 'not measured' : checkPoll.met ? 'met' : 'missed'}` +
      `; polled ÷ interrupt-driven mean ${f2(checkPoll.polled_over_interrupt)}×`);
    const text = out.join('\n') + '\n';
    process.stdout.write(text);

    mkdirSync(outDir, { recursive: true });
    const json = {
      when: new Date().toISOString(), kind: 'rdma-guest', options: opts,
      machine: { loadavg_start: load0, loadavg_end: loadavg().map((x) => Number(x.toFixed(2))), guest: { cpus: opts.guestCpus ?? 2, memMiB: 1536, accel: 'tcg', rdma: 'rdma_rxe on eth0' } },
      guest: { exitCode: r.exitCode, timedOut: r.timedOut, durationMs: r.durationMs, bootMs: r.bootMs, steps: r.output.split('\n').filter((l) => l.startsWith('STEP')) },
      ours, ours_poll: oursPoll, poll_us: POLL_US, sleeps_per_io: sleeps, sleeps_per_io_poll: sleepsPoll,
      device: show ? { transport: show.transport, bounce_count: show.bounce_count, requests: show.stats?.requests } : null,
      transport_qd1: transport ?? null, perftest: perf, floor_us: sums, check, check_poll: checkPoll,
    };
    writeFileSync(join(outDir, 'bench.json'), JSON.stringify(json, null, 2) + '\n');
    writeFileSync(join(outDir, 'table.txt'), text);
    log(`results: ${join(outDir, 'bench.json')}, ${join(outDir, 'table.txt')}`);
    if (r.exitCode !== 0) log(`guest output tail:\n${r.output.slice(-3000)}`);
    return r.exitCode === 0 && ours.every((o) => o.ok) && oursPoll.every((o) => o.ok) && check.ratio !== null ? 0 : 1;
  } finally {
    if (!opts.keep) rmSync(share, { recursive: true, force: true });
  }
}
