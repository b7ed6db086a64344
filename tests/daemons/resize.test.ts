// `ibnbd resize` without a VM (docs/client.md, "Resize"; tests/vm/vm.test.ts has the guest that
// sees its disk grow): the size from the server's grown file, or --size, never beyond the
// server's; a shrink below what was written refused unless forced; the server's range checks
// follow, so a write past the old end lands in the file.
import test from 'ava';
import { mkdirSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { blkio, expectedPattern, fileBytes, MiB } from '../support/vhost-helpers.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

test('resize: grow from the server, --size within it, shrink only with --force, IO past the old end lands', async (t) => {
  const dir = tempDir(t, 'resize');
  const ex = join(dir, 'exports');
  mkdirSync(ex);
  const file = join(ex, 'r.img');
  sparseFile(file, 8 * MiB);
  const server = await startServerDaemon(t, dir, ex);
  const client = await startClientDaemon(t, dir);
  const { device } = await ibnbdJson<{ device: any }>(['map', `sessname=rs ${testMapTarget(server.port)} device_path=r.img`, '--control', client.control]);
  t.is(device.size, 8 * MiB);
  t.is(device.size_changed_at, null);
  const io = (seed: number, offset: number) =>
    blkio(['--path', device.socket, '--timeout-ms', String(scaled(30_000)), '--qd', '4', '--seed', String(seed), '--count', '16', '--sequential', '--min-size', '4096', '--max-size', '4096', '--offset', String(offset), 'verify'], scaled(60_000));
  const first = await io(3, 2 * MiB);
  t.is(first.code, 0, JSON.stringify(first.json));

  // nothing grew yet: the same size, nothing changed
  const same = await ibnbdJson<{ device: any }>(['resize', device.name, '--control', client.control]);
  t.is(same.device.to, 8 * MiB);
  t.is(same.device.size_changed_at, null);

  truncateSync(file, 16 * MiB);
  const beyond = await ibnbd(['resize', device.name, '--size', '32M', '--control', client.control]);
  t.is(beyond.code, 22, beyond.stderr);
  t.regex(beyond.stderr, /beyond what the server has \(16777216 bytes\)/);
  const grown = await ibnbdJson<{ device: any }>(['resize', device.name, '--control', client.control]);
  t.is(grown.device.from, 8 * MiB);
  t.is(grown.device.to, 16 * MiB);
  t.truthy(grown.device.size_changed_at);
  t.false(grown.device.frontendTold, 'no front-end connected to tell');
  const shown = await ibnbdJson<{ device: any }>(['show', device.name, '--control', client.control]);
  t.is(shown.device.size, 16 * MiB, 'show reports the new size');
  // past the old end: the client's and the server's range checks both follow
  const past = await io(5, 12 * MiB);
  t.is(past.code, 0, JSON.stringify(past.json));
  t.true(fileBytes(file, 12 * MiB, 64 * 1024).equals(expectedPattern(5, 12 * MiB, 64 * 1024)), 'the bytes landed in the grown file');

  // written up to 12 MiB + 64 KiB: a shrink below is EBUSY, with --force it is done
  const cut = await ibnbd(['resize', device.name, '--size', '4M', '--control', client.control]);
  t.is(cut.code, 16, cut.stderr);
  t.regex(cut.stderr, /the guest has written up to byte 12648448/);
  const forced = await ibnbdJson<{ device: any }>(['resize', device.name, '--size', '4M', '--force', '--control', client.control]);
  t.is(forced.device.to, 4 * MiB);
  const bad = await ibnbd(['resize', device.name, '--size', '1000', '--control', client.control]);
  t.is(bad.code, 22, bad.stderr);
  const back = await ibnbdJson<{ device: any }>(['resize', device.name, '--control', client.control]);
  t.is(back.device.to, 16 * MiB, 'without --size: all the server has again');
  const none = await ibnbd(['resize', 'ibnbd9', '--control', client.control]);
  t.is(none.code, 2, none.stderr);
});
