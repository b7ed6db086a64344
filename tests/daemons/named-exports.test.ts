// Named exports (docs/server.md, "Named exports"): a server without a search path serves exactly
// the names its config file (or --export) lists; a client's device_path is such a name, a
// read-only export refuses writers, and nothing else on the host can be reached.
import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, startClientDaemon, startServerDaemon, waitForEntry } from '../support/daemons.js';
import { blkio, expectedPattern, fileBytes, MiB } from '../support/vhost-helpers.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

test('a server with only named exports: the listed names map (rw, and ro where marked), nothing else does', async (t) => {
  const dir = tempDir(t, 'named-exp');
  const disks = join(dir, 'disks');
  mkdirSync(disks);
  const vm1 = join(disks, 'vm1.img');
  const iso = join(disks, 'iso.img');
  sparseFile(vm1, 16 * MiB);
  sparseFile(iso, 8 * MiB);
  sparseFile(join(disks, 'unlisted.img'), 8 * MiB);
  const cfg = join(dir, 'server.toml');
  writeFileSync(cfg, `[export]\nvm1 = "${vm1}"\niso = { path = "${iso}", read-only = true }\n`);
  const server = await startServerDaemon(t, dir, null, ['--config', cfg]);
  // logged once the control socket listens, so possibly after startServerDaemon returned
  const listening = await waitForEntry(server, (e) => /^listening on /.test(e.msg), 'listening line');
  t.regex(listening.msg, /dev_search_path \(none\); 2 named export\(s\) \(vm1, iso ro\)/);
  const client = await startClientDaemon(t, dir);
  const target = testMapTarget(server.port);

  const rw = await ibnbd(['map', `sessname=n1 ${target} device_path=vm1`, '--json', '--control', client.control]);
  t.is(rw.code, 0, rw.stderr);
  const dev = JSON.parse(rw.stdout).device;
  t.is(dev.size, 16 * MiB, 'the listed file is what the name maps');
  const v = await blkio(['--path', dev.socket, '--timeout-ms', String(scaled(30_000)), '--qd', '4', '--seed', '7', '--count', '16', '--sequential', '--min-size', '4096', '--max-size', '4096', '--offset', String(MiB), 'verify'], scaled(60_000));
  t.is(v.code, 0, JSON.stringify(v.json));
  t.true(fileBytes(vm1, MiB, 64 * 1024).equals(expectedPattern(7, MiB, 64 * 1024)), 'the bytes landed in the listed file');

  const roAsRw = await ibnbd(['map', `sessname=n2 ${target} device_path=iso`, '--control', client.control]);
  t.is(roAsRw.code, 13, `a read-only export mapped for writing: EACCES (${roAsRw.stderr})`);
  t.regex(server.log(), /export "iso" is read-only: map it with access_mode=ro/, 'the server logs why (the wire carries the errno alone)');
  const ro = await ibnbd(['map', `sessname=n2 ${target} device_path=iso access_mode=ro`, '--json', '--control', client.control]);
  t.is(ro.code, 0, ro.stderr);
  t.true(JSON.parse(ro.stdout).device.read_only);

  for (const name of ['unlisted.img', 'disks/vm1.img', vm1.slice(1)]) {
    const r = await ibnbd(['map', `sessname=n3 ${target} device_path=${name}`, '--control', client.control]);
    t.not(r.code, 0, `${name} is not an export`);
    t.regex(r.stderr, /ENOENT|EINVAL/, `${name}: ${r.stderr}`);
    t.false(r.stderr.includes('EPERM'), 'never found and then refused: not looked up at all');
  }
});

test('--export on the command line wins over the file; a search path serves what the list does not name', async (t) => {
  const dir = tempDir(t, 'named-exp-cli');
  const disks = join(dir, 'disks');
  const search = join(dir, 'search');
  mkdirSync(disks);
  mkdirSync(search);
  sparseFile(join(disks, 'a.img'), 8 * MiB);
  sparseFile(join(search, 'b.img'), 4 * MiB);
  const cfg = join(dir, 'server.toml');
  writeFileSync(cfg, `[export]\nfromfile = "${join(disks, 'a.img')}"\n`);
  const server = await startServerDaemon(t, dir, search, ['--config', cfg, '--export', `a=${join(disks, 'a.img')},ro`]);
  const client = await startClientDaemon(t, dir);
  const target = testMapTarget(server.port);
  const fromFile = await ibnbd(['map', `sessname=c1 ${target} device_path=fromfile`, '--control', client.control]);
  t.is(fromFile.code, 2, `the file's list is replaced by the command line's: ENOENT (${fromFile.stderr})`);
  const a = await ibnbd(['map', `sessname=c1 ${target} device_path=a access_mode=ro`, '--json', '--control', client.control]);
  t.is(a.code, 0, a.stderr);
  t.is(JSON.parse(a.stdout).device.size, 8 * MiB);
  const b = await ibnbd(['map', `sessname=c1 ${target} device_path=b.img`, '--json', '--control', client.control]);
  t.is(b.code, 0, `a name not listed falls to the search path: ${b.stderr}`);
  t.is(JSON.parse(b.stdout).device.size, 4 * MiB);
});

test('bad export lists stop the start with the reason', async (t) => {
  const dir = tempDir(t, 'named-exp-bad');
  const cfg = join(dir, 'server.toml');
  writeFileSync(cfg, '# exports\n[export]\n"a/b" = "/srv/x.img"\n');
  const r1 = await ibnbd(['server', '--config', cfg, '--control', join(dir, 's.sock')]);
  t.is(r1.code, 22, r1.stderr);
  t.regex(r1.stderr, new RegExp(`${cfg}:2: key 'export': export "a/b": a name is one path component`));
  writeFileSync(cfg, '[export]\nx = { path = "relative.img" }\n');
  const r2 = await ibnbd(['server', '--config', cfg, '--control', join(dir, 's.sock')]);
  t.regex(r2.stderr, /export "x": path "relative.img" must be absolute/);
  writeFileSync(cfg, '[export]\nx = { path = "/srv/x.img", readonly = true }\n');
  const r3 = await ibnbd(['server', '--config', cfg, '--control', join(dir, 's.sock')]);
  t.regex(r3.stderr, /export "x": unknown key "readonly" \(path, read-only\)/);
  const r4 = await ibnbd(['server', '--control', join(dir, 's.sock'), '--export', 'noequals']);
  t.is(r4.code, 22);
  t.regex(r4.stderr, /expected NAME=PATH or NAME=PATH,ro/);
  const r5 = await ibnbd(['server', '--control', join(dir, 's.sock')]);
  t.regex(r5.stderr, /--dev-search-path or --export is required/);
});
