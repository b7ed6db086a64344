// `npm run bench -- --interop`: the Linux kernel's RNBD and ours side by side, in one soft-RoCE
// guest (TCG, hostroot mode, rxe0 on eth0 = 10.0.2.15). The kernel's rnbd_server (port 1234) and
// our `ibnbd server` (port 4321) export the same loop device (a file on the guest's tmpfs); the
// kernel's rnbd_client maps it from each (/dev/rnbdN) and so does our client daemon (a
// vhost-user-blk socket each); qemu-storage-daemon exports the kernel client's device from the
// kernel server as a vhost-user-blk socket too (the stack a user would build instead of our
// client). Six stacks (bench/interop-stacks.ts; ours→ours twice, the second with both daemons
// polling), three read workloads, interleaved rounds, one
// load generator for all of them (ibnbd-blkio-bench: libblkio's io_uring driver with O_DIRECT on
// /dev/rnbdN, its virtio-blk-vhost-user driver on the sockets), and fio on /dev/rnbdN as a
// cross-check of the load generator. Figures are reported as ratios to the all-kernel pair and to
// the kernel client + qsd, never asserted (bench/interop-report.ts). See docs/performance.md
// ("Kernel RNBD side by side").
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { BenchOptions } from './options.js';
import { GUEST_WORKLOAD_IDS, WORKLOADS, type Workload } from './workloads.js';
import {
  GUEST_OUT, guestPaths, ibnbdCmd, loadgenShell, ourMapShell, runBenchGuest, startOurDaemonsShell,
  ourClientControl, STEP_SHELL, STOP_OUR_DAEMONS_SHELL, stopOurDaemonsShell, type GuestPaths,
} from './guest-bench.js';
import { QSD_BLOCKDEV_OPTIONS, startQsdShell, STOP_QSD_SHELL } from './interop-qsd.js';
import { interopFigures, interopTables } from './interop-report.js';
import { readSamples, runName } from './interop-results.js';
import { FIO_PAIRS, INTEROP_POLL_US, PAIRS } from './interop-stacks.js';
import { GUEST_IP, kernelRnbdGuestOptions, kernelRnbdPrelude } from '../harness/qemu/rnbd-kernel.js';

const log = (s: string) => process.stderr.write(s + '\n');

