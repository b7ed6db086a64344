// The all-kernel RNBD pair's figures for the comparison tables: kernel rnbd_client ↔ kernel
// rnbd_server over rxe loopback in one guest, 4 KiB random O_DIRECT IO at QD1 and QD32 through
// /dev/rnbd0, and the same on the server's /dev/ram0 directly (the in-guest ceiling). Not a test
// (the test suite keeps only the QD1 read figure, tests/rdma/rnbd-kernel.test.ts); run as
//   npx tsc -p . && node dist/bench/tools/kernel-pair-bench.js     [CPUS=2] [MS=2000]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runGuest } from '../../harness/qemu/harness.js';
import { kernelRnbdGuestOptions, kernelRnbdPrelude } from '../../harness/qemu/rnbd-kernel.js';

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, '..', '..', '..', 'bench', 'tools', 'uring-blk-bench.c');
const cpus = Number(process.env.CPUS ?? 1);
const ms = Number(process.env.MS ?? 2000);
const WORKLOADS = ['randread 4096 1', 'randread 4096 32', 'randwrite 4096 1', 'randwrite 4096 32'];

const dir = mkdtempSync(join(tmpdir(), 'ibnbd-kpbench-'));
try {
  const bench = join(dir, 'uring-blk-bench');
  execFileSync('gcc', ['-O2', '-D_GNU_SOURCE', '-Wall', '-Wextra', '-Werror', '-o', bench, source, '-luring']);
  const runs = WORKLOADS.flatMap((w) => [
    `echo "rnbd0 $($B /dev/rnbd0 ${w} ${ms})"`,
    `echo "ram0  $($B /dev/ram0 ${w} ${ms})"`,
  ]).join('\n');
  const r = await runGuest({
    ...kernelRnbdGuestOptions({ shares: [{ hostPath: dir, tag: 'work' }] }),
    cpus,
    timeoutMs: 110_000,
    script: `${kernelRnbdPrelude({ sessQueueDepth: 64 })}
      B=${bench}
      rxe_up && rnbd_server_load && rnbd_client_load || exit 10
      dev=$(rnbd_map s1 ram0 rw) || exit 11
      # fill ram0 once so reads hit allocated pages on both paths
      dd if=/dev/zero of=/dev/ram0 bs=1M count=16 oflag=direct status=none
      ${runs}
      rnbd_unmap $dev normal
    `,
  });
  process.stdout.write(`vCPUs ${cpus}, ${ms} ms per run, sess_queue_depth 64\n${r.output}guest exit ${r.exitCode}, ${r.durationMs} ms\n`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
