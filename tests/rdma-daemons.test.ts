// RDMA through the daemons (docs/rdma-transport.md, "Through the daemons").
// - On this host (no RDMA device): the client daemon's default transport is tcp, transport=rdma is
//   ENODEV with the reason, and `ibnbd server` serves TCP only.
// - In one soft-RoCE guest (hostroot, rxe on eth0), everything as a user runs it: `ibnbd server`
//   and `ibnbd client` child processes, the `ibnbd` CLI, libblkio (ibnbd-blkio) on the vhost-user
//   socket:
//   A. our client ↔ our server over RDMA (the default in the guest), IO verified at QD1/QD32,
//      4 KiB … 1 MiB, bytes in the server's file, `ibnbd show` bounce count 0 (zero copy);
//   B. our client daemon ↔ the kernel's rnbd_server (brd ram0): verified IO, its sysfs tree shows
//      our session, our unmap removes it;
//   C. the kernel's rnbd_client ↔ our server daemon: /dev/rnbdN, O_DIRECT bytes in our file,
//      a second rw map EPERM, migration allowed, unmap normal and force, `ibnbd server sessions`.
import test from 'ava';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostHasRdma } from '../src/backend/transport.js';
import { cliPath, ibnbd, ibnbdJson, startClientDaemon, startServerDaemon } from './daemons.js';
import { runGuest } from './qemu/harness.js';
import { kernelRnbdGuestOptions, kernelRnbdPrelude } from './qemu/rnbd-kernel.js';
import { sparseFile, tempDir } from './fixtures.js';
import { expectedPattern, MiB, tool } from './vhost-helpers.js';

const sanitizerEnv = process.env.IBNBD_SANITIZE === '1'
  ? `env IBNBD_SANITIZE=1 LD_PRELOAD=${process.env.LD_PRELOAD ?? ''} ASAN_OPTIONS=${process.env.ASAN_OPTIONS ?? 'detect_leaks=0'} `
  : '';

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
mkdir -p /tmp/exp /tmp/run && truncate -s 128M /tmp/exp/disk.img
${node} ${cliPath} server --listen 10.0.2.15:${PORT} --dev-search-path /tmp/exp --control /tmp/srv.sock --queue-depth 64 2> /tmp/srv.log &
SRV=$!
${node} ${cliPath} client --control /tmp/clt.sock --run-dir /tmp/run 2> /tmp/clt.log &
CLT=$!
i=0; while [ ! -S /tmp/srv.sock ] || [ ! -S /tmp/clt.sock ]; do i=$((i+1)); [ $i -gt 900 ] && { cat /tmp/srv.log /tmp/clt.log; exit 23; }; sleep 0.1; done
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

