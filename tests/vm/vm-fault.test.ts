// A VM's disk through crashes: a QEMU guest (TCG, hostroot) runs fio with crc32c verification at
// QD16 on the mapped disk while (1) the export server is SIGKILLed and started again 5 s later on
// the same port, (2) the client daemon is stopped and started again with its state dir, twice:
// SIGKILL (a crash), then SIGTERM (`systemctl restart`: the stopping daemon answers what the
// server answers within a bound and hands the rest over unanswered, never IOERR). QEMU's chardev
// redials with reconnect=1; the restored mapping takes the inflight area QEMU hands back and
// resubmits what was in flight. The guest sees no error at all: fio's writes and
// its read-back verification pass, the kernel logs no IO error, and the server's file holds the
// bytes the guest reads back. Daemons and CLI as a user runs them.
import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ibnbdJson, showDevice, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { startGuest } from '../../harness/qemu/harness.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { fileBytes, MiB } from '../support/vhost-helpers.js';

const DISK = 64 * MiB;
const FIO_MIB = 24;

// fio paces itself (rate_iops) so that its write phase spans the outage; then it reads back and
// checks every block. The guest reports fio's exit code, the kernel's IO errors and an md5 of what
// it reads back with O_DIRECT.
const fioScript = (mib: number) => `
mark fio-start
fio --name=w --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bs=4k \\
  --size=${mib}M --rate_iops=300 --verify=crc32c --verify_fatal=1 --do_verify=1 \\
  --output-format=terse --terse-version=3 > /tmp/fio.out 2>&1
echo "fio-rc=$?"
grep -ci 'error' /tmp/fio.out | sed 's/^/fio-error-lines=/'
echo "kernel-io-errors=$(dmesg | grep -ci 'I/O error')"
echo 3 > /proc/sys/vm/drop_caches
echo "guest-md5=$(dd if=/dev/vda bs=1M count=${mib} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
`;

