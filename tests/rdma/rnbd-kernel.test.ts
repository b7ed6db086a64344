// The Linux kernel's own RNBD over RTRS/soft-RoCE, client and server in one guest: the baseline the
// interop tests compare against. Proves the peer set-up builds works (map, byte-exact IO on both
// sides, the server's session tree, the one-writer rule, unmap) and prints the all-kernel 4 KiB QD1
// read IOPS figure.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runGuest } from '../../harness/qemu/harness.js';
import { kernelRnbdGuestOptions, kernelRnbdPrelude } from '../../harness/qemu/rnbd-kernel.js';

const PATTERN_BYTES = 1 << 20;
const PATTERN_OFFSET_BLOCKS = 48; // of 64 KiB: 3 MiB into the 16 MiB ram0, so offsets are checked too
const IOPS_READS = 2000;
const LOOP_FILE_BYTES = 4 << 20;

function field(output: string, key: string): string | undefined {
  const m = output.match(new RegExp(`^${key}=(.*)$`, 'm'));
  return m?.[1];
}

test('kernel rnbd_client maps from kernel rnbd_server over rxe: IO, server tree, one writer, ro file export, unmap', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-rnbdk-'));
  try {
    const pattern = randomBytes(PATTERN_BYTES);
    writeFileSync(join(dir, 'pattern.bin'), pattern);
    // a file-backed export as the interop tests use: a loop device on a file
    const loopFile = randomBytes(LOOP_FILE_BYTES);
    writeFileSync(join(dir, 'disk.img'), loopFile);
    const r = await runGuest({
      ...kernelRnbdGuestOptions({ shares: [{ hostPath: dir, tag: 'work' }] }),
      timeoutMs: 110_000, // under ava's 2 min, so the harness reports the console tail first
      script: `${kernelRnbdPrelude({ sessQueueDepth: 64, devSearchPath: '/dev' })}
        T=${dir}
        rxe_up || exit 10
        rnbd_server_load || exit 11
        rnbd_client_load || exit 12
        t0=$(date +%s%N)
        dev=$(rnbd_map s1 ram0 rw) || exit 13
        t1=$(date +%s%N)
        echo "dev=$dev"
        echo "map_ms=$(( (t1 - t0) / 1000000 ))"
        echo "sectors=$(cat /sys/block/\${dev##*/}/size) server_sectors=$(cat /sys/block/ram0/size)"
        dd if=$T/pattern.bin of=$dev bs=64k seek=${PATTERN_OFFSET_BLOCKS} oflag=direct status=none || exit 14
        dd if=$dev of=$T/via-rnbd.bin bs=64k skip=${PATTERN_OFFSET_BLOCKS} count=${PATTERN_BYTES >> 16} iflag=direct status=none || exit 15
        dd if=/dev/ram0 of=$T/on-server.bin bs=64k skip=${PATTERN_OFFSET_BLOCKS} count=${PATTERN_BYTES >> 16} iflag=direct status=none || exit 16
        s=$(rnbd_srv_sess ram0 s1)
        echo "srv_read_only=$(cat $s/read_only)"
        echo "srv_mapping_path=$(cat $s/mapping_path)"
        if dev2=$(rnbd_map s2 ram0 rw 2>$T/map2.err); then
          echo "map2=ok $dev2"
        else
          echo "map2=failed $(cat $T/map2.err)"
        fi
        # a copy in the guest's tmpfs: a loop device on the 9p file itself, read through the kernel
        # server, corrupts memory when the session closes (see harness/qemu/README-rnbd.md)
        cp $T/disk.img /tmp/disk.img && lo=$(rnbd_loop /tmp/disk.img) || exit 20
        dev3=$(rnbd_map s3 \${lo#/dev/} ro) || exit 21
        echo "dev3=$dev3"
        echo "srv3_read_only=$(cat $(rnbd_srv_sess \${lo#/dev/} s3)/read_only)"
        dd if=$dev3 of=$T/loop-via-rnbd.bin bs=64k skip=1 count=16 iflag=direct status=none || exit 22
        rnbd_unmap $dev3 normal || exit 23
        t0=$(date +%s%N)
        dd if=$dev of=/dev/null bs=4k count=${IOPS_READS} iflag=direct status=none || exit 17
        t1=$(date +%s%N)
        echo "qd1_read_ns=$((t1 - t0))"
        rnbd_unmap $dev normal || exit 18
        [ -e $dev ] && echo "unmapped=no" || echo "unmapped=yes"
        rnbd_srv_wait_gone ram0 s1 && echo "srv_gone=yes" || echo "srv_gone=no"
      `,
    });
    t.log(`boot ${r.bootMs} ms, whole run ${r.durationMs} ms`);
    const out = r.output;
    t.is(r.exitCode, 0, out);
    t.is(field(out, 'dev'), '/dev/rnbd0', out);
    t.regex(out, /^sectors=32768 server_sectors=32768$/m);
    t.true(readFileSync(join(dir, 'via-rnbd.bin')).equals(pattern), 'read back through /dev/rnbd0 differs');
    t.true(readFileSync(join(dir, 'on-server.bin')).equals(pattern), "the server's /dev/ram0 differs");
    t.is(field(out, 'srv_read_only'), '0');
    t.is(field(out, 'srv_mapping_path'), 'ram0');
    t.regex(field(out, 'map2') ?? '', /^failed .*Operation not permitted/, out);
    t.is(field(out, 'dev3'), '/dev/rnbd1', out);
    t.is(field(out, 'srv3_read_only'), '1');
    t.true(readFileSync(join(dir, 'loop-via-rnbd.bin')).equals(loopFile.subarray(64 << 10, (64 + 1024) << 10)), 'loop-backed export differs');
    t.is(field(out, 'unmapped'), 'yes');
    t.is(field(out, 'srv_gone'), 'yes');
    t.log(`second rw map: ${field(out, 'map2')}`);
    // the refusal is the server's (its one-writer rule), not the client's duplicate-mapping check
    t.regex(r.serial, /rnbd_server .*Mapping device 'ram0' for session s2 with RW permissions failed/);
    const ns = Number(field(out, 'qd1_read_ns'));
    t.log(`first map ${field(out, 'map_ms')} ms; 4 KiB O_DIRECT read QD1 (dd, ${IOPS_READS} reads): ` +
      `${Math.round(IOPS_READS / (ns / 1e9))} IOPS, ${Math.round(ns / IOPS_READS / 1000)} µs each (all-kernel pair, rxe loopback, TCG)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