echo "== B: our client daemon <-> kernel rnbd_server (ram0)"
${IB} map "sessname=kd1 path=ip:10.0.2.15 device_path=ram0" --control /tmp/clt.sock --json > /tmp/m.json; echo "MAP_B $? $(tr -d '\\n' < /tmp/m.json)"
S=$(rnbd_srv_sess ram0 kd1)
echo "KSRV_B ro=$(cat $S/read_only 2>&1) path=$(cat $S/mapping_path 2>&1)"
${verify('/tmp/run/vhost/ibnbd0.sock', 21, { offset: 0, count1: 16, count32: 32, max32: MiB / 2, span: 16 * MiB })}
echo "SHOW_B $(${IB} show ibnbd0 --control /tmp/clt.sock --json | tr -d '\\n')"
${IB} unmap ibnbd0 --control /tmp/clt.sock; echo "UNMAP_B $?"
rnbd_srv_wait_gone ram0 kd1; echo "KSRV_GONE_B $?"
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
echo "SESS_C $(${IB} server sessions --control /tmp/srv.sock --json | tr -d '\\n')"
rnbd_unmap $D3 force; echo "KUNMAP_FORCE $?"
rnbd_unmap $D1 normal; echo "KUNMAP_NORMAL $?"
sleep 1
echo "SESS_C_AFTER $(${IB} server sessions --control /tmp/srv.sock --json | tr -d '\\n')"
step C done
kill -TERM $CLT $SRV; wait $CLT; echo "CLT_EXIT $?"; wait $SRV; echo "SRV_EXIT $?"
dmesg | grep -E 'rtrs|rnbd' | grep -iE 'err|fail|invalid|bug' | head -5
exit 0`;
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

test.serial('soft-RoCE guest: the daemons over RDMA — ours↔ours zero copy, our client↔kernel rnbd_server, kernel rnbd_client↔our server', async (t) => {
  t.timeout(900_000);
  const outDir = tempDir(t, 'rdmad-out');
  const node = `${sanitizerEnv}${process.execPath}`;
  const r = await runGuest({
    ...kernelRnbdGuestOptions({ shares: [{ hostPath: outDir, tag: 'out', guestPath: '/tmp/out' }] }),
    cpus: 2,
    memMiB: 1024,
    timeoutMs: 840_000,
    script: guestScript(node),
    // progress for whoever watches a slow run: IBNBD_GUEST_LOG=/path
    onSerialLine: process.env.IBNBD_GUEST_LOG ? (l) => appendFileSync(process.env.IBNBD_GUEST_LOG!, `${l}\n`) : undefined,
  });
  t.log(r.output.split('\n').filter((l) => l.startsWith('STEP') || l.startsWith('VERIFY')).join('\n'));
  if (r.exitCode !== 0) t.log(r.output.slice(-6000));
  t.is(r.exitCode, 0);
  const out = r.output;
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
  t.regex(line(out, 'KSRV_B'), /^ro=0 path=ram0$/, "the kernel server's sysfs shows our session's open");
  const vB = out.split('\n').filter((l) => l.startsWith('VERIFY_QD'));
  t.is(vB.length, 4);
  for (const l of vB.slice(2)) t.regex(l, /^VERIFY_QD\d+ 0 /, `B ${l}`);
  const showB = JSON.parse(line(out, 'SHOW_B')).device;
  t.is(showB.bounce_count, 0, 'zero copy against the kernel server too');
  t.is(rcJson(out, 'UNMAP_B').rc, 0);
  t.is(rcJson(out, 'KSRV_GONE_B').rc, 0, "our unmap removed the session's open from the kernel server's tree");

  // C
  const kmap = line(out, 'KMAP_C1');
  t.regex(kmap, /^0 \/dev\/rnbd\d+ 262144$/, `kernel client mapped our export (128 MiB): ${kmap}`);
  t.is(rcJson(out, 'KWRITE_C').rc, 0);
  t.is(rcJson(out, 'KREAD_C').rc, 0);
  t.regex(out, /KREADBACK_OK/);
  t.regex(out, /KFILE_OK/, "the kernel client's O_DIRECT bytes are in our server's file");
  t.regex(line(out, 'KMAP_C2'), /^1 .*Operation not permitted/, 'a second rw map from another session: EPERM');
  t.regex(line(out, 'KMAP_C3'), /^0 \/dev\/rnbd\d+/, 'migration allowed next to the rw holder');
  const sessC = line(out, 'SESS_C');
  t.regex(sessC, /kc1/);
  t.regex(sessC, /kc3/);
  t.notRegex(sessC, /kc2/);
  t.is(rcJson(out, 'KUNMAP_FORCE').rc, 0);
  t.is(rcJson(out, 'KUNMAP_NORMAL').rc, 0);
  t.notRegex(line(out, 'SESS_C_AFTER'), /kc1|kc3/, 'the sessions are gone after unmap');
  t.is(rcJson(out, 'CLT_EXIT').rc, 0);
  t.is(rcJson(out, 'SRV_EXIT').rc, 0);
});

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
IBNBD_RDMA_DEBUG=1 ${node} ${cliPath} client --control /tmp/clt.sock --run-dir /tmp/run --heartbeat-ms 300 --heartbeat-missed-max 3 --reconnect-delay-ms 1000 2> /tmp/clt.log &
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
echo "DIAG_MP3 clt: $(grep 'ibnbd rdma' /tmp/clt.log | tail -n 12 | tr '\\n' '|') srv: $(grep 'ibnbd rdma' /tmp/srv.log | tail -n 12 | tr '\\n' '|') dmesg: $(dmesg | grep -iE 'cm_|rxe|rtrs|rdma' | tail -n 12 | tr '\\n' '|') threads: $(for t in /proc/$SRV/task/* /proc/$CLT/task/*; do printf '%s ' "$(cat $t/wchan 2>/dev/null)"; done)"
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

test.serial('soft-RoCE guest: two RDMA paths through the daemons; one path\'s address goes away mid-IO and comes back, IO goes on without errors', async (t) => {
  t.timeout(600_000);
  const node = `${sanitizerEnv}${process.execPath}`;
  const r = await runGuest({
    ...kernelRnbdGuestOptions({ modules: ['dummy'] }),
    cpus: 2,
    memMiB: 1024,
    timeoutMs: 540_000,
    script: multipathScript(node),
    onSerialLine: process.env.IBNBD_GUEST_LOG ? (l) => appendFileSync(process.env.IBNBD_GUEST_LOG!, `${l}\n`) : undefined,
  });
  t.log(r.output.split('\n').filter((l) => l.startsWith('STEP') || l.startsWith('VERIFY')).join('\n'));
  if (r.exitCode !== 0) t.log(r.output.slice(-6000));
  t.is(r.exitCode, 0);
  const out = r.output;
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
  // rdma lines and where their threads sleep
  if (!t.deepEqual(states('SHOW_MP3'), ['ip:10.0.2.15 connected', 'ip:10.0.3.1 connected'], 'the path is back')) t.log(line(out, 'DIAG_MP3'));
  t.is(JSON.parse(line(out, 'SHOW_MP3')).device.bounce_count, 0, 'zero copy on both paths');

  // the counters: which path carried IO, what moved when the second one died
  type Counted = { requests: number; failovers: number };
  const counters = (key: string) => JSON.parse(line(out, key)).device.path_states as Counted[];
  const [c1, c2, c3, c4] = ['SHOW_MP1', 'SHOW_MP2', 'SHOW_MP3', 'SHOW_MP4'].map(counters);
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