test.serial('a guest running fio --verify=crc32c at QD16 rides out a server SIGKILL and restart: no error, the bytes are on the server', async (t) => {
  t.timeout(420_000);
  const dir = tempDir(t, 'vmfault');
  const exportsDir = join(dir, 'exports');
  mkdirSync(exportsDir);
  sparseFile(join(exportsDir, 'vm.img'), DISK);
  let server = await startServerDaemon(t, dir, exportsDir);
  const port = server.port;
  const client = await startClientDaemon(t, dir, ['--heartbeat-ms', '500', '--heartbeat-missed-max', '3', '--reconnect-delay-ms', '1000']);
  const { device } = await ibnbdJson<{ device: any }>(['map', `sessname=vmf path=ip:127.0.0.1:${port} device_path=vm.img`, '--control', client.control]);
  const show = () => showDevice(client.control, device.name);

  const guest = await startGuest({
    mode: 'hostroot',
    disks: [{ socket: device.socket }],
    cpus: 1,
    timeoutMs: 380_000,
    script: fioScript(FIO_MIB),
  });
  t.teardown(() => guest.kill().then(() => undefined));
  await guest.waitForMarker('fio-start', 200_000).catch((e) => {
    throw new Error(`${String(e)}\n${guest.serial().slice(-3000)}`);
  });
  // fio is writing: wait for 2 MiB of its writes, then kill the server under it
  const end = Date.now() + 120_000;
  while ((await show()).stats.writeBytes < 2 * MiB) {
    if (Date.now() > end) return t.fail(`fio never wrote: ${guest.serial().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await server.stop('SIGKILL');
  const killedAt = Date.now();
  await new Promise((r) => setTimeout(r, 5_000));
  const during = await show();
  t.is(during.state, 'reconnecting', 'the device waits for its server');
  const d = join(dir, 'srv2');
  mkdirSync(d);
  server = await startServerDaemon(t, d, exportsDir, [], port);
  const restartedAt = Date.now();
  let open = await show();
  while (open.state !== 'open' && Date.now() - restartedAt < 30_000) {
    await new Promise((r) => setTimeout(r, 50));
    open = await show();
  }
  t.is(open.state, 'open');
  const writesAtOpen = open.stats.writeBytes;
  let flowing = open;
  while (flowing.stats.writeBytes === writesAtOpen && Date.now() - restartedAt < 30_000) {
    await new Promise((r) => setTimeout(r, 20));
    flowing = await show();
  }
  t.log(`server away ${restartedAt - killedAt} ms; device open ${Date.now() - restartedAt} ms after the restart, IO flowing again then`);

  const r = await guest.exited;
  t.is(r.exitCode, 0, r.output.slice(-4000));
  t.regex(r.output, /fio-rc=0/, 'fio wrote and verified every block');
  t.regex(r.output, /kernel-io-errors=0/, 'the guest kernel saw no IO error');
  const after = await show();
  t.is(after.stats.errors, 0, 'no request answered with an error');
  const md5 = /guest-md5=([0-9a-f]{32})/.exec(r.output)?.[1];
  t.is(createHash('md5').update(fileBytes(join(exportsDir, 'vm.img'), 0, FIO_MIB * MiB)).digest('hex'), md5 ?? 'no md5 in the output', "the server's file holds what the guest reads");
});

test.serial('a guest running fio --verify=crc32c at QD16 rides out a SIGKILL and a SIGTERM of the client daemon: the mapping is restored, what was in flight resubmitted, no error', async (t) => {
  t.timeout(420_000);
  const MIB_WRITTEN = 40; // ~34 s of writes at 300 IOPS: both restarts land in the write phase
  const dir = tempDir(t, 'vmrestart');
  const exportsDir = join(dir, 'exports');
  mkdirSync(exportsDir);
  sparseFile(join(exportsDir, 'vm.img'), DISK);
  const server = await startServerDaemon(t, dir, exportsDir);
  const stateDir = join(dir, 'state');
  const startClient = () => startClientDaemon(t, dir, ['--heartbeat-ms', '500', '--heartbeat-missed-max', '3', '--reconnect-delay-ms', '1000', '--state-dir', stateDir]);
  let client = await startClient();
  const { device } = await ibnbdJson<{ device: any }>(['map', `sessname=vmr path=ip:127.0.0.1:${server.port} device_path=vm.img`, '--control', client.control]);
  const show = () => showDevice(client.control, device.name);

  const guest = await startGuest({
    mode: 'hostroot',
    disks: [{ socket: device.socket, reconnect: true }],
    cpus: 1,
    timeoutMs: 380_000,
    script: fioScript(MIB_WRITTEN),
  });
  t.teardown(() => guest.kill().then(() => undefined));
  await guest.waitForMarker('fio-start', 200_000).catch((e) => {
    throw new Error(`${String(e)}\n${guest.serial().slice(-3000)}`);
  });
  for (const [round, atMiB, signal] of [[1, 2, 'SIGKILL'], [2, 8, 'SIGTERM']] as const) {
    const end = Date.now() + 120_000;
    while ((await show()).stats.writeBytes < atMiB * MiB) {
      if (Date.now() > end) return t.fail(`fio never wrote: ${guest.serial().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const stopped = await client.stop(signal);
    if (signal === 'SIGTERM') t.is(stopped, 0, 'SIGTERM: a clean exit');
    const killedAt = Date.now();
    client = await startClient();
    const d = await show();
    t.is(d.socket, device.socket, `restart ${round}: the mapping is back on its socket`);
    // IO flows once QEMU has redialled and the resubmitted requests went out
    let flowing = d;
    while (flowing.stats.writeBytes === 0 && Date.now() - killedAt < 60_000) {
      await new Promise((r) => setTimeout(r, 20));
      flowing = await show();
    }
    t.true(flowing.stats.writeBytes > 0, `restart ${round}: guest IO flows again`);
    t.log(`restart ${round} (${signal}): the guest's writes stalled ${Date.now() - killedAt} ms (stop, restart, QEMU redial, resubmit)`);
  }
  const r = await guest.exited;
  t.is(r.exitCode, 0, r.output.slice(-4000));
  t.regex(r.output, /fio-rc=0/, 'fio wrote and verified every block');
  t.regex(r.output, /kernel-io-errors=0/, 'the guest kernel saw no IO error');
  t.is((await show()).stats.errors, 0, 'no request answered with an error');
  const md5 = /guest-md5=([0-9a-f]{32})/.exec(r.output)?.[1];
  t.is(createHash('md5').update(fileBytes(join(exportsDir, 'vm.img'), 0, MIB_WRITTEN * MiB)).digest('hex'), md5 ?? 'no md5 in the output', "the server's file holds what the guest reads");
});
