// The RDMA transport (RTRS on the wire, native/transport/rdma/, docs/rdma-transport.md).
// - On this host (no RDMA device) creating an RDMA session or server fails at once with ENODEV
//   and says why.
// - In a QEMU guest with soft-RoCE (rdma_rxe on eth0), through the JS bindings: our export server
//   and our client (harness/guest/rdma-guest-scenario.ts loopback), then the Linux kernel's own RTRS/RNBD
//   as the peer in both directions (its rnbd-client maps our export; our client talks to its
//   rtrs-server + rnbd-server).
import test from 'ava';
import { fileURLToPath } from 'node:url';
import { loadNative, linkProbe } from '../../src/backend/native.js';
import { guestSanitizerEnv } from '../../harness/qemu/sanitizer-env.js';
import { runGuest, type GuestResult } from '../../harness/qemu/harness.js';
import { kernelRnbdDir } from '../../harness/qemu/rnbd-kernel.js';

const scenario = fileURLToPath(new URL('../../harness/guest/rdma-guest-scenario.js', import.meta.url));
const sanitizerEnv = guestSanitizerEnv();
const node = `${sanitizerEnv}${process.execPath}`;
const RXE = 'rdma link add rxe0 type rxe netdev eth0 || exit 20';
const GUEST = { mode: 'hostroot' as const, netdev: true, cpus: 2, memMiB: 1024, modules: ['crc32_generic', 'rdma_rxe', 'rdma_ucm', 'ib_uverbs', 'brd', 'dummy'] };
// a second RDMA address in the same guest: a dummy netdev with its own rxe device
const SECOND = `{ ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy; } && ip addr add 10.0.3.1/24 dev dummy0 && ip link set dummy0 up && rdma link add rxe1 type rxe netdev dummy0 || exit 30`;

interface Run { size: number; qd: number; writeErrnos: number[]; readErrnos: number[]; readBackOk: boolean; backingOk: boolean }
interface PathJs { state: string; hbRttNs: number; src: string; dst: string }
interface Result {
  sanitize: boolean;
  queueDepth: number;
  maxIoSize: number;
  sessInfo: { errno: number; type: string; ver: number };
  open: { errno: number; nsectors: number };
  runs: Run[];
  bounceRegistered: number;
  bounce?: { errnos: number[]; readBackOk: boolean; counted: number };
  pastEndErrno?: number;
  paths: PathJs[];
  multipath?: { sessInfo: { errno: number }; runs: Run[]; bounceRegistered: number; paths: PathJs[] };
  polled?: { runs: Run[]; bounceRegistered: number; pollHits: number };
  deadPeer?: {
    rttBefore: number; connectedAfter: boolean; detectMs: number; events: string[]; state: string; requestWhileDown: number;
    reconnected: boolean; reconnectMs: number; eventsAfter: string[]; pathAfter: PathJs & { reconnects: number }; sessInfoAfter: { errno: number; type: string };
  };
}

function parseResult(t: import('ava').ExecutionContext, r: GuestResult): Result {
  const line = r.output.split('\n').find((l) => l.startsWith('RDMA-RESULT '));
  if (!line) {
    t.log(r.output.slice(-4000));
    throw new Error(`guest produced no RDMA-RESULT (exit ${r.exitCode})`);
  }
  return JSON.parse(line.slice('RDMA-RESULT '.length)) as Result;
}

function checkIo(t: import('ava').ExecutionContext, res: Result, what: string) {
  t.is(res.sanitize, process.env.IBNBD_SANITIZE === '1', 'the guest ran the same addon build as this job');
  t.is(res.sessInfo.errno, 0, `${what}: SESS_INFO answered`);
  t.is(res.sessInfo.type, 'SESS_INFO_RSP');
  t.is(res.sessInfo.ver, 2);
  t.is(res.open.errno, 0, `${what}: OPEN answered`);
  t.true(res.open.nsectors > 0);
  t.is(res.maxIoSize, 126976, 'chunk 128 KiB minus the 4 KiB header room, as the kernel');
  const sizes = res.runs.map((r) => `${r.size}/${r.qd}`);
  t.deepEqual(sizes, ['4096/1', '4096/32', '65536/1', '65536/32', `${res.maxIoSize}/1`, `${res.maxIoSize}/32`]);
  for (const r of res.runs) {
    t.deepEqual(r.writeErrnos, [0], `${what}: writes ${r.size} QD${r.qd}`);
    t.deepEqual(r.readErrnos, [0], `${what}: reads ${r.size} QD${r.qd}`);
    t.true(r.readBackOk, `${what}: read back = written, ${r.size} QD${r.qd}`);
    t.true(r.backingOk, `${what}: bytes on the server's backing store, ${r.size} QD${r.qd}`);
  }
  t.is(res.bounceRegistered, 0, `${what}: registered memory never goes through the bounce pool`);
  t.is(res.paths.length, 1);
  t.is(res.paths[0]!.state, 'connected');
  t.true(res.paths[0]!.hbRttNs > 0, `${what}: heartbeat answered (rtt measured)`);
}

