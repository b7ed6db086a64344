// One guest that shows the kernel RTRS peer's rdma_cm private data to a userspace program
// (rtrs-cm-probe.c): the conn_req a kernel rtrs-client sends, and the conn_rsp / reject a kernel
// rtrs-server answers with. Findings: docs/rnbd-kernel-peer.md. Not a test: a diagnostic, run as
//   npx tsc -p . && node dist/harness/tools/capture-rtrs-cm.js
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runGuest } from '../qemu/harness.js';
import { kernelRnbdGuestOptions, kernelRnbdPrelude } from '../qemu/rnbd-kernel.js';

const here = dirname(fileURLToPath(import.meta.url));
// dist/tests/qemu/tools -> harness/qemu/tools
const source = join(here, '..', '..', '..', 'harness', 'tools', 'rtrs-cm-probe.c');

const dir = mkdtempSync(join(tmpdir(), 'ibnbd-rtrscm-'));
try {
  const probe = join(dir, 'rtrs-cm-probe');
  execFileSync('gcc', ['-O1', '-Wall', '-Wextra', '-Werror', '-D_GNU_SOURCE', '-o', probe, source, '-lrdmacm', '-libverbs']);
  const cpus = Number(process.env.CPUS ?? 1);
  const r = await runGuest({
    ...kernelRnbdGuestOptions({ shares: [{ hostPath: dir, tag: 'work' }] }),
    cpus,
    timeoutMs: 110_000,
    script: `${kernelRnbdPrelude({ sessQueueDepth: 64 })}
      P=${probe}
      # into the share, not the console: a long console output can still be in the tty buffer when
      # /init powers the guest off
      exec > ${dir}/out.txt 2>&1
      rxe_up || exit 10
      rnbd_client_load || exit 11
      echo "== kernel rtrs-client -> userspace listener (no kernel server loaded yet)"
      $P listen 1234 8 > /tmp/listen.txt 2>&1 &
      i=0; until grep -q listening /tmp/listen.txt || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
      # blocks until the info exchange the probe never answers fails; runs on in the background
      (/bin/echo "sessname=k1 path=ip:$RNBD_SERVER_IP device_path=ram0" > /sys/class/rnbd-client/ctl/map_device) 2>/dev/null &
      wait %1
      cat /tmp/listen.txt
      rnbd_server_load || exit 12
      echo "== userspace conn_req -> kernel rtrs-server"
      $P connect $RNBD_SERVER_IP 1234 0x1BBD 1
      echo "== wrong magic"
      $P connect $RNBD_SERVER_IP 1234 0x1BBC 1
      echo "== cid_num 5000 (> 4096)"
      $P connect $RNBD_SERVER_IP 1234 0x1BBD 5000
      dmesg | grep -i -E 'rtrs|rnbd' | tail -30
      echo "== done"
    `,
  });
  process.stdout.write(readFileSync(join(dir, 'out.txt'), 'utf8'));
  process.stdout.write(`guest exit ${r.exitCode}, ${r.durationMs} ms\n`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
