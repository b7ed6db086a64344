// RDMA through the daemons (docs/rdma-transport.md, "Through the daemons").
// - On this host (no RDMA device): the client daemon's default transport is tcp, transport=rdma is
//   ENODEV with the reason, and `ibnbd server` serves TCP only.
// - In one soft-RoCE guest (hostroot, rxe on eth0), everything as a user runs it: `ibnbd server`
//   and `ibnbd client` child processes, the `ibnbd` CLI, libblkio (ibnbd-blkio) on the vhost-user
//   socket:
//   A. our client ↔ our server over RDMA (the default in the guest), IO verified at QD1/QD32,
//      4 KiB … 1 MiB, bytes in the server's file, `ibnbd show` bounce count 0 (zero copy);
//   B. our client daemon ↔ the kernel's rnbd_server (a 48 MiB loop device on a guest tmpfs file):
//      verified IO at QD1/QD32 up to 1 MiB, a sequential pattern read back from the kernel server's
//      device, its sysfs tree shows our session, our unmap removes it;
//   C. the kernel's rnbd_client ↔ our server daemon: /dev/rnbdN, O_DIRECT bytes in our file,
//      a second rw map EPERM, migration allowed, a ro map next to the rw holder (reads our bytes,
//      writes EPERM, read-only in `ibnbd server sessions`), unmap normal and force;
//   D. our client daemon and the kernel client on one device of our server: IO from both at once,
//      the server's open/writer counts drop as each leaves (kernel unmap, our unmap, our client
//      daemon SIGKILLed), and the rw slot passes from one kind of client to the other;
//   E. our client daemon SIGKILLed with a libblkio writer's requests in flight and started again
//      with its state dir: the mapping is restored, the writer redials (--reconnect-ms, as QEMU
//      with reconnect=1) and finishes with 0 errors, every byte read back;
//   F–H. the fault scenarios of tests/daemons/fault-*.test.ts over RDMA (faultScenarios below):
//      a server frozen 40 s under a verifying writer, a write held on a path io_timeout declares
//      dead (the newer write stays), unmap --force at a frozen server under QD32;
//   I. a server with --auth-keys over RDMA: our client with the session's secret maps and passes
//      verified IO, and goes on while a squatter without the secret tries its name; a wrong
//      secret, none, a replayed proof, or a server without keys: EACCES; the kernel client only
//      under a name the file marks rdma-unauthenticated;
//   J. a path that connects and then never sends its info request: the server closes it after
//      --handshake-timeout-ms (its chunks freed), the client's map fails.
import test from 'ava';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostHasRdma } from '../../src/backend/transport.js';
import { cliPath, ibnbd, ibnbdJson, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { runGuest } from '../../harness/qemu/harness.js';
import { kernelRnbdGuestOptions, kernelRnbdPrelude, type KernelRnbdGuestInput } from '../../harness/qemu/rnbd-kernel.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { expectedPattern, MiB, tool } from '../support/vhost-helpers.js';
import { guestSanitizerEnv } from '../../harness/qemu/sanitizer-env.js';

const sanitizerEnv = guestSanitizerEnv();

test('host without RDMA: map defaults to tcp, transport=rdma is ENODEV with the reason, the server serves TCP', async (t) => {
  t.timeout(60_000);
  if (hostHasRdma()) {
    t.pass('this host has an RDMA device: the guest test covers the RDMA side');
    return;
  }
  const dir = tempDir(t, 'rdmad');
  const exportsDir = join(dir, 'exports');
  mkdirSync(exportsDir);
  sparseFile(join(exportsDir, 'd.img'), 16 * MiB);
  const server = await startServerDaemon(t, dir, exportsDir);
  const client = await startClientDaemon(t, dir);
  t.regex(server.log(), new RegExp(`listening on 127\\.0\\.0\\.1:${server.port};`), 'TCP only: no rdma: endpoint');
  const rdma = await ibnbd(['map', `sessname=r path=ip:127.0.0.1:${server.port} device_path=d.img transport=rdma`, '--control', client.control]);
  t.not(rdma.code, 0);
  t.regex(rdma.stderr, /ENODEV/);
  t.regex(rdma.stderr, /no RDMA device on this host/);
  const { device } = await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=r path=ip:127.0.0.1:${server.port} device_path=d.img`, '--control', client.control]);
  t.is(device.transport, 'tcp', 'no transport= and no RDMA device: tcp');
  const shown = await ibnbdJson<{ device: Record<string, any> }>(['show', device.name, '--control', client.control]);
  t.is(shown.device.bounce_count, 0, 'TCP never bounces');
  t.is((await ibnbd(['unmap', device.name, '--control', client.control])).code, 0);
});

const PORT = 4321; // our server in the guest; the kernel's rnbd_server has 1234

function guestScript(node: string): string {
  const IB = `timeout 120 ${node} ${cliPath}`;
  const BLK = `timeout 120 ${tool('ibnbd-blkio')} --timeout-ms 60000`;
  // ibnbd-blkio places random requests in disjoint max-size slots: span ≥ count × max-size
  const verify = (sock: string, seed: number, v: { offset: number; count1: number; count32: number; max32: number; span: number }) => `
${BLK} --path ${sock} --qd 1 --count ${v.count1} --seed ${seed} --min-size 4096 --max-size ${MiB} --offset ${v.offset} --span ${v.span} verify > /tmp/v1.json; echo "VERIFY_QD1 $? $(tr -d '\n' < /tmp/v1.json)"
${BLK} --path ${sock} --qd 32 --count ${v.count32} --seed ${seed + 1} --min-size 4096 --max-size ${v.max32} --offset ${v.offset} --span ${v.span} verify > /tmp/v32.json; echo "VERIFY_QD32 $? $(tr -d '\n' < /tmp/v32.json)"`;
  return `${kernelRnbdPrelude({ sessQueueDepth: 64, devSearchPath: '/dev' })}
set -u
T0=$(date +%s)
step() { echo "STEP $(( $(date +%s) - T0 ))s $*"; }
rxe_up || exit 20
rnbd_server_load || exit 21
rnbd_client_load || exit 22
mkdir -p /tmp/exp /tmp/run /tmp/run2 && truncate -s 128M /tmp/exp/disk.img
${node} ${cliPath} server --listen 10.0.2.15:${PORT} --dev-search-path /tmp/exp --control /tmp/srv.sock --queue-depth 64 2> /tmp/srv.log &
SRV=$!
${node} ${cliPath} client --control /tmp/clt.sock --run-dir /tmp/run --state-dir /tmp/clt-state 2> /tmp/clt.log &
CLT=$!
# a second client daemon, SIGKILLed in D: its session must die on the server without an unmap
${node} ${cliPath} client --control /tmp/clt2.sock --run-dir /tmp/run2 --state-dir /tmp/clt2-state --heartbeat-ms 500 --heartbeat-missed-max 4 2> /tmp/clt2.log &
CLT2=$!
# ready = the server logged its listening line (its control socket file exists a moment before)
i=0; while [ ! -S /tmp/srv.sock ] || [ ! -S /tmp/clt.sock ] || [ ! -S /tmp/clt2.sock ] || ! grep -q 'listening on' /tmp/srv.log; do i=$((i+1)); [ $i -gt 900 ] && { cat /tmp/srv.log /tmp/clt.log /tmp/clt2.log; exit 23; }; sleep 0.1; done
devs() { ${IB} server devices --control /tmp/srv.sock --json | tr -d '\n'; }
step daemons up
echo "SRVLOG $(grep -o 'listening on [^;]*' /tmp/srv.log)"

echo "== A: our client <-> our server over RDMA"
${IB} map "sessname=rd1 path=ip:10.0.2.15:${PORT} device_path=disk.img" --control /tmp/clt.sock --json > /tmp/m.json; echo "MAP_A $? $(tr -d '\\n' < /tmp/m.json)"
step mapped
${verify('/tmp/run/vhost/ibnbd0.sock', 11, { offset: 0, count1: 24, count32: 64, max32: MiB, span: 64 * MiB })}
${BLK} --path /tmp/run/vhost/ibnbd0.sock --qd 8 --count 4 --seed 5 --sequential --min-size ${MiB} --max-size ${MiB} --offset ${100 * MiB} write > /dev/null; echo "WRITE_A $?"
${BLK} --path /tmp/run/vhost/ibnbd0.sock flush > /dev/null; echo "FLUSH_A $?"
step io done
echo "SHOW_A $(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n')"
echo "SESS_A $(${IB} server sessions --control /tmp/srv.sock --json | tr -d '\\n')"
${IB} unmap ibnbd0 --control /tmp/clt.sock; echo "UNMAP_A $?"
dd if=/tmp/exp/disk.img of=/tmp/out/region.bin bs=1M skip=100 count=4 status=none; echo "COPY_A $?"
echo "NOSRV $(${IB} map "sessname=rd2 path=ip:10.0.2.15:4999 device_path=disk.img transport=rdma" --control /tmp/clt.sock 2>&1 | tr -d '\\n')"
step A done

echo "== B: our client daemon <-> kernel rnbd_server (a 48 MiB loop device on a guest tmpfs file)"
truncate -s 48M /tmp/kexp.img && KLOOP=$(rnbd_loop /tmp/kexp.img) || exit 24
KDEV=\${KLOOP#/dev/}
${IB} map "sessname=kd1 path=ip:10.0.2.15 device_path=$KDEV" --control /tmp/clt.sock --json > /tmp/m.json; echo "MAP_B $? $(tr -d '\\n' < /tmp/m.json)"
S=$(rnbd_srv_sess $KDEV kd1)
echo "KSRV_B dev=$KDEV ro=$(cat $S/read_only 2>&1) path=$(cat $S/mapping_path 2>&1)"
${verify('/tmp/run/vhost/ibnbd0.sock', 21, { offset: 0, count1: 16, count32: 32, max32: MiB, span: 32 * MiB })}
${BLK} --path /tmp/run/vhost/ibnbd0.sock --qd 8 --count 4 --seed 6 --sequential --min-size ${MiB} --max-size ${MiB} --offset ${40 * MiB} write > /dev/null; echo "WRITE_B $?"
${BLK} --path /tmp/run/vhost/ibnbd0.sock flush > /dev/null; echo "FLUSH_B $?"
echo "SHOW_B $(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n')"
${IB} unmap ibnbd0 --control /tmp/clt.sock; echo "UNMAP_B $?"
rnbd_srv_wait_gone $KDEV kd1; echo "KSRV_GONE_B $?"
dd if=$KLOOP of=/tmp/out/regionB.bin bs=1M skip=40 count=4 iflag=direct status=none; echo "COPY_B $?"
step B done

echo "== C: kernel rnbd_client <-> our server daemon"
RNBD_PORT=${PORT}
D1=$(rnbd_map kc1 disk.img rw); echo "KMAP_C1 $? $D1 $(cat /sys/block/\${D1##*/}/size 2>&1)"
head -c 2097152 /dev/urandom > /tmp/pat
dd if=/tmp/pat of=$D1 bs=64k seek=64 oflag=direct status=none; echo "KWRITE_C $?"
dd if=$D1 of=/tmp/back bs=64k skip=64 count=32 iflag=direct status=none; echo "KREAD_C $?"
cmp /tmp/pat /tmp/back && echo KREADBACK_OK
cmp -n 2097152 -i 0:4194304 /tmp/pat /tmp/exp/disk.img && echo KFILE_OK
E=$(rnbd_map kc2 disk.img rw 2>&1); echo "KMAP_C2 $? $E"
D3=$(rnbd_map kc3 disk.img migration); echo "KMAP_C3 $? $D3"
DR=$(rnbd_map kr1 disk.img ro); echo "KMAP_RO $? $DR ro=$(cat /sys/block/\${DR##*/}/ro 2>&1)"
dd if=$DR of=/tmp/backro bs=64k skip=64 count=32 iflag=direct status=none; echo "KRO_READ $?"
cmp /tmp/pat /tmp/backro && echo KRO_READBACK_OK
E=$(dd if=/dev/zero of=$DR bs=64k seek=64 count=1 oflag=direct conv=notrunc status=none 2>&1); echo "KRO_WRITE $? $E"
cmp -n 2097152 -i 0:4194304 /tmp/pat /tmp/exp/disk.img && echo KRO_FILE_UNCHANGED
echo "SESS_C $(${IB} server sessions --control /tmp/srv.sock --json | tr -d '\\n')"
echo "DEVS_C $(devs)"
rnbd_unmap $DR normal; echo "KUNMAP_RO $?"
rnbd_unmap $D3 force; echo "KUNMAP_FORCE $?"
rnbd_unmap $D1 normal; echo "KUNMAP_NORMAL $?"
sleep 1
echo "SESS_C_AFTER $(${IB} server sessions --control /tmp/srv.sock --json | tr -d '\\n')"
step C done

echo "== D: our client daemon and the kernel client on one device of our server"
${IB} map "sessname=od1 path=ip:10.0.2.15:${PORT} device_path=disk.img" --control /tmp/clt.sock --json > /tmp/m.json; echo "MAP_D1 $? $(tr -d '\\n' < /tmp/m.json)"
DM=$(rnbd_map km1 disk.img migration); echo "KMAP_D1 $? $DM"
echo "DEVS_D_BOTH $(devs)"
# both at once: libblkio through our client in [0, 32 MiB), the kernel client's O_DIRECT writes at 96 MiB
${BLK} --path /tmp/run/vhost/ibnbd0.sock --qd 16 --count 32 --seed 31 --min-size 4096 --max-size ${MiB} --span ${32 * MiB} verify > /tmp/vd.json & BV=$!
head -c 2097152 /dev/urandom > /tmp/patd
dd if=/tmp/patd of=$DM bs=128k seek=768 oflag=direct status=none; echo "KWRITE_D $?"
wait $BV; echo "VERIFY_D1 $? $(tr -d '\\n' < /tmp/vd.json)"
cmp -n 2097152 -i 0:${96 * MiB} /tmp/patd /tmp/exp/disk.img && echo KFILE_D_OK
rnbd_unmap $DM normal; echo "KUNMAP_D1 $?"
echo "DEVS_D_OURS $(devs)"
${BLK} --path /tmp/run/vhost/ibnbd0.sock --qd 4 --count 8 --seed 33 --min-size 4096 --max-size 65536 --span ${8 * MiB} verify > /tmp/vd.json; echo "VERIFY_D2 $? $(tr -d '\\n' < /tmp/vd.json)"
E=$(rnbd_map km2 disk.img rw 2>&1); echo "KMAP_D_RW_BUSY $? $E"
${IB} unmap ibnbd0 --control /tmp/clt.sock; echo "UNMAP_D1 $?"
echo "DEVS_D_NONE $(devs)"
DK=$(rnbd_map km3 disk.img rw); echo "KMAP_D_RW_FREE $? $DK"
${IB} map "sessname=od2 path=ip:10.0.2.15:${PORT} device_path=disk.img" --control /tmp/clt.sock > /dev/null 2> /tmp/e.txt; echo "MAP_D_OURS_BUSY $? $(tr -d '\\n' < /tmp/e.txt)"
rnbd_unmap $DK normal; echo "KUNMAP_D3 $?"
step D round 1 done
# round 2: our rw holder is a client daemon that gets SIGKILLed; a kernel ro reader stays
${IB} map "sessname=od3 path=ip:10.0.2.15:${PORT} device_path=disk.img" --control /tmp/clt2.sock --json > /tmp/m.json; echo "MAP_D2 $? $(tr -d '\\n' < /tmp/m.json)"
${BLK} --path /tmp/run2/vhost/ibnbd0.sock --qd 4 --count 8 --seed 35 --min-size 4096 --max-size 65536 --offset ${64 * MiB} --span ${8 * MiB} verify > /tmp/vd.json; echo "VERIFY_D3 $? $(tr -d '\\n' < /tmp/vd.json)"
DR2=$(rnbd_map kr2 disk.img ro); echo "KMAP_D2_RO $? $DR2"
E=$(rnbd_map km4 disk.img rw 2>&1); echo "KMAP_D2_RW_BUSY $? $E"
echo "DEVS_D2_BOTH $(devs)"
# the time just before the kill: a date(1) after it starts later than the server notices
echo "KILLED_AT $(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"; kill -KILL $CLT2; TK=$(date +%s%N)
i=0; while :; do
  V=$(devs); echo "$V" | grep -Eq '"opens": ?1,' && break
  i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1
done
echo "DEVS_D2_KILLED $(( ($(date +%s%N) - TK) / 1000000 )) $V"
wait $CLT2; echo "CLT2_EXIT $?"
echo "SRVLOG_D2 $(grep od3 /tmp/srv.log | tail -c 1500 | tr '\\n' '|')"
DK2=$(rnbd_map km5 disk.img rw); echo "KMAP_D2_RW_FREE $? $DK2"
dd if=/tmp/patd of=$DK2 bs=128k seek=896 oflag=direct status=none; echo "KWRITE_D2 $?"
dd if=$DR2 of=/tmp/backd bs=128k skip=896 count=16 iflag=direct status=none; cmp /tmp/patd /tmp/backd && echo KRO_SEES_NEW_WRITER
echo "DEVS_D2_KERNEL $(devs)"
rnbd_unmap $DK2 normal; echo "KUNMAP_D5 $?"
rnbd_unmap $DR2 normal; echo "KUNMAP_D2_RO $?"
sleep 1
echo "DEVS_D_END $(devs)"
step D done

echo "== E: our client daemon SIGKILLed and restarted under a redialling libblkio writer"
${IB} map "sessname=re1 path=ip:10.0.2.15:${PORT} device_path=disk.img" --control /tmp/clt.sock --json > /tmp/m.json; echo "MAP_E $? $(tr -d '\\n' < /tmp/m.json)"
# the server frozen first: the daemon surely dies with the writer's requests in flight
kill -STOP $SRV
timeout 300 ${tool('ibnbd-blkio')} --path /tmp/run/vhost/ibnbd0.sock --timeout-ms 120000 --reconnect-ms 5000 --qd 16 --count 128 --seed 51 --sequential --min-size 65536 --max-size 65536 --offset ${48 * MiB} verify > /tmp/ve.json & BE=$!
i=0; while :; do
  N=$(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n ' | grep -o '"inflight":[0-9]*' | head -1 | grep -o '[0-9]*$')
  [ "\${N:-0}" -ge 1 ] && break; i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1
done
echo "INFLIGHT_E \${N:-0}"
kill -KILL $CLT; wait $CLT
kill -CONT $SRV
${node} ${cliPath} client --control /tmp/clt.sock --run-dir /tmp/run --state-dir /tmp/clt-state 2> /tmp/clt3.log &
CLT=$!
wait $BE; echo "VERIFY_E $? $(tr -d '\\n' < /tmp/ve.json)"
echo "RESTORE_E $(grep -o 'mapping ibnbd0 restored[^|]*' /tmp/clt3.log | head -1)"
step E done
${faultScenarios(node)}
kill -TERM $CLT $SRV; wait $CLT; echo "CLT_EXIT $?"; wait $SRV; echo "SRV_EXIT $?"
dmesg | grep -E 'rtrs|rnbd' | grep -iE 'err|fail|invalid|bug' | head -5
exit 0`;
}

// F–H: the fault scenarios of the TCP host tests (tests/daemons/fault-*.test.ts) over RDMA, on a
// second server (port PORT2, a write stall armed at STALL_AT) and a client daemon with 1-s
// heartbeat ticks. One guest cannot hold RoCE packets in flight: rxe delivers between its own
// addresses without the network stack, so the silent cut is a server that stops answering
// (SIGSTOP; rxe still acknowledges at the transport level, and on SIGCONT the server finds
// everything that arrived meanwhile, as a healed cut delivers its held bytes).
//   F. the server frozen FREEZE_S under a verifying libblkio writer at QD16, io_timeout=3: the
//      path found dead by io_timeout, the device reconnecting meanwhile, 0 errors afterwards;
//   G. a write the server holds (IBNBD_FAULT_STALL_WRITE, 10 s) alone on its path: io_timeout
//      declares the path dead, the server refuses the path's new connection until the held
//      write is done, the client sends it again after that; a newer write to the same blocks is
//      what the file holds once the stale copy surely ran;
//   H. unmap --force of a device with QD32 in flight at a frozen server: done within io_timeout
//      and one tick (plus the CLI's start under TCG), the other device goes on.
const PORT2 = 4322;
const PORT3 = 4323;
const STALL_AT = 100 * MiB;
const BLOCK = 64 * 1024;
/** 40 s as in the host test; under the sanitizer job, whose point is memory safety, 10 s */
const FREEZE_S = sanitizerEnv ? 10 : 40;
function faultScenarios(node: string): string {
  const IB = `timeout 120 ${node} ${cliPath}`;
  const BLK = `${tool('ibnbd-blkio')}`;
  const now = 'date +%s%3N';
  const inflightWait = (dev: string) => `i=0; while :; do
  N=$(${IB} show ${dev} --control /tmp/clt4.sock --json | tr -d '\\n ' | grep -o '"inflight":[0-9]*' | head -1 | grep -o '[0-9]*$')
  [ "\${N:-0}" -ge 1 ] && break; i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1
done`;
  return `
echo "== F: our server frozen ${FREEZE_S} s under a verifying writer (the silent peer over RDMA)"
truncate -s 128M /tmp/exp/f.img /tmp/exp/h.img
IBNBD_RDMA_DEBUG=1 IBNBD_FAULT_STALL_WRITE=${STALL_AT}:10000 IBNBD_FAULT_MARK_FILE=/tmp/stall-began ${node} ${cliPath} server --listen 10.0.2.15:${PORT2} --dev-search-path /tmp/exp --control /tmp/srv2.sock --queue-depth 64 2> /tmp/srv2.log &
SRV2=$!
${node} ${cliPath} client --control /tmp/clt4.sock --run-dir /tmp/run4 --state-dir /tmp/clt4-state --heartbeat-ms 1000 --heartbeat-missed-max 30 2> /tmp/clt4.log &
CLT4=$!
i=0; while [ ! -S /tmp/srv2.sock ] || [ ! -S /tmp/clt4.sock ] || ! grep -q 'listening on' /tmp/srv2.log; do i=$((i+1)); [ $i -gt 900 ] && { cat /tmp/srv2.log /tmp/clt4.log; exit 24; }; sleep 0.1; done
${IB} map "sessname=fz path=ip:10.0.2.15:${PORT2} device_path=f.img io_timeout=3" --control /tmp/clt4.sock --json > /tmp/m.json; echo "MAP_F $? $(tr -d '\\n' < /tmp/m.json)"
# 32 MiB written then read back (about 1 s each way in an idle guest): frozen 0.5 s in, in the
# write phase as a rule; SHOW_F_FROZEN must find requests held, whichever phase, or the test fails
timeout 600 ${BLK} --path /tmp/run4/vhost/ibnbd0.sock --timeout-ms ${(FREEZE_S + 120) * 1000} --qd 16 --count 512 --seed 61 --sequential --min-size ${BLOCK} --max-size ${BLOCK} --offset 0 verify > /tmp/vf.json & BF=$!
sleep 0.5
T_STOP=$(${now}); kill -STOP $SRV2
sleep ${FREEZE_S / 2}
echo "SHOW_F_FROZEN $(${IB} show ibnbd0 --control /tmp/clt4.sock --json | tr -d '\\n')"
REST=$(( ${FREEZE_S * 1000} - ($(${now}) - T_STOP) )); [ $REST -gt 0 ] && sleep $((REST / 1000)).$(printf %03d $((REST % 1000)))
kill -CONT $SRV2; T_CONT=$(${now})
wait $BF; RC_F=$?; echo "VERIFY_F $RC_F $(tr -d '\\n' < /tmp/vf.json)"
# a writer that failed here leaves G and H nothing to stand on: the daemons' logs, then stop
[ $RC_F -eq 0 ] || { tail -n 60 /tmp/srv2.log | sed 's/^/SRV2| /'; tail -n 60 /tmp/clt4.log | sed 's/^/CLT4| /'; exit 27; }
echo "SHOW_F_AFTER $(${IB} show ibnbd0 --control /tmp/clt4.sock --json | tr -d '\\n')"
echo "TIMES_F $T_STOP $T_CONT"
step F done

echo "== G: a write our server holds while io_timeout declares its path dead"
timeout 300 ${BLK} --path /tmp/run4/vhost/ibnbd0.sock --timeout-ms 200000 --qd 1 --count 1 --seed 2 --sequential --min-size ${BLOCK} --max-size ${BLOCK} --offset ${STALL_AT} write > /tmp/g1.json & BG=$!
i=0; while [ ! -e /tmp/stall-began ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
T_G=$(${now}); echo "STALL_G $([ -e /tmp/stall-began ] && echo began || echo never)"
wait $BG; echo "STALLED_G $? $(( $(${now}) - T_G )) $(tr -d '\\n' < /tmp/g1.json)"
timeout 120 ${BLK} --path /tmp/run4/vhost/ibnbd0.sock --timeout-ms 60000 --qd 1 --count 1 --seed 3 --sequential --min-size ${BLOCK} --max-size ${BLOCK} --offset ${STALL_AT} write > /tmp/g2.json; echo "NEWER_G $? $(tr -d '\\n' < /tmp/g2.json)"
REST=$(( 11000 - ($(${now}) - T_G) )); [ $REST -gt 0 ] && sleep $((REST / 1000)).$(printf %03d $((REST % 1000)))
dd if=/tmp/exp/f.img of=/tmp/out/stall.bin bs=${BLOCK} skip=${STALL_AT / BLOCK} count=1 status=none; echo "COPY_G $?"
echo "SHOW_G $(${IB} show ibnbd0 --control /tmp/clt4.sock --json | tr -d '\\n')"
echo "SRVLOG_G $(grep -ciE 'refused for now|still has requests running' /tmp/srv2.log)"
step G done

echo "== H: unmap --force under QD32 at a frozen server"
${IB} map "sessname=fu path=ip:10.0.2.15:${PORT2} device_path=h.img io_timeout=3" --control /tmp/clt4.sock --json > /tmp/m.json; echo "MAP_H $? $(tr -d '\\n' < /tmp/m.json)"
# the server frozen first: the writer's first 32 requests stay in flight (it gives up on a
# completion after 20 s: a forced device answers what it had, then its socket is gone)
kill -STOP $SRV2
timeout 300 ${BLK} --path /tmp/run4/vhost/ibnbd1.sock --timeout-ms 20000 --qd 32 --count 1000 --seed 71 --min-size 4096 --max-size ${BLOCK} --span ${64 * MiB} verify > /tmp/vh.json 2>&1 & BH=$!
${inflightWait('ibnbd1')}
echo "INFLIGHT_H \${N:-0}"
T=$(${now}); ${IB} unmap ibnbd1 --force --control /tmp/clt4.sock > /dev/null; echo "UNMAP_H $? $(( $(${now}) - T ))"
echo "UNMAP_H_DAEMON $(grep -o 'unmapped ibnbd1 (force, [0-9]* ms)' /tmp/clt4.log | grep -o '[0-9]* ms' | grep -o '[0-9]*')"
kill -CONT $SRV2
wait $BH; echo "WRITER_H $?"
timeout 120 ${BLK} --path /tmp/run4/vhost/ibnbd0.sock --timeout-ms 60000 --qd 8 --count 64 --seed 81 --min-size 4096 --max-size ${BLOCK} --offset ${32 * MiB} --span ${16 * MiB} verify > /tmp/vo.json; echo "VERIFY_H_OTHER $? $(tr -d '\\n' < /tmp/vo.json)"
step H done
kill -TERM $CLT4 $SRV2; wait $CLT4; echo "CLT4_EXIT $?"; wait $SRV2; echo "SRV2_EXIT $?"

echo "== I: a server with --auth-keys over RDMA: our daemons prove the secret, kernel peers only under names the file opens"
hex32() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
KEY_VMX=$(hex32)
printf 'kopen rdma-unauthenticated\nvmx %s\nvmbad %s\n' $KEY_VMX $(hex32) > /tmp/srv3.keys
# the client daemon's file: vmx's secret, a wrong one for vmbad
printf 'vmx %s\nvmbad %s\n' $KEY_VMX $(hex32) > /tmp/clt6.keys
chmod 600 /tmp/srv3.keys /tmp/clt6.keys
${node} ${cliPath} server --listen 10.0.2.15:${PORT3} --dev-search-path /tmp/exp --control /tmp/srv3.sock --auth-keys /tmp/srv3.keys 2> /tmp/srv3.log &
SRV3=$!
i=0; while [ ! -S /tmp/srv3.sock ] || ! grep -q 'listening on' /tmp/srv3.log; do i=$((i+1)); [ $i -gt 900 ] && { cat /tmp/srv3.log; exit 25; }; sleep 0.1; done
RNBD_PORT=${PORT3}
E=$(rnbd_map kshut f.img rw 2>&1); echo "KMAP_I_DENIED $? $E"
KI=$(rnbd_map kopen f.img rw); echo "KMAP_I_OPEN $? $KI"
dd if=/dev/zero of=$KI bs=64k count=4 oflag=direct status=none; echo "KWRITE_I $?"
rnbd_unmap $KI normal; echo "KUNMAP_I $?"
${node} ${cliPath} client --control /tmp/clt5.sock --run-dir /tmp/run5 --state-dir /tmp/clt5-state 2> /tmp/clt5.log &
CLT5=$!
i=0; while [ ! -S /tmp/clt5.sock ]; do i=$((i+1)); [ $i -gt 900 ] && exit 26; sleep 0.1; done
${node} ${cliPath} client --control /tmp/clt6.sock --run-dir /tmp/run6 --state-dir /tmp/clt6-state --auth-keys /tmp/clt6.keys 2> /tmp/clt6.log &
CLT6=$!
i=0; while [ ! -S /tmp/clt6.sock ]; do i=$((i+1)); [ $i -gt 900 ] && exit 28; sleep 0.1; done
OUT=$(${IB} map "sessname=vmbad path=ip:10.0.2.15:${PORT3} device_path=f.img transport=rdma" --control /tmp/clt6.sock 2>&1); echo "OURS_I_WRONGKEY $? $(echo $OUT | tr -d '\n')"
OUT=$(${IB} map "sessname=vmx path=ip:10.0.2.15:${PORT} device_path=disk.img transport=rdma" --control /tmp/clt6.sock 2>&1); echo "OURS_I_KEYLESS_SERVER $? $(echo $OUT | tr -d '\n')"
${IB} map "sessname=vmx path=ip:10.0.2.15:${PORT3} device_path=f.img transport=rdma" --control /tmp/clt6.sock --json > /tmp/m.json; echo "OURS_I_MAP $? $(tr -d '\n' < /tmp/m.json)"
# a squatter: another client daemon, without the secret, takes the name of the session that is up
echo "OURS_I_DENIED $(${IB} map "sessname=vmx path=ip:10.0.2.15:${PORT3} device_path=f.img transport=rdma" --control /tmp/clt5.sock 2>&1 | tr -d '\n')"
echo "CLTLOG5_I $(grep -o 'authentication failed: [^(]*' /tmp/clt5.log | sort -u | tr '\n' '|')"
# one daemon fewer before the next starts: under the sanitizer job each takes 120-160 MB; six of
# them left 640 MB of this 1.5-GiB guest, and a seventh in the 1-GiB guest it had before stalled
# the kernel (soft lockups) and lost the server
echo "MEM_I $(grep MemAvailable /proc/meminfo | tr -s ' ')"
kill -TERM $CLT5; wait $CLT5; echo "CLT5_EXIT $?"
timeout 120 ${tool('ibnbd-blkio')} --timeout-ms 60000 --path /tmp/run6/vhost/ibnbd0.sock --qd 16 --count 128 --seed 91 --min-size 4096 --max-size ${BLOCK} --span ${64 * MiB} verify > /tmp/vi.json; echo "VERIFY_I $? $(tr -d '\n' < /tmp/vi.json)"
echo "SESS_I_UP $(${IB} server sessions --control /tmp/srv3.sock --json | tr -d '\n')"
${IB} unmap ibnbd0 --control /tmp/clt6.sock > /dev/null; echo "OURS_I_UNMAP $?"
# a replay: a client daemon with the right secret records its first proof and sends that same
# recording on its next session (IBNBD_FAULT_REPLAY_AUTH), against a fresh server nonce
IBNBD_FAULT_REPLAY_AUTH=/tmp/replay.bin ${node} ${cliPath} client --control /tmp/clt8.sock --run-dir /tmp/run8 --state-dir /tmp/clt8-state --auth-keys /tmp/clt6.keys 2> /tmp/clt8.log &
CLT8=$!
i=0; while [ ! -S /tmp/clt8.sock ]; do i=$((i+1)); [ $i -gt 900 ] && exit 30; sleep 0.1; done
OUT=$(${IB} map "sessname=vmx path=ip:10.0.2.15:${PORT3} device_path=f.img transport=rdma" --control /tmp/clt8.sock 2>&1); echo "REPLAY_I_FIRST $? $(stat -c %s /tmp/replay.bin 2>/dev/null)"
${IB} unmap ibnbd0 --control /tmp/clt8.sock > /dev/null
OUT=$(${IB} map "sessname=vmx path=ip:10.0.2.15:${PORT3} device_path=f.img transport=rdma" --control /tmp/clt8.sock 2>&1); echo "REPLAY_I $? $(echo $OUT | tr -d '\n')"
kill -TERM $CLT8; wait $CLT8
echo "CLTLOG_I $(grep -o 'authentication failed: [^(]*' /tmp/clt6.log | sort -u | tr '\n' '|')"
kill -TERM $CLT6; wait $CLT6
echo "SRVLOG_I $(grep -c "refused (EACCES): authentication failed" /tmp/srv3.log)"
echo "SESS_I $(${IB} server sessions --control /tmp/srv3.sock --json | tr -d '\n')"
kill -TERM $SRV3; wait $SRV3; echo "SRV3_EXIT $?"
step I done

echo "== J: a path that connects and then says nothing is closed after the server's handshake timeout"
IBNBD_FAULT_RDMA_INFO_DELAY_MS=8000 ${node} ${cliPath} client --control /tmp/clt7.sock --run-dir /tmp/run7 --state-dir /tmp/clt7-state 2> /tmp/clt7.log &
CLT7=$!
i=0; while [ ! -S /tmp/clt7.sock ]; do i=$((i+1)); [ $i -gt 900 ] && exit 29; sleep 0.1; done
OUT=$(${IB} map "sessname=mute path=ip:10.0.2.15:${PORT} device_path=disk.img transport=rdma" --control /tmp/clt7.sock 2>&1); echo "MAP_J $? $(echo $OUT | tr -d '\n')"
echo "SRVLOG_J $(grep -o 'closed: its set-up did not finish within [0-9]* ms' /tmp/srv.log | head -1)"
echo "SESS_J $(${IB} server sessions --control /tmp/srv.sock --json | tr -d '\n')"
kill -TERM $CLT7; wait $CLT7
step J done`;
}

function line(out: string, key: string): string {
  const l = out.split('\n').find((x) => x.startsWith(`${key} `));
  if (l === undefined) throw new Error(`guest printed no ${key} line`);
  return l.slice(key.length + 1);
}
/** "KEY <rc> <json>" */
function rcJson(out: string, key: string): { rc: number; json: any } {
  const v = line(out, key);
  const sp = v.indexOf(' ');
  const rc = Number(sp < 0 ? v : v.slice(0, sp));
  const rest = sp < 0 ? '' : v.slice(sp + 1);
  return { rc, json: rest.startsWith('{') ? JSON.parse(rest) : rest };
}
/** disk.img's entry in a `ibnbd server devices --json` line (undefined once the export closed) */
function devOf(devicesJson: string): { opens: number; writers: number; sessions: unknown[] } | undefined {
  return (JSON.parse(devicesJson).devices as Array<{ name: string; opens: number; writers: number; sessions: unknown[] }>).find((d) => d.name.endsWith('disk.img'));
}

/**
 * One kernel-peer guest (2 vCPUs, 1 GiB) running `script(node)`, where node is this job's node (with
 * the sanitizer runtimes under the sanitizer job). Logs the STEP/VERIFY lines, and the tail of the
 * output when the script failed; asserts exit 0; returns the output.
 */
async function runDaemonsGuest(
  t: import('ava').ExecutionContext,
  peer: KernelRnbdGuestInput,
  timeoutMs: number,
  script: (node: string) => string,
): Promise<string> {
  const r = await runGuest({
    ...kernelRnbdGuestOptions(peer),
    cpus: 2,
    memMiB: 1536, // six daemons under ASan take ~870 MB (scenario I)
    timeoutMs,
    script: script(`${sanitizerEnv}${process.execPath}`),
    // progress for whoever watches a slow run: IBNBD_GUEST_LOG=/path
    onSerialLine: process.env.IBNBD_GUEST_LOG ? (l) => appendFileSync(process.env.IBNBD_GUEST_LOG!, `${l}\n`) : undefined,
  });
  t.log(r.output.split('\n').filter((l) => l.startsWith('STEP') || l.startsWith('VERIFY')).join('\n'));
  if (r.exitCode !== 0) t.log(r.output.slice(-6000));
  t.is(r.exitCode, 0);
  return r.output;
}

test.serial('soft-RoCE guest: the daemons over RDMA — ours↔ours zero copy, our client↔kernel rnbd_server, kernel rnbd_client↔our server, both kinds of client on one device', async (t) => {
  t.timeout(1_260_000);
  const outDir = tempDir(t, 'rdmad-out');
  const out = await runDaemonsGuest(t, { shares: [{ hostPath: outDir, tag: 'out', guestPath: '/tmp/out' }] }, 1_200_000, guestScript); // 20 min: 4 min alone, 13–17 min beside rdma-suite in CI (it ran out of 14 min once, every scenario passed)
  t.regex(line(out, 'SRVLOG'), new RegExp(`10\\.0\\.2\\.15:${PORT} rdma:10\\.0\\.2\\.15:${PORT}`), 'the server listens on TCP and RDMA, same port');

  // A
  const mapA = rcJson(out, 'MAP_A');
  t.is(mapA.rc, 0, String(mapA.json));
  t.is(mapA.json.device.transport, 'rdma', 'default transport in a host with an RDMA device');
  for (const k of ['VERIFY_QD1', 'VERIFY_QD32']) {
    const v = rcJson(out, k);
    t.is(v.rc, 0, `A ${k}: ${JSON.stringify(v.json)}`);
  }
  t.is(rcJson(out, 'WRITE_A').rc, 0);
  t.is(rcJson(out, 'FLUSH_A').rc, 0);
  const showA = JSON.parse(line(out, 'SHOW_A')).device;
  t.is(showA.transport, 'rdma');
  t.true(showA.stats.requests >= 24 + 96, `requests went through the vhost device (${showA.stats.requests})`);
  t.is(showA.bounce_count, 0, 'zero copy: no guest request went through the bounce pool');
  t.like(showA.path_states[0], { state: 'connected' });
  const sessA = line(out, 'SESS_A');
  t.regex(sessA, /rd1/, 'our server lists the RDMA session');
  t.is(rcJson(out, 'UNMAP_A').rc, 0);
  t.is(rcJson(out, 'COPY_A').rc, 0);
  t.true(readFileSync(join(outDir, 'region.bin')).equals(expectedPattern(5, 100 * MiB, 4 * MiB)), "libblkio's bytes are in the server's file");
  const noSrv = line(out, 'NOSRV');
  t.regex(noSrv, /transport=rdma: no IBNBD server answered over RDMA at ip:10\.0\.2\.15:4999/, noSrv);

  // B
  const mapB = rcJson(out, 'MAP_B');
  t.is(mapB.rc, 0, String(mapB.json));
  t.is(mapB.json.device.transport, 'rdma');
  t.regex(line(out, 'KSRV_B'), /^dev=loop\d+ ro=0 path=loop\d+$/, "the kernel server's sysfs shows our session's open");
  const vB = out.split('\n').filter((l) => l.startsWith('VERIFY_QD'));
  t.is(vB.length, 4);
  for (const l of vB.slice(2)) t.regex(l, /^VERIFY_QD\d+ 0 /, `B ${l}`);
  const qd32B = JSON.parse(vB[3]!.split(' ').slice(2).join(' '));
  t.true(qd32B.write.requests === 32 && qd32B.read.mismatches === 0, `B QD32 up to 1 MiB: ${vB[3]}`);
  t.is(rcJson(out, 'WRITE_B').rc, 0);
  t.is(rcJson(out, 'FLUSH_B').rc, 0);
  const showB = JSON.parse(line(out, 'SHOW_B')).device;
  t.is(showB.bounce_count, 0, 'zero copy against the kernel server too');
  t.is(rcJson(out, 'UNMAP_B').rc, 0);
  t.is(rcJson(out, 'KSRV_GONE_B').rc, 0, "our unmap removed the session's open from the kernel server's tree");
  t.is(rcJson(out, 'COPY_B').rc, 0);
  t.true(readFileSync(join(outDir, 'regionB.bin')).equals(expectedPattern(6, 40 * MiB, 4 * MiB)), "libblkio's bytes are on the kernel server's device");

  // C
  const kmap = line(out, 'KMAP_C1');
  t.regex(kmap, /^0 \/dev\/rnbd\d+ 262144$/, `kernel client mapped our export (128 MiB): ${kmap}`);
  t.is(rcJson(out, 'KWRITE_C').rc, 0);
  t.is(rcJson(out, 'KREAD_C').rc, 0);
  t.regex(out, /KREADBACK_OK/);
  t.regex(out, /KFILE_OK/, "the kernel client's O_DIRECT bytes are in our server's file");
  t.regex(line(out, 'KMAP_C2'), /^1 .*Operation not permitted/, 'a second rw map from another session: EPERM');
  t.regex(line(out, 'KMAP_C3'), /^0 \/dev\/rnbd\d+/, 'migration allowed next to the rw holder');
  // the kernel client's ro map next to the rw holder kc1
  t.regex(line(out, 'KMAP_RO'), /^0 \/dev\/rnbd\d+ ro=1$/, 'ro map allowed next to a rw holder; the kernel marks the disk read-only');
  t.is(rcJson(out, 'KRO_READ').rc, 0);
  t.regex(out, /KRO_READBACK_OK/, 'the ro map reads the bytes in our file');
  t.regex(line(out, 'KRO_WRITE'), /^1 .*Operation not permitted/, 'an O_DIRECT write to the ro /dev/rnbdN: EPERM from the block layer');
  t.regex(out, /KRO_FILE_UNCHANGED/);
  const sessC = JSON.parse(line(out, 'SESS_C')).sessions as Array<{ sessname: string; devices: Array<{ access_mode: string; read_only: number }> }>;
  const modeOf = (sessname: string) => sessC.find((x) => x.sessname === sessname)?.devices.map((d) => `${d.access_mode}/${d.read_only}`);
  t.deepEqual([modeOf('kc1'), modeOf('kc2'), modeOf('kc3'), modeOf('kr1')], [['rw/0'], undefined, ['migration/0'], ['ro/1']], 'our server: kr1 read-only, kc2 never opened');
  t.like(devOf(line(out, 'DEVS_C')), { opens: 3, writers: 2 });
  t.is(rcJson(out, 'KUNMAP_RO').rc, 0);
  t.is(rcJson(out, 'KUNMAP_FORCE').rc, 0);
  t.is(rcJson(out, 'KUNMAP_NORMAL').rc, 0);
  t.notRegex(line(out, 'SESS_C_AFTER'), /kc1|kc3|kr1/, 'the sessions are gone after unmap');

  // D, round 1: ours rw + kernel migration on one device; the kernel leaves first, then ours
  const mapD1 = rcJson(out, 'MAP_D1');
  t.is(mapD1.rc, 0, String(mapD1.json));
  t.regex(line(out, 'KMAP_D1'), /^0 \/dev\/rnbd\d+$/, 'kernel migration map next to our rw client');
  t.like(devOf(line(out, 'DEVS_D_BOTH')), { opens: 2, writers: 2 });
  t.is(rcJson(out, 'KWRITE_D').rc, 0);
  const vD1 = rcJson(out, 'VERIFY_D1');
  t.is(vD1.rc, 0, `our client's IO while the kernel client writes: ${JSON.stringify(vD1.json)}`);
  t.regex(out, /KFILE_D_OK/, "the kernel client's bytes are in our file");
  t.is(rcJson(out, 'KUNMAP_D1').rc, 0);
  t.like(devOf(line(out, 'DEVS_D_OURS')), { opens: 1, writers: 1 }, 'the kernel unmap gave back one open');
  t.is(rcJson(out, 'VERIFY_D2').rc, 0, 'our client goes on');
  t.regex(line(out, 'KMAP_D_RW_BUSY'), /^1 .*Operation not permitted/, 'our client holds the rw slot');
  t.is(rcJson(out, 'UNMAP_D1').rc, 0);
  t.is(devOf(line(out, 'DEVS_D_NONE')), undefined, 'the device closed with its last open');
  t.regex(line(out, 'KMAP_D_RW_FREE'), /^0 \/dev\/rnbd\d+$/, 'after our unmap the kernel client gets rw');
  t.regex(line(out, 'MAP_D_OURS_BUSY'), /^[1-9]\d* .*EPERM/, 'and now our client is the one refused');
  t.is(rcJson(out, 'KUNMAP_D3').rc, 0);

  // D, round 2: our rw client daemon SIGKILLed next to a kernel ro reader
  t.is(rcJson(out, 'MAP_D2').rc, 0);
  t.is(rcJson(out, 'VERIFY_D3').rc, 0);
  t.regex(line(out, 'KMAP_D2_RO'), /^0 \/dev\/rnbd\d+$/);
  t.regex(line(out, 'KMAP_D2_RW_BUSY'), /^1 .*Operation not permitted/);
  t.like(devOf(line(out, 'DEVS_D2_BOTH')), { opens: 2, writers: 1 });
  const killed = line(out, 'DEVS_D2_KILLED');
  // when the server dropped the session, from its own log line (the CLI polls cost seconds each in the guest)
  const downAt = /"time":"([^"]+)"[^|]*"msg":"session od3 \S+ down, 1 device\(s\) released"/.exec(line(out, 'SRVLOG_D2'))?.[1];
  t.truthy(downAt, `the server logs the dead session: ${line(out, 'SRVLOG_D2')}`);
  const releaseMs = Date.parse(downAt!) - Date.parse(line(out, 'KILLED_AT'));
  t.log(`our server released the SIGKILLed client's session at most ${releaseMs} ms after the kill (seen by the CLI after ${killed.split(' ')[0]} ms)`);
  t.true(releaseMs >= 0 && releaseMs < 30_000, `released within the poll bound: ${releaseMs} ms`);
  t.like(devOf(killed.slice(killed.indexOf(' ') + 1)), { opens: 1, writers: 0 }, 'the dead session gave back its open and the rw slot');
  t.is(rcJson(out, 'CLT2_EXIT').rc, 137);
  t.regex(line(out, 'KMAP_D2_RW_FREE'), /^0 \/dev\/rnbd\d+$/, 'the kernel client gets rw once our session is gone');
  t.is(rcJson(out, 'KWRITE_D2').rc, 0);
  t.regex(out, /KRO_SEES_NEW_WRITER/, "the kernel ro reader reads the new writer's bytes");
  t.like(devOf(line(out, 'DEVS_D2_KERNEL')), { opens: 2, writers: 1 });
  t.is(rcJson(out, 'KUNMAP_D5').rc, 0);
  t.is(rcJson(out, 'KUNMAP_D2_RO').rc, 0);
  t.is(devOf(line(out, 'DEVS_D_END')), undefined);

  // E: the client daemon SIGKILLed with requests in flight, restarted with its state dir
  t.is(rcJson(out, 'MAP_E').rc, 0);
  t.true(Number(line(out, 'INFLIGHT_E')) >= 1, 'requests were in flight when the daemon was killed');
  t.regex(line(out, 'RESTORE_E'), /^mapping ibnbd0 restored: disk\.img of session re1/, 'the restarted daemon restored the mapping');
  const ve = rcJson(out, 'VERIFY_E');
  t.is(ve.rc, 0, `E: ${JSON.stringify(ve.json)}`);
  t.true(ve.json.write.reconnects >= 1, 'the writer redialled the restarted daemon');
  t.is(ve.json.write.errors + ve.json.read.errors + ve.json.read.mismatches, 0, 'no error, every byte read back');
  t.is(rcJson(out, 'CLT_EXIT').rc, 0);
  t.is(rcJson(out, 'SRV_EXIT').rc, 0);
  checkFaultScenarios(t, out, outDir);
});

/** F–H (faultScenarios): the figures the fault-tolerance issue asks for, logged, and the bounds. */
function checkFaultScenarios(t: import('ava').ExecutionContext, out: string, outDir: string): void {
  const [tStop, tCont] = line(out, 'TIMES_F').split(' ').map(Number) as [number, number];
  t.is(rcJson(out, 'MAP_F').rc, 0);
  const frozen = JSON.parse(line(out, 'SHOW_F_FROZEN')).device;
  t.is(frozen.state, 'reconnecting', `F: the device waits while the server is frozen: ${JSON.stringify(frozen)}`);
  t.true(frozen.stats.waiting >= 1, `F: the writer's requests are held by the device (${frozen.stats.waiting})`);
  const foundMs = Date.parse(frozen.state_since) - tStop;
  t.log(`F (RDMA): dead path found ${foundMs} ms after the server froze (io_timeout 3 s, heartbeat tick 1 s)`);
  t.true(foundMs >= 2900 && foundMs <= 7000, `F: found by io_timeout, not before it and not by the heartbeats (${foundMs} ms)`);
  const vf = rcJson(out, 'VERIFY_F');
  t.is(vf.rc, 0, `F: ${JSON.stringify(vf.json)}`);
  t.is(vf.json.write.errors + vf.json.read.errors + vf.json.read.mismatches, 0, 'F: no error reached the writer, every byte read back');
  t.true(vf.json.write.ms + vf.json.read.ms > FREEZE_S * 1000, `F: the writer waited through the freeze (write ${vf.json.write.ms} ms, read ${vf.json.read.ms} ms)`);
  const after = JSON.parse(line(out, 'SHOW_F_AFTER')).device;
  t.is(after.state, 'open');
  t.is(after.stats.errors, 0);
  const resumeMs = Date.parse(after.state_since) - tCont;
  t.log(`F (RDMA): device open again ${resumeMs} ms after the server resumed; longest stall ≈ ${Date.parse(after.state_since) - tStop} ms`);
  t.true(resumeMs >= 0 && resumeMs < 20_000, `F: back within the reconnect back-off and a re-OPEN under TCG (${resumeMs} ms)`);

  t.is(line(out, 'STALL_G'), 'began', 'G: the server held the write');
  const stalled = line(out, 'STALLED_G').split(' ');
  t.is(Number(stalled[0]), 0, `G: the held write completed: ${stalled.slice(2).join(' ')}`);
  t.true(Number(stalled[1]) >= 9000, `G: answered only after the server finished the stale copy (${stalled[1]} ms after the stall began)`);
  t.log(`G (RDMA): the held write was answered ${stalled[1]} ms after the server began holding it (10 s)`);
  const g = JSON.parse(line(out, 'SHOW_G')).device;
  t.true(g.path_states[0].reconnects > after.path_states[0].reconnects, `G: io_timeout declared the path dead and it reconnected (${after.path_states[0].reconnects} → ${g.path_states[0].reconnects})`);
  t.true(Number(line(out, 'SRVLOG_G')) >= 1, "G: the server refused the path's new connection while the old one's write ran");
  t.is(rcJson(out, 'NEWER_G').rc, 0);
  t.is(rcJson(out, 'COPY_G').rc, 0);
  t.true(readFileSync(join(outDir, 'stall.bin')).equals(expectedPattern(3, STALL_AT, BLOCK)), 'G: the newer bytes are what stays');

  t.is(rcJson(out, 'MAP_H').rc, 0);
  t.true(Number(line(out, 'INFLIGHT_H')) >= 1, 'H: requests in flight at the frozen server');
  const [unmapRc, unmapMs] = line(out, 'UNMAP_H').split(' ').map(Number) as [number, number];
  t.is(unmapRc, 0);
  // the daemon's own figure: the CLI's start under a busy TCG guest took up to 9 s by itself
  const daemonMs = Number(line(out, 'UNMAP_H_DAEMON'));
  t.log(`H (RDMA): unmap --force with requests at a frozen server took ${daemonMs} ms in the client daemon (${unmapMs} ms with the CLI's start under TCG; io_timeout 3 s)`);
  // the bound tells a forced unmap that waited for the path's io_timeout (3 s, found at a 1-s tick)
  // from one that waited for the admin timeout (30 s) or hung; the rest is slack for a TCG guest
  // sharing two host cores with another guest: 6.2 s seen once with a compiler running beside
  t.true(daemonMs > 0 && daemonMs <= 3_000 + 1_000 + 3_000, `H: within io_timeout and a tick, with 3 s for TCG's timers (${daemonMs} ms)`);
  t.not(Number(line(out, 'WRITER_H')), 0, "H: the forced device's front-end saw its requests fail");
  const other = rcJson(out, 'VERIFY_H_OTHER');
  t.is(other.rc, 0, `H: the other device goes on: ${JSON.stringify(other.json)}`);
  t.is(rcJson(out, 'CLT4_EXIT').rc, 0);
  t.is(rcJson(out, 'SRV2_EXIT').rc, 0);

  // I: --auth-keys over RDMA (docs/security.md): kernel peers only under names the file opens
  t.not(rcJson(out, 'KMAP_I_DENIED').rc, 0, "a kernel client's session whose name the keys file does not open is refused");
  t.is(rcJson(out, 'KMAP_I_OPEN').rc, 0, 'one marked rdma-unauthenticated gets in');
  t.is(rcJson(out, 'KWRITE_I').rc, 0);
  t.is(rcJson(out, 'KUNMAP_I').rc, 0);
  t.regex(line(out, 'OURS_I_DENIED'), /EACCES: session vmx: authentication failed/, 'a squatter without the secret, on the name of a session that is up: EACCES');
  const wrong = rcJson(out, 'OURS_I_WRONGKEY');
  t.is(wrong.rc, 13, `a wrong secret: EACCES (${wrong.json})`);
  t.regex(String(wrong.json), /authentication failed/);
  const keyless = rcJson(out, 'OURS_I_KEYLESS_SERVER');
  t.is(keyless.rc, 13, `a server without keys cannot prove the secret: EACCES (${keyless.json})`);
  const mapI = rcJson(out, 'OURS_I_MAP');
  t.is(mapI.rc, 0, `the right secret maps over RDMA: ${JSON.stringify(mapI.json)}`);
  t.is(mapI.json.device.transport, 'rdma');
  const vi = rcJson(out, 'VERIFY_I');
  t.is(vi.rc, 0, `I: verified IO on the authenticated session: ${JSON.stringify(vi.json)}`);
  t.deepEqual(JSON.parse(line(out, 'SESS_I_UP')).sessions.map((x: { sessname: string }) => x.sessname), ['vmx'], 'only the proven session is on the server');
  t.is(rcJson(out, 'OURS_I_UNMAP').rc, 0);
  t.regex(line(out, 'REPLAY_I_FIRST'), /^0 64$/, 'the recording session maps (and its 64-byte proof is recorded)');
  const replay = rcJson(out, 'REPLAY_I');
  t.is(replay.rc, 13, `a replayed proof is refused: EACCES (${replay.json})`);
  const cltLog = line(out, 'CLTLOG_I');
  t.regex(cltLog, /the server refused our proof/, "the client daemon's log says the server refused the wrong secret");
  t.regex(cltLog, /the server did not authenticate itself/, "and that the keyless server did not prove the secret");
  t.regex(line(out, 'CLTLOG5_I'), /the server requires a proof for this session name, and this daemon has no secret for it/, 'the daemon without a secret logs why');
  t.true(Number(line(out, 'SRVLOG_I')) >= 4, 'each refusal is logged (kernel, no proof, wrong proof, replay)');
  t.deepEqual(JSON.parse(line(out, 'SESS_I')).sessions.map((x: { sessname: string }) => x.sessname), [], 'no refused session stayed');
  t.is(rcJson(out, 'SRV3_EXIT').rc, 0);

  // J: --handshake-timeout-ms over RDMA (docs/security.md, "Bounds")
  t.not(rcJson(out, 'MAP_J').rc, 0, 'a client that does not finish its set-up does not get a session');
  t.is(line(out, 'SRVLOG_J'), 'closed: its set-up did not finish within 5000 ms', 'the server closed the silent path at its handshake timeout');
  t.false(line(out, 'SESS_J').includes('"mute"'), 'and nothing of it stays on the server');
}

// Two RDMA paths through the daemons: eth0 (rxe0) and a dummy netdev with its own rxe device
// (rxe1, loopback inside rxe). The second path's address goes away under QD16 IO: the path is
// declared dead (heartbeats), its requests fail over (counted in `failovers`), IO goes on
// without an error; the address comes back, the path reconnects and carries IO again (its
// `requests` grow under round-robin). Same boot: gid: addresses on RoCE — rxe0's IPv4-mapped
// RoCEv2 GID and its link-local default GID (index 0) each map a device with verified IO, a
// foreign link-local GID without a scope and an unknown scope are EINVAL.
function multipathScript(node: string): string {
  const IB = `timeout 120 ${node} ${cliPath}`;
  const BLK = `timeout 150 ${tool('ibnbd-blkio')} --timeout-ms 120000`;
  return `${kernelRnbdPrelude()}
set -u
T0=$(date +%s)
step() { echo "STEP $(( $(date +%s) - T0 ))s $*"; }
rxe_up || exit 20
{ ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy; } && ip addr add 10.0.3.1/24 dev dummy0 && ip link set dummy0 up && rdma link add rxe1 type rxe netdev dummy0 || exit 30
mkdir -p /tmp/exp /tmp/run && truncate -s 128M /tmp/exp/disk.img
IBNBD_RDMA_DEBUG=1 ${node} ${cliPath} server --listen [::]:${PORT} --dev-search-path /tmp/exp --control /tmp/srv.sock --queue-depth 64 2> /tmp/srv.log &
SRV=$!
IBNBD_RDMA_DEBUG=1 ${node} ${cliPath} client --control /tmp/clt.sock --run-dir /tmp/run --state-dir /tmp/clt-state --heartbeat-ms 300 --heartbeat-missed-max 3 --reconnect-delay-ms 1000 2> /tmp/clt.log &
CLT=$!
i=0; while [ ! -S /tmp/srv.sock ] || [ ! -S /tmp/clt.sock ]; do i=$((i+1)); [ $i -gt 900 ] && { cat /tmp/srv.log /tmp/clt.log; exit 23; }; sleep 0.1; done
${IB} map "sessname=mp path=ip:10.0.2.15:${PORT} path=ip:10.0.3.1:${PORT} device_path=disk.img mp_policy=round-robin" --control /tmp/clt.sock --json > /tmp/m.json; echo "MAP_MP $? $(tr -d '\\n' < /tmp/m.json)"
echo "SHOW_MP1 $(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n')"
step mapped
${BLK} --path /tmp/run/vhost/ibnbd0.sock --qd 16 --count 2000 --seed 7 --min-size 4096 --max-size 65536 --span ${128 * MiB} verify > /tmp/mp.json 2>&1 &
B=$!
sleep 2
ip addr del 10.0.3.1/24 dev dummy0; echo "ADDR_DEL $?"
step address removed
sleep 4
echo "SHOW_MP2 $(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n')"
ip addr add 10.0.3.1/24 dev dummy0; echo "ADDR_ADD $?"
step address back
wait $B; echo "VERIFY_MP $? $(tr -d '\\n' < /tmp/mp.json)"
step io done
i=0; while :; do
  S=$(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n')
  [ $(echo "$S" | grep -o '"state":"connected"' | wc -l) -ge 2 ] && break
  i=$((i+1)); [ $i -gt 10 ] && break; sleep 2
done
echo "SHOW_MP3 $S"
echo "DIAG_MP3 clt: $(grep '"component":"rdma"' /tmp/clt.log | tail -n 40 | tr '\\n' '|') srv: $(grep '"component":"rdma"' /tmp/srv.log | tail -n 40 | tr '\\n' '|') dmesg: $(dmesg | grep -iE 'cm_|rxe|rtrs|rdma' | tail -n 12 | tr '\\n' '|') threads: $(for t in /proc/$SRV/task/* /proc/$CLT/task/*; do printf '%s ' "$(cat $t/wchan 2>/dev/null)"; done)"
if [ $(echo "$S" | grep -o '"state":"connected"' | wc -l) -lt 2 ]; then
  echo "DIAG_NET cm_ids: $(rdma res show cm_id 2>&1 | tr '\n' '|') route: $(ip route get 10.0.3.1 2>&1 | tr '\n' ' ') neigh: $(ip neigh show 2>&1 | tr '\n' '|') rxe1 gids: $(grep -v '^0000:0000:0000:0000:0000:0000:0000:0000' /sys/class/infiniband/rxe1/ports/1/gids/* 2>/dev/null | tr '\n' ' ') counters: $(for d in rxe0 rxe1; do printf '%s ' $d; for c in sent_pkts rcvd_pkts send_err rcvd_seq_err retry_exceeded_err; do printf '%s=%s ' $c "$(cat /sys/class/infiniband/$d/ports/1/hw_counters/$c 2>/dev/null)"; done; done)"
fi
echo "FENCE_WAITS $(grep -c 'waits for the same buffer id' /tmp/srv.log)"
step path back
${BLK} --path /tmp/run/vhost/ibnbd0.sock --qd 8 --count 200 --seed 9 --min-size 4096 --max-size 65536 --span ${32 * MiB} verify > /tmp/mp2.json 2>&1; echo "VERIFY_MP2 $? $(tr -d '\\n' < /tmp/mp2.json)"
echo "SHOW_MP4 $(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n')"
${IB} unmap ibnbd0 --control /tmp/clt.sock; echo "UNMAP_MP $?"
step io after return
echo "== gid: addresses on soft-RoCE"
G4=; for f in /sys/class/infiniband/rxe0/ports/1/gids/*; do case $(cat $f) in 0000:0000:0000:0000:0000:ffff:*) G4=$(cat $f); break;; esac; done
GLL=$(cat /sys/class/infiniband/rxe0/ports/1/gids/0)
echo "GIDS $G4 $GLL $(cat /sys/class/infiniband/rxe0/ports/1/gid_attrs/ndevs/0)"
gid_map() { # <key> <gid address as written in the map string>
  ${IB} map "sessname=$1 path=$2 device_path=disk.img" --control /tmp/clt.sock --json > /tmp/g.json 2>&1; echo "MAP_$1 $? $(tr -d '\\n' < /tmp/g.json)"
  ${BLK} --path /tmp/run/vhost/ibnbd0.sock --qd 4 --count 32 --seed 13 --min-size 4096 --max-size 65536 --span ${16 * MiB} verify > /tmp/g.json 2>&1; echo "VERIFY_$1 $? $(tr -d '\\n' < /tmp/g.json)"
  echo "SHOW_$1 $(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n')"
  ${IB} unmap ibnbd0 --control /tmp/clt.sock; echo "UNMAP_$1 $?"
}
gid_map GID4 "gid:[$G4]:${PORT}"
gid_map GIDLL "gid:[$GLL]:${PORT}"
echo "GIDFOREIGN $(${IB} map "sessname=gidf path=gid:[fe80::1234]:${PORT} device_path=disk.img" --control /tmp/clt.sock 2>&1 | tr -d '\\n')"
echo "GIDNOSCOPE $(${IB} map "sessname=gidn path=gid:[fe80::1234%nosuch0]:${PORT} device_path=disk.img" --control /tmp/clt.sock 2>&1 | tr -d '\\n')"
step done
echo "CLTLOG $(tail -c 1500 /tmp/clt.log | tr '\\n' '|')"
kill -TERM $CLT $SRV; wait $CLT; echo "CLT_EXIT $?"; wait $SRV; echo "SRV_EXIT $?"
exit 0`;
}

/**
 * The one way the returning path fails that is the guest kernel's, not ours (docs/rdma-transport.md,
 * "address removal"): the IO was clean, every reconnect attempt resolved the address and timed out
 * waiting for ESTABLISHED, the server saw no connection request after it closed the path (it logs
 * each one, accepted or refused), and rxe1 sent packets it never received back (the CM REQs).
 */
function reqsLostInGuestKernel(out: string): boolean {
  const diag = out.split('\n').find((l) => l.startsWith('DIAG_MP3 ')) ?? '';
  const net = out.split('\n').find((l) => l.startsWith('DIAG_NET ')) ?? '';
  const clt = diag.slice(0, diag.indexOf(' srv: '));
  const srv = diag.slice(diag.indexOf(' srv: '), diag.indexOf(' dmesg: '));
  // where the server let the old path go; a server that never did is ours to fix, not this
  const closed = Math.max(srv.lastIndexOf('closing path from ip:10.0.3.1'), srv.lastIndexOf('DISCONNECTED on connection 0 of the path from ip:10.0.3.1'));
  const afterClose = srv.slice(closed);
  const rxe1 = /rxe1 sent_pkts=(\d+) rcvd_pkts=(\d+)/.exec(net);
  return (
    closed >= 0 &&
    /^VERIFY_MP 0 /m.test(out) &&
    (clt.match(/connection 0 to 10\.0\.3\.1 refused: Connection timed out/g) ?? []).length >= 3 &&
    !/refused|rejected|ESTABLISHED/.test(afterClose.slice(1)) &&
    rxe1 !== null && Number(rxe1[1]) > Number(rxe1[2])
  );
}

test.serial('soft-RoCE guest: two RDMA paths through the daemons; one path\'s address goes away mid-IO and comes back, IO goes on without errors', async (t) => {
  t.timeout(1_150_000);
  let out = await runDaemonsGuest(t, { modules: ['dummy'] }, 540_000, multipathScript);
  if (reqsLostInGuestKernel(out)) {
    // seen in about 1 run in 15; a new guest starts from a clean kernel. Everything below is
    // asserted on that run, so the path must come back there.
    t.log(`the guest kernel did not loop rxe1's CM requests back to it; once more in a new guest:\n${line(out, 'DIAG_MP3')}\n${line(out, 'DIAG_NET')}`);
    out = await runDaemonsGuest(t, { modules: ['dummy'] }, 540_000, multipathScript);
  }
  t.is(rcJson(out, 'MAP_MP').rc, 0);
  const states = (key: string) => (JSON.parse(line(out, key)).device.path_states as Array<{ dst: string; state: string }>).map((p) => `${p.dst} ${p.state}`);
  t.deepEqual(states('SHOW_MP1'), ['ip:10.0.2.15 connected', 'ip:10.0.3.1 connected'], 'two paths up');
  const second = states('SHOW_MP2')[1]!;
  t.notRegex(second, / connected$/, `the path without its address is not connected: ${second}`);
  t.is(states('SHOW_MP2')[0], 'ip:10.0.2.15 connected');
  const v = rcJson(out, 'VERIFY_MP');
  t.is(v.rc, 0, `IO across the path loss: ${JSON.stringify(v.json)}`);
  t.is(v.json.write?.errors, 0);
  t.is(v.json.read?.mismatches, 0);
  t.is(v.json.write?.requests + v.json.read?.requests, 4000);
  // why a path did not come back, when it does not: the RDMA reasons of both daemons, the kernel's
  // rdma lines and where their threads sleep. Logged before the assertion: ava 6 assertions throw.
  const back = states('SHOW_MP3');
  if (back.some((p) => !p.endsWith(' connected'))) t.log(`${line(out, 'DIAG_MP3')}\n${line(out, 'DIAG_NET')}`);
  t.deepEqual(back, ['ip:10.0.2.15 connected', 'ip:10.0.3.1 connected'], 'the path is back');
  t.is(JSON.parse(line(out, 'SHOW_MP3')).device.bounce_count, 0, 'zero copy on both paths');

  // the counters: which path carried IO, what moved when the second one died
  type Counted = { requests: number; failovers: number };
  const counters = (key: string) => JSON.parse(line(out, key)).device.path_states as Counted[];
  const [c1, c2, c3, c4] = ['SHOW_MP1', 'SHOW_MP2', 'SHOW_MP3', 'SHOW_MP4'].map(counters);
  // how often a failed-over request met its original still running on the server (timing: logged, not asserted)
  t.log(`server requests that waited for their buffer id's original on the dead path: ${line(out, 'FENCE_WAITS')}`);
  t.log(`requests/failovers per path: ${[c1, c2, c3, c4].map((c) => c!.map((p) => `${p.requests}/${p.failovers}`).join(' ')).join(' → ')}`);
  t.true(c2![1]!.failovers >= 1, `requests in flight on the path that lost its address moved to the other: ${JSON.stringify(c2)}`);
  t.is(c2![0]!.failovers, 0, 'the surviving path never failed');
  t.true(c2![1]!.requests > 0, 'round-robin used the second path before it died');
  const v2 = rcJson(out, 'VERIFY_MP2');
  t.is(v2.rc, 0, `IO after the path came back: ${JSON.stringify(v2.json)}`);
  t.is(v2.json.write?.errors, 0);
  t.is(v2.json.read?.mismatches, 0);
  const grew = c4!.map((p, i) => p.requests - c3![i]!.requests);
  t.true(grew[0]! + grew[1]! >= 400, `the 400 requests after the return were counted: ${grew}`);
  t.true(grew[1]! >= 100, `the returning path carries its share under round-robin again: ${grew}`);
  t.is(c4![1]!.failovers, c3![1]!.failovers, 'nothing failed over after the return');
  t.is(rcJson(out, 'UNMAP_MP').rc, 0);

  // gid: on RoCE
  const [g4, gll, gllDev] = line(out, 'GIDS').split(' ');
  t.regex(g4!, /^0000:0000:0000:0000:0000:ffff:0a00:020f$/, "rxe0's RoCEv2 GID of 10.0.2.15");
  t.regex(gll!, /^fe80:/, "rxe0's default GID is link-local");
  t.is(gllDev, 'eth0');
  for (const [key, src] of [['GID4', /^ip:10\.0\.2\.15$/], ['GIDLL', /^ip:fe80:/]] as const) {
    const m = rcJson(out, `MAP_${key}`);
    t.is(m.rc, 0, `${key} map: ${JSON.stringify(m.json)}`);
    const v = rcJson(out, `VERIFY_${key}`);
    t.is(v.rc, 0, `${key} verified IO: ${JSON.stringify(v.json)}`);
    t.is(v.json.read?.mismatches, 0);
    const shown = JSON.parse(line(out, `SHOW_${key}`)).device;
    t.is(shown.transport, 'rdma');
    t.regex(shown.path_states[0].dst, /^gid:/);
    t.regex(shown.path_states[0].src, src, `${key}: connected through the GID's IP form`);
    t.true(shown.path_states[0].requests >= 64, `${key}: the IO went over the gid: path`);
    t.is(rcJson(out, `UNMAP_${key}`).rc, 0);
  }
  t.regex(line(out, 'GIDFOREIGN'), /EINVAL.*link-local GID fe80::1234 is not on this host.*%<netdev>/);
  t.regex(line(out, 'GIDNOSCOPE'), /EINVAL.*bad GID 'fe80::1234%nosuch0'.*naming an existing netdev/);
  t.is(rcJson(out, 'CLT_EXIT').rc, 0);
  t.is(rcJson(out, 'SRV_EXIT').rc, 0);
});
