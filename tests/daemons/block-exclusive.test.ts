// Block devices are exported exclusively (docs/security.md, docs/server.md "Search path rules"):
// the server claims a block device with O_EXCL while any session maps it, so a device that is
// mounted (ext4 on a loop device, mounted on this host) is EBUSY to the client, and a device we
// export cannot be mounted under us; the sessions of our server share the one claim (a ro reader
// beside the writer). Real daemons, a real loop device and mount.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, openSync } from 'node:fs';
import { basename, join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { loopDevice } from '../support/server-helpers.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { scaled } from '../support/transport-under-test.js';

test.serial('a mounted loop device is EBUSY; unmounted it maps, cannot be mounted while mapped, and a ro reader shares the claim', async (t) => {
  const dir = tempDir(t, 'excl');
  const loop = loopDevice(t, sparseFile(join(dir, 'backing.img'), 32 * MiB));
  execFileSync('mkfs.ext4', ['-q', '-F', loop], { timeout: 60_000 });
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  execFileSync('mount', [loop, mnt], { timeout: 30_000 });
  let mounted = true;
  t.teardown(() => {
    if (mounted) spawnSync('umount', [mnt], { timeout: 30_000 });
  });
  const server = await startServerDaemon(t, dir, '/dev');
  const client = await startClientDaemon(t, dir);
  const target = `path=ip:127.0.0.1:${server.port} device_path=${basename(loop)}`;
  const busy = await ibnbd(['map', `sessname=ex1 ${target}`, '--control', client.control]);
  t.is(busy.code, 16, `EBUSY: ${busy.stderr}`);
  t.regex(server.log(), /is in use: mounted, or claimed by another program/);

  execFileSync('umount', [mnt], { timeout: 30_000 });
  mounted = false;
  const rw = await ibnbd(['map', `sessname=ex1 ${target}`, '--json', '--control', client.control]);
  t.is(rw.code, 0, rw.stderr);
  const ro = await ibnbd(['map', `sessname=ex2 ${target} access_mode=ro`, '--json', '--control', client.control]);
  t.is(ro.code, 0, `a ro reader of our own server shares the claim: ${ro.stderr}`);
  const m = spawnSync('mount', [loop, mnt], { encoding: 'utf8', timeout: 30_000 });
  if (m.status === 0) mounted = true;
  t.not(m.status, 0, 'the exported device cannot be mounted under the server');
  const socket = JSON.parse(rw.stdout).device.socket;
  const v = await blkio(['--path', socket, '--timeout-ms', String(scaled(30_000)), '--qd', '8', '--seed', '2', '--count', '32', '--offset', String(16 * MiB), '--span', String(8 * MiB), 'verify'], scaled(60_000));
  t.is(v.code, 0, JSON.stringify(v.json));
  // both unmapped: the claim goes with the last (the native side closes its descriptors once IO drained)
  t.is((await ibnbd(['unmap', JSON.parse(ro.stdout).device.name, '--control', client.control])).code, 0);
  t.is((await ibnbd(['unmap', JSON.parse(rw.stdout).device.name, '--control', client.control])).code, 0);
  const exclusive = () => {
    try {
      closeSync(openSync(loop, constants.O_RDONLY | constants.O_EXCL));
      return true;
    } catch {
      return false;
    }
  };
  const end = Date.now() + scaled(5000);
  while (!exclusive() && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  t.true(exclusive(), 'the device can be claimed again once the last mapping is gone');
});