test('without an RDMA device, sessions and servers fail at once with ENODEV and the reason', (t) => {
  const probe = linkProbe();
  const { NativeClientSession, NativeServer } = loadNative<{
    NativeClientSession: new (o: object) => unknown;
    NativeServer: new (o: object, cb: (e: unknown) => void) => unknown;
  }>();
  const clientOpts = { transport: 'rdma', sessname: 's', paths: [{ dst: { kind: 'ip', addr: '10.0.2.15', port: 1234 } }] };
  if (probe.ibvDevices > 0) {
    // a host with RDMA: creation succeeds (connecting is another matter)
    t.notThrows(() => new NativeClientSession(clientOpts));
    return;
  }
  const started = Date.now();
  const e = t.throws(() => new NativeClientSession(clientOpts)) as Error & { code: string };
  t.is(e.code, 'ENODEV');
  t.regex(e.message, /no RDMA device on this host/);
  t.regex(e.message, /rdma link add/);
  const s = t.throws(() => new NativeServer({ transport: 'rdma', listen: [{ kind: 'ip', addr: '::', port: 0 }] }, () => {})) as Error & { code: string };
  t.is(s.code, 'ENODEV');
  t.regex(s.message, /no RDMA device/);
  t.true(Date.now() - started < 2000, 'no waiting for a device');
  // bad addresses are EINVAL before the device question
  const bad = t.throws(() => new NativeClientSession({ ...clientOpts, paths: [{ dst: { kind: 'ip', addr: 'not-an-ip', port: 1 } }] })) as Error & { code: string };
  t.is(bad.code, 'EINVAL');
});

test.serial('soft-RoCE guest: our server and client over RTRS — admin, verified IO into the file, zero copy, heartbeats, two paths, dead peer and reconnect', async (t) => {
  t.timeout(240_000);
  const r = await runGuest({ ...GUEST, timeoutMs: 180_000, script: `${RXE}\n${SECOND}\ntimeout 150 ${node} ${scenario} loopback 10.0.2.15 10.0.3.1` });
  const res = parseResult(t, r);
  t.is(r.exitCode, 0);
  checkIo(t, res, 'ours↔ours');
  t.is(res.queueDepth, 64);
  t.deepEqual(res.bounce!.errnos, [0, 0]);
  t.true(res.bounce!.readBackOk, 'unregistered memory round trip through the bounce pool');
  t.is(res.bounce!.counted, 2, 'each bounced request counted');
  t.true(res.pastEndErrno! < 0, 'the server errno arrives in the response immediate');
  // the same patterns (other offsets and bytes) with the IO threads polling their CQs themselves
  const polled = res.polled!;
  t.deepEqual(polled.runs.map((r) => `${r.size}/${r.qd}`), res.runs.map((r) => `${r.size}/${r.qd}`));
  for (const r of polled.runs) t.true(r.readBackOk && r.backingOk && r.writeErrnos.join() === '0' && r.readErrnos.join() === '0', `polled IO ${r.size} QD${r.qd}`);
  t.is(polled.bounceRegistered, 0);
  t.true(polled.pollHits > 0, 'polls found completions');
  const mp = res.multipath!;
  t.is(mp.sessInfo.errno, 0);
  t.deepEqual(mp.paths.map((p) => [p.dst, p.state]), [['ip:10.0.2.15', 'connected'], ['ip:10.0.3.1', 'connected']], 'two paths up');
  for (const r of mp.runs) t.true(r.readBackOk && r.backingOk && r.writeErrnos.join() === '0' && r.readErrnos.join() === '0', `multipath IO ${r.size} QD${r.qd}`);
  t.is(mp.bounceRegistered, 0, 'zero copy on both paths (the region is registered per path)');
  t.true(mp.paths.every((p) => p.hbRttNs > 0), 'heartbeats on each path');
  const d = res.deadPeer!;
  t.true(d.rttBefore > 0);
  t.is(d.state, 'reconnecting', 'a frozen server is declared dead; the path goes to reconnecting');
  t.deepEqual(d.events, ['connected', 'disconnected']);
  t.true(d.detectMs >= 600 && d.detectMs < 10_000, `missed heartbeats (200 ms × 3) detected in ${d.detectMs} ms`);
  t.log(`dead peer detected in ${d.detectMs} ms, reconnected ${d.reconnectMs} ms after the new server started`);
  t.true(d.requestWhileDown < 0, 'a request without a connected path fails');
  t.true(d.reconnected, `back up ${d.reconnectMs} ms after a new server took the port`);
  t.deepEqual(d.eventsAfter, ['connected', 'disconnected', 'reconnected']);
  t.is(d.pathAfter.state, 'connected');
  t.true(d.pathAfter.reconnects >= 1);
  t.deepEqual(d.sessInfoAfter, { errno: 0, type: 'SESS_INFO_RSP' }, 'requests work on the re-established path');
});