const OUR_PORT = 4321; // the kernel server has 1234
const OUR_POLLED_PORT = 4322; // the second set of our daemons (stack op)
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
        const run = loadgenShell(p, o, w, pair.target, name, pair.via === 'block' ? '--driver io_uring ' : '');
        runs.push(pair.kernelDev ? withDeviceStat(pair.kernelDev, name, run) : run);
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
# read-only everywhere: four opens of one device (and qsd's of $KK), and the workloads only read
KK=$(rnbd_map kk $DEV ro) || exit 26
RNBD_PORT=${OUR_PORT}
KO=$(rnbd_map ko $DEV ro) || exit 27
RNBD_PORT=1234
step "kernel client: $KK from the kernel server, $KO from ours"
# the alternative to our client: qsd exports the kernel client's K→K device as a vhost-user socket
${startQsdShell('$KK', '/tmp/kq.sock', 'KQ', 30)}
${ourMapShell(p, `sessname=ok path=ip:${GUEST_IP} device_path=$DEV access_mode=ro`, 'map-ok', 'OK', 28)}
# io_mode=fileio: the kernel client's OPEN carries no io_mode (its byte is reserved, 0 = fileio
# in IBNBD's encoding), so our server serves K→ours in fileio; ours→ours asks for the same, and
# both rows of our server run the same server path
${ourMapShell(p, `sessname=oo path=ip:${GUEST_IP}:${OUR_PORT} device_path=$DEV access_mode=ro io_mode=fileio`, 'map-oo', 'OO', 29)}
# ours→ours again through a second pair of our daemons that poll (idle while the others run: a
# thread polls only for a window after its own work). A server opens its block devices
# exclusively, so the second one exports a second loop device over the same backing file.
LOOP2=$(rnbd_loop /tmp/backing.img) || exit 25
${startOurDaemonsShell(p, `${GUEST_IP}:${OUR_POLLED_PORT}`, '/dev', `--queue-depth ${SESSION_QUEUE_DEPTH} --poll-us ${INTEROP_POLL_US} `, `--poll-us ${INTEROP_POLL_US} `, '2')}
${ourMapShell(p, `sessname=op path=ip:${GUEST_IP}:${OUR_POLLED_PORT} device_path=\${LOOP2##*/} access_mode=ro io_mode=fileio`, 'map-op', 'OP', 31, '2')}
for d in $KK $KO; do echo "$d max_hw_sectors_kb=$(cat ${kdev('d')}/queue/max_hw_sectors_kb) max_sectors_kb=$(cat ${kdev('d')}/queue/max_sectors_kb) nr_requests=$(cat ${kdev('d')}/queue/nr_requests) nomerges=$(cat ${kdev('d')}/queue/nomerges) scheduler=$(cat ${kdev('d')}/queue/scheduler)"; done > ${GUEST_OUT}/kdev.txt
fio --version > ${GUEST_OUT}/fio-version.txt 2>&1
${runs.join('\n')}
${IB} list --control /tmp/clt.sock --json > ${GUEST_OUT}/list.json 2>&1
${IB} list --control ${ourClientControl('2')} --json > ${GUEST_OUT}/list-polled.json 2>&1
${IB} server sessions --control /tmp/srv.sock --json > ${GUEST_OUT}/server-sessions.json 2>&1
step measured
${STOP_QSD_SHELL}
rnbd_unmap $KK; rnbd_unmap $KO
# our client daemon closes its sessions as it ends (no CLI round trips: node under TCG starts slowly)
${STOP_OUR_DAEMONS_SHELL}
${stopOurDaemonsShell('2')}
losetup -d $LOOP $LOOP2
step done
exit 0`;
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
    `${PAIRS.length} stacks + fio on ${FIO_PAIRS.length}, ${opts.runtimeMs} ms each (+${opts.rampMs} ms ramp); guest limit ${timeoutMs / 1000} s; share ${share}`);
  try {
    const r = await runBenchGuest('bench --interop', {
      ...kernelRnbdGuestOptions({ shares: [{ hostPath: share, tag: 'out', guestPath: GUEST_OUT }] }),
      cpus,
      memMiB: GUEST_MEM_MIB,
      timeoutMs,
      script: guestScript(opts, guestPaths(root), workloads),
    });
    if (opts.keep) log(`guest output kept in ${share}`);

    const samples = readSamples(share, opts.rounds, workloads);
    const figures = interopFigures(samples, workloads);
    const readJson = (f: string): unknown => { try { return JSON.parse(readFileSync(join(share, f), 'utf8')); } catch { return null; } };
    const ours = readJson('list.json');
    const oursPolled = readJson('list-polled.json');
    const ourServerSessions = readJson('server-sessions.json');
    const readText = (f: string) => (existsSync(join(share, f)) ? readFileSync(join(share, f), 'utf8').trim() : '');
    const kdev = readText('kdev.txt');

    const out: string[] = [];
    out.push(`ibnbd-vhost bench --interop ${new Date().toISOString()} — one QEMU/TCG guest (${cpus} vCPU(s), ${GUEST_MEM_MIB} MiB, Debian 6.1 kernel), rdma_rxe on eth0 ${GUEST_IP}`);
    out.push(`backing: a loop device over a ${BACKING_MIB} MiB file on the guest's tmpfs, exported read-only by the kernel's rnbd_server (:1234) and our ibnbd server (:${OUR_PORT}), ` +
      `session queue depth ${SESSION_QUEUE_DEPTH} on both`);
    out.push(`K+qsd: ${readText('qsd-version.txt') || 'qemu-storage-daemon ?'} exporting the K→K /dev/rnbdN read-only as vhost-user-blk ` +
      `(host_device, ${QSD_BLOCKDEV_OPTIONS}, num-queues=1, main loop)`);
    out.push(`load: ibnbd-blkio-bench for all ${PAIRS.length} stacks (--driver io_uring, O_DIRECT, on /dev/rnbdN; virtio-blk-vhost-user on the sockets), one queue, seed ${opts.seed}, ` +
      `${opts.runtimeMs} ms per run (+${opts.rampMs} ms ramp), ${opts.rounds} interleaved round(s), medians; fio (${readText('fio-version.txt') || '?'}, io_uring, direct=1) on /dev/rnbdN as a cross-check`);
    out.push(`host load average at start ${load0.join(' ')}, end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
    out.push('');
    out.push(...interopTables(figures, samples, workloads));
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
      pairs: PAIRS, workloads, medians: figures.cells, ratios: figures.ratios, ratios_over_kernel_pair: figures.overKernelPair, fio_medians: figures.fioCells,
      qsd: { version: readText('qsd-version.txt'), blockdev: `driver=host_device,read-only=on,${QSD_BLOCKDEV_OPTIONS}`, export: 'vhost-user-blk, num-queues=1, writable=off' },
      kernel_client_queues: kdev, our_devices: ours, our_devices_polled: oursPolled, our_server_sessions: ourServerSessions, samples,
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
