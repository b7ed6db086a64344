// A real QEMU guest (TCG, vhost-user-blk-pci) on a NativeVhostBlk whose session goes to a real
// export server on a real file: QEMU's handshake (GET_INFLIGHT_FD, CONFIG, MQ ...) differs from
// libblkio's, so the back-end is checked against it too. Then a forced disconnect while the
// guest is doing IO: QEMU (reconnect=1) comes back on the same socket and the guest's data is
// intact.
import test from 'ava';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { runGuest, startGuest } from '../../harness/qemu/harness.js';
import { MiB, fileBytes, mapDevice, optionsFromRsp, serveFile, startDevice, waitFor } from '../support/vhost-helpers.js';

// The bytes the guest writes: busybox `yes` output, easy to recompute on the host.
function yesPattern(word: string, len: number): Buffer {
  const line = Buffer.from(word + '\n');
  const b = Buffer.alloc(len);
  for (let off = 0; off < len; off += line.length) line.copy(b, off, 0, Math.min(line.length, len - off));
  return b;
}

test.serial('QEMU guest: size, GET_ID serial, 2 queues, O_DIRECT writes land in the server file', async (t) => {
  const srv = serveFile(t, 64 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'vm.sock'), { queues: 2, serial: 'ibnbd-vm-0001' }));
  const r = await runGuest({
    disks: [{ socket: dev.socket, numQueues: 2 }],
    cpus: 2,
    timeoutMs: 120_000,
    script: [
      'cat /sys/block/vda/size',
      'cat /sys/block/vda/serial; echo',
      'ls /sys/block/vda/mq | wc -l',
      'yes ibnbd-guest-pattern | head -c 2097152 > /tmp/p',
      'dd if=/tmp/p of=/dev/vda bs=64k seek=16 oflag=direct conv=fsync 2>/dev/null',
      'dd if=/dev/vda bs=64k skip=16 count=32 iflag=direct 2>/dev/null | md5sum',
      'md5sum < /tmp/p',
    ].join('\n'),
  });
  t.is(r.exitCode, 0, r.output);
  const lines = r.output.trim().split('\n').map((l) => l.trim());
  t.is(lines[0], String(64 * 2048), 'capacity in sectors');
  t.is(lines[1], 'ibnbd-vm-0001', 'serial from GET_ID');
  t.is(lines[2], '2', 'two hardware queues');
  t.is(lines[3]!.split(' ')[0], lines[4]!.split(' ')[0], 'read back what was written');
  const want = yesPattern('ibnbd-guest-pattern', 2 * MiB);
  t.is(lines[4]!.split(' ')[0], createHash('md5').update(want).digest('hex'));
  t.true(fileBytes(srv.file, MiB, 2 * MiB).equals(want), 'the bytes are in the server file at 1 MiB');
  const s = dev.vhost.stats();
  t.is(s.errors, 0);
  t.true(s.writeBytes >= 2 * MiB && s.readBytes >= 2 * MiB);
});

test.serial('forced disconnect during guest IO: QEMU reconnects, the guest completes and its data is intact', async (t) => {
  const srv = serveFile(t, 64 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'rc.sock'), { serial: 'ibnbd-rc' }));
  const g = await startGuest({
    disks: [{ socket: dev.socket, reconnect: true }],
    timeoutMs: 150_000,
    script: [
      'yes ibnbd-reconnect | head -c 8388608 > /tmp/p',
      'mark ready',
      'i=0; while [ $i -lt 6 ]; do dd if=/tmp/p of=/dev/vda bs=128k oflag=direct 2>/dev/null || echo ddfail; i=$((i+1)); done',
      'sync',
      'dd if=/dev/vda bs=128k count=64 iflag=direct 2>/dev/null | md5sum',
      'md5sum < /tmp/p',
    ].join('\n'),
  });
  t.teardown(() => g.kill());
  await g.waitForMarker('ready', 90_000);
  t.true(await waitFor(() => dev.vhost.stats().writeBytes > 2 * MiB, 60_000), 'guest writing');
  t.true(await dev.vhost.disconnectFrontend(), 'the front-end was connected');
  t.true(await waitFor(() => dev.vhost.frontendConnected, 30_000), 'QEMU reconnected on the same socket');
  const res = await g.exited;
  t.is(res.exitCode, 0, res.output + res.serial.slice(-2000));
  const lines = res.output.trim().split('\n').map((l) => l.trim()).filter((l) => /^[0-9a-f]{32}/.test(l));
  t.is(lines.length, 2, res.output);
  t.is(lines[0]!.split(' ')[0], lines[1]!.split(' ')[0], 'the guest reads back its data after the reconnect');
  t.true(fileBytes(srv.file, 0, 8 * MiB).equals(yesPattern('ibnbd-reconnect', 8 * MiB)), 'server file holds it');
  t.true(dev.vhost.stats().connections >= 2);
});