test.serial("soft-RoCE guest: the kernel's RTRS/RNBD as peer — its rnbd-client maps our export, our client uses its rnbd-server", async (t) => {
  t.timeout(300_000);
  const ko = kernelRnbdDir();  // built by scripts/setup.sh step 4b
  const script = `${RXE}
B=$(command -v busybox)
K=/tmp/kmod
$B insmod $K/rtrs-core.ko && $B insmod $K/rtrs-server.ko sess_queue_depth=64 && $B insmod $K/rnbd-server.ko dev_search_path=/dev \\
  && $B insmod $K/rtrs-client.ko && $B insmod $K/rnbd-client.ko || exit 21
echo "== our client -> kernel rtrs-server/rnbd-server (ram0)"
timeout 100 ${node} ${scenario} kernel-server 10.0.2.15 ram0 || exit 22
echo "== kernel rnbd-client -> our export server"
mkdir -p /tmp/exp && truncate -s 16M /tmp/exp/disk.img
timeout 120 ${node} ${scenario} serve 10.0.2.15 0 /tmp/exp > /tmp/serve.out 2>&1 &
SP=$!
i=0; while ! grep -q SERVING /tmp/serve.out; do i=$((i+1)); [ $i -gt 600 ] && { cat /tmp/serve.out; exit 23; }; sleep 0.1; done
PORT=$(sed -n 's/^SERVING //p' /tmp/serve.out)
echo "dest_port=$PORT sessname=kclt path=ip:10.0.2.15 device_path=disk.img access_mode=rw" > /sys/class/rnbd-client/ctl/map_device || exit 24
i=0; while [ ! -b /dev/rnbd0 ]; do i=$((i+1)); [ $i -gt 300 ] && exit 25; sleep 0.1; done
echo "KCLIENT_SIZE $(cat /sys/block/rnbd0/size)"
head -c 1048576 /dev/urandom > /tmp/pat
dd if=/tmp/pat of=/dev/rnbd0 bs=64k seek=16 oflag=direct status=none || exit 26
dd if=/dev/rnbd0 of=/tmp/back bs=64k skip=16 count=16 iflag=direct status=none || exit 27
cmp /tmp/pat /tmp/back && echo KCLIENT_READBACK_OK
echo normal > /sys/block/rnbd0/rnbd/unmap_device || exit 28
kill -TERM $SP; wait $SP
cmp -n 1048576 -i 0:1048576 /tmp/pat /tmp/exp/disk.img && echo KCLIENT_FILE_OK
dmesg | grep -E 'rtrs|rnbd' | grep -iE 'err|fail|invalid' | head -5
exit 0`;
  const r = await runGuest({ ...GUEST, timeoutMs: 240_000, shares: [{ hostPath: ko, tag: 'kmod', guestPath: '/tmp/kmod' }], script });
  if (r.exitCode !== 0) t.log(r.output.slice(-4000));
  t.is(r.exitCode, 0);
  const res = parseResult(t, r);
  checkIo(t, res, 'ours→kernel');
  t.is(res.queueDepth, 64, "the kernel server's sess_queue_depth");
  t.regex(r.output, /KCLIENT_SIZE 32768\b/, 'the kernel client sees the exported file size');
  t.regex(r.output, /KCLIENT_READBACK_OK/, 'kernel client: O_DIRECT write then read back over our server');
  t.regex(r.output, /KCLIENT_FILE_OK/, "kernel client's bytes landed in our server's file");
});
