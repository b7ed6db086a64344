// Real VMs on our vhost-user-blk sockets: QEMU guests (TCG) booted by harness/qemu/harness.ts, the
// daemons and the CLI as a user runs them (tests/support/daemons.ts), the bytes checked in the server's file.
import test, { type ExecutionContext } from 'ava';
import { mkdirSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { ibnbd, ibnbdJson, startClientDaemon, startServerDaemon, type ClientDaemon } from '../support/daemons.js';
import { startGuest, runGuest } from '../../harness/qemu/harness.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { fileBytes, MiB } from '../support/vhost-helpers.js';

const DISK = 64 * MiB;
/** what the server's file grows to while the VM runs, and `ibnbd resize` tells the guest */
const GROWN = 96 * MiB;

async function setup(t: ExecutionContext) {
  const dir = tempDir(t, 'vm');
  const exportsDir = join(dir, 'exports');
  mkdirSync(exportsDir);
  sparseFile(join(exportsDir, 'vm.img'), DISK);
  const server = await startServerDaemon(t, dir, exportsDir);
  let client = await startClientDaemon(t, dir);
  const mapString = (extra = '') => `sessname=vm path=ip:127.0.0.1:${server.port} device_path=vm.img ${extra}`.trim();
  return {
    dir,
    file: join(exportsDir, 'vm.img'),
    server,
    get client(): ClientDaemon {
      return client;
    },
    async restartClient(): Promise<void> {
      await client.stop('SIGTERM');
      client = await startClientDaemon(t, dir);
    },
    mapString,
  };
}

// The guest's view of the disk, the O_DIRECT round trip and a filesystem; while it holds the disk
// the host checks EBUSY and restarts the client daemon behind QEMU's reconnect=1.
const RW_SCRIPT = `
set -e
d=/sys/block/vda
echo "size=$(cat $d/size) lbs=$(cat $d/queue/logical_block_size) pbs=$(cat $d/queue/physical_block_size) ro=$(cat $d/ro)"
echo "discard=$(cat $d/queue/discard_max_bytes) wzeroes=$(cat $d/queue/write_zeroes_max_bytes) queues=$(ls $d/mq | wc -l) serial=$(cat $d/serial)"
# a pattern with O_DIRECT at 40 MiB (past the filesystem below), caches dropped, read back
dd if=/dev/urandom of=/tmp/pat bs=64k count=32 2>/dev/null
dd if=/tmp/pat of=/dev/vda bs=64k seek=640 oflag=direct 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=64k skip=640 count=32 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back && echo "direct-io=ok md5=$(md5sum /tmp/pat | cut -d' ' -f1)"
# a filesystem (32 MiB, over the pattern): mkfs, files, umount, mount again, verify
mkdir -p /mnt
mke2fs -q -F -b 4096 /dev/vda 8192 >/dev/null
mount -t ext4 /dev/vda /mnt
for i in 1 2 3; do dd if=/dev/urandom of=/mnt/f$i bs=4k count=$((i*16)) 2>/dev/null; done
md5sum /mnt/f1 /mnt/f2 /mnt/f3 > /tmp/sums
sync; umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 /dev/vda /mnt
cd /mnt && md5sum -c /tmp/sums >/dev/null && echo "filesystem=ok" && cd /
umount /mnt
mark holding
host_wait restarted
# the back-end was restarted behind QEMU: IO works again
dd if=/tmp/pat of=/dev/vda bs=64k seek=768 oflag=direct 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back2 bs=64k skip=768 count=32 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back2 && echo "after-restart=ok"
mark resize-ready
host_wait resized
# ibnbd resize told QEMU (back-end channel), QEMU told the driver: the disk grows, no reboot
i=0; while [ "$(cat $d/size)" != "${GROWN / 512}" ]; do i=$((i+1)); [ $i -gt 600 ] && { echo "resize=timeout size=$(cat $d/size)"; exit 1; }; sleep 0.1; done
echo "grown size=$(cat $d/size)"
# a pattern at 80 MiB, past the old end: written, read back, and the host finds it in the file
dd if=/tmp/pat of=/dev/vda bs=64k seek=1280 oflag=direct 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back3 bs=64k skip=1280 count=32 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back3 && echo "resize-write=ok"
`;

test.serial('a VM with QEMU\'s default queue count sees the device, round-trips O_DIRECT data and a filesystem, holds it busy, survives a back-end restart, and sees its disk grow', async (t) => {
  t.timeout(240_000);
  const s = await setup(t);
  // the default mapping and QEMU's default queue count (one per vCPU, 2 here): the VM starts
  const { device } = await ibnbdJson<{ device: any }>(['map', s.mapString(), '--control', s.client.control]);
  t.is(device.queues, 16, 'a default mapping offers 16 queues');
  const guest = await startGuest({
    disks: [{ socket: device.socket, numQueues: 'qemu', reconnect: true }],
    cpus: 2,
    modules: ['crc32c_generic', 'ext4'], // ext4's crc32c is a soft dependency, not in modules.dep
    timeoutMs: 200_000,
    script: RW_SCRIPT,
  });
  t.teardown(() => guest.kill().then(() => undefined));
  await guest.waitForMarker('holding', 150_000).catch((e) => {
    throw new Error(`${String(e)}\n${guest.serial().slice(-3000)}`);
  });

  // while the VM holds the disk: a normal unmap is refused
  const busy = await ibnbd(['unmap', device.name, '--control', s.client.control]);
  t.is(busy.code, 16);
  t.regex(busy.stderr, /^ibnbd: EBUSY: /m);

  // restart the client daemon (SIGTERM): it restores the mapping from its state file on the same
  // socket path before it answers; QEMU reconnects
  await s.restartClient();
  const again = await ibnbdJson<{ device: any }>(['show', device.name, '--control', s.client.control]);
  t.is(again.device.socket, device.socket, 'same socket path after the restart');
  t.is(again.device.queues, 16, 'with its map string');
  const end = Date.now() + 30_000;
  while (!(await ibnbdJson<{ device: any }>(['show', device.name, '--control', s.client.control])).device.frontend_connected) {
    if (Date.now() > end) return t.fail('QEMU did not reconnect to the restarted back-end');
    await new Promise((r) => setTimeout(r, 100));
  }
  guest.sendLine('restarted');

  // online resize: a shrink below what the guest wrote (50 MiB, after the restart) is refused;
  // the server's file grows, `ibnbd resize` takes the new size from the server and tells QEMU
  await guest.waitForMarker('resize-ready', 60_000);
  const shrink = await ibnbd(['resize', device.name, '--size', '32M', '--control', s.client.control]);
  t.is(shrink.code, 16, `a shrink below the guest's writes: EBUSY (${shrink.stderr})`);
  truncateSync(s.file, GROWN);
  const beyond = await ibnbd(['resize', device.name, '--size', String(GROWN + MiB), '--control', s.client.control]);
  t.is(beyond.code, 22, `beyond the server's size: EINVAL (${beyond.stderr})`);
  const grown = await ibnbdJson<{ device: any }>(['resize', device.name, '--control', s.client.control]);
  t.is(grown.device.size, GROWN);
  t.true(grown.device.frontendTold, 'QEMU was told through the back-end channel');
  t.truthy(grown.device.size_changed_at);
  guest.sendLine('resized');
  const r = await guest.exited;
  t.is(r.exitCode, 0, r.output);
  const out = r.output;
  t.regex(out, new RegExp(`size=${DISK / 512} lbs=512 pbs=\\d+ ro=0`));
  t.regex(out, /discard=[1-9]\d* /, 'discard advertised for a file on a punch-hole filesystem');
  t.regex(out, /queues=2 serial=vm\.img/, 'QEMU gave the disk a queue per vCPU (two), and the device_id is the serial (GET_ID)');
  t.regex(out, /direct-io=ok/);
  t.regex(out, /filesystem=ok/);
  t.regex(out, /after-restart=ok/);
  t.regex(out, new RegExp(`grown size=${GROWN / 512}`), 'the guest saw its disk grow without a reboot');
  t.regex(out, /resize-write=ok/);

  // the host sees the guest's bytes in the server's file
  const md5 = /direct-io=ok md5=([0-9a-f]{32})/.exec(out)?.[1];
  const { createHash } = await import('node:crypto');
  t.is(createHash('md5').update(fileBytes(s.file, 40 * MiB, 2 * MiB)).digest('hex'), md5 ?? 'no md5 in the output');
  t.true(fileBytes(s.file, 48 * MiB, 2 * MiB).equals(fileBytes(s.file, 40 * MiB, 2 * MiB)), 'the write after the restart landed too');
  t.true(fileBytes(s.file, 80 * MiB, 2 * MiB).equals(fileBytes(s.file, 40 * MiB, 2 * MiB)), 'and the one past the old end, in the grown file');

  // the VM powered off: unmap succeeds
  t.is((await ibnbd(['unmap', device.name, '--control', s.client.control])).code, 0);
});

test.serial('a read-only mapping: the guest reads, its writes fail', async (t) => {
  t.timeout(120_000);
  const s = await setup(t);
  const rw = await ibnbdJson<{ device: any }>(['map', s.mapString(), '--control', s.client.control]);
  const seeded = await runGuest({
    disks: [{ socket: rw.device.socket }],
    timeoutMs: 60_000,
    script: `printf 'ibnbd-ro-check' | dd of=/dev/vda bs=512 conv=sync oflag=direct 2>/dev/null; sync; echo seeded`,
  });
  t.is(seeded.exitCode, 0, seeded.output);
  t.is((await ibnbd(['unmap', rw.device.name, '--control', s.client.control])).code, 0);

  const ro = await ibnbdJson<{ device: any }>(['map', s.mapString('access_mode=ro'), '--control', s.client.control]);
  const r = await runGuest({
    disks: [{ socket: ro.device.socket }],
    timeoutMs: 60_000,
    script: `
echo "ro=$(cat /sys/block/vda/ro)"
dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 14; echo
if dd if=/dev/zero of=/dev/vda bs=512 count=1 oflag=direct 2>/dev/null; then echo write=accepted; else echo write=refused; fi`,
  });
  t.is(r.exitCode, 0, r.output);
  t.regex(r.output, /ro=1/);
  t.regex(r.output, /ibnbd-ro-check/);
  t.regex(r.output, /write=refused/);
  t.is(fileBytes(s.file, 0, 14).toString(), 'ibnbd-ro-check', 'the server file is unchanged');
});
