// libvirt for real (docs/libvirt.md): a libvirtd of the test's own (Debian 12's 9.0, QEMU driver)
// starts a type='qemu' domain whose disk is `ibnbd libvirt-xml`'s <disk type='vhostuser'> on a
// mapped device, the guest writes to it, a second mapped device is hot-plugged with
// `virsh attach-device --live` and unplugged with `detach-device --live`, and the bytes are in
// the server's files. libvirtd and virtlogd run in a mount namespace of their own whose
// /etc/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and /run/libvirt are the
// test's directories (its qemu.conf: no security driver, no cgroups or namespaces, QEMU as root),
// and their sockets in a directory of the test: nothing of the host's libvirt is touched.
import test, { type ExecutionContext } from 'ava';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { guestKernel } from '../../harness/qemu/guest-kernel.js';
import { buildInitramfs } from '../../harness/qemu/initramfs.js';
import { ibnbd, ibnbdJson, startDaemonsWithFiles } from '../support/daemons.js';
import { fileBytes, MiB } from '../support/vhost-helpers.js';

const run = (cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number; out: string }> =>
  new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });

/** A libvirtd (and virtlogd) in a private mount namespace; virsh against it. */
async function privateLibvirtd(t: ExecutionContext, dir: string) {
  for (const d of ['etc', 'lib/qemu', 'log/qemu', 'cache', 'run', 'sock']) mkdirSync(join(dir, d), { recursive: true });
  writeFileSync(join(dir, 'etc', 'libvirtd.conf'), [
    `unix_sock_dir = "${join(dir, 'sock')}"`,
    'unix_sock_rw_perms = "0700"',
    'auth_unix_rw = "none"',
    'auth_unix_ro = "none"',
    `log_outputs = "3:file:${join(dir, 'libvirtd.log')}"`,
  ].join('\n') + '\n');
  writeFileSync(join(dir, 'etc', 'virtlogd.conf'), `log_outputs = "3:file:${join(dir, 'virtlogd.log')}"\n`);
  // no KVM, no systemd here: no security driver, cgroups or namespaces; QEMU runs as root so it
  // reaches the daemons' sockets and the test's kernel and initrd
  writeFileSync(join(dir, 'etc', 'qemu.conf'), [
    'security_driver = "none"', 'remember_owner = 0', 'namespaces = [ ]', 'cgroup_controllers = [ ]',
    'user = "root"', 'group = "root"',
  ].join('\n') + '\n');
  const binds: Array<[string, string]> = [
    ['etc', '/etc/libvirt'], ['lib', '/var/lib/libvirt'], ['log', '/var/log/libvirt'], ['cache', '/var/cache/libvirt'], ['run', '/run/libvirt'],
  ];
  const script = [
    'set -e',
    ...binds.map(([from, to]) => `mkdir -p ${to} && mount --bind ${join(dir, from)} ${to}`),
    `virtlogd -d -p ${join(dir, 'virtlogd.pid')} -f /etc/libvirt/virtlogd.conf`,
    `exec libvirtd -p ${join(dir, 'libvirtd.pid')} -f /etc/libvirt/libvirtd.conf`,
  ].join('\n');
  const daemon = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  daemon.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const uri = `qemu:///system?socket=${join(dir, 'sock', 'libvirt-sock')}`;
  const virsh = (...args: string[]) => run('virsh', ['-c', uri, ...args]);
  t.teardown(async () => {
    daemon.kill('SIGTERM');
    const pid = Number(readFileSync(join(dir, 'virtlogd.pid'), 'utf8').trim() || 0);
    if (pid) process.kill(pid, 'SIGTERM');
  });
  const end = Date.now() + 30_000;
  while (!existsSync(join(dir, 'sock', 'libvirt-sock')) || (await virsh('list')).code !== 0) {
    if (daemon.exitCode !== null || Date.now() > end) throw new Error(`libvirtd did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { virsh, log: () => (existsSync(join(dir, 'libvirtd.log')) ? readFileSync(join(dir, 'libvirtd.log'), 'utf8') : '') };
}

// The guest (busybox initramfs, the harness's /init): the first disk at boot, the second once
// hot-plugged; a marker on the console (a file here) for each step the host waits for.
const GUEST_SCRIPT = `
echo "VDA_SECTORS $(cat /sys/block/vda/size)"
echo "VDA_QUEUES $(ls /sys/block/vda/mq | wc -l)"
yes ibnbd-libvirt-a | head -c 1048576 > /tmp/a
dd if=/tmp/a of=/dev/vda bs=64k seek=16 oflag=direct conv=fsync 2>/dev/null; echo "WRITE_A $?"
mark booted
i=0; while [ ! -b /dev/vdb ] && [ $i -lt 1200 ]; do i=$((i+1)); sleep 0.1; done
echo "VDB_SECTORS $(cat /sys/block/vdb/size 2>/dev/null)"
yes ibnbd-libvirt-b | head -c 1048576 > /tmp/b
dd if=/tmp/b of=/dev/vdb bs=64k seek=32 oflag=direct conv=fsync 2>/dev/null; echo "WRITE_B $?"
mark written-b
i=0; while [ -b /dev/vdb ] && [ $i -lt 1200 ]; do i=$((i+1)); sleep 0.1; done
echo "VDB_GONE $([ -b /dev/vdb ] && echo no || echo yes)"
`;

function pattern(word: string, len: number): Buffer {
  const line = Buffer.from(`${word}\n`);
  const b = Buffer.alloc(len);
  for (let off = 0; off < len; off += line.length) line.copy(b, off, 0, Math.min(line.length, len - off));
  return b;
}

test.serial('libvirt starts a type=qemu domain on a mapped device, hot-plugs and unplugs a second one; the bytes land on the server', async (t) => {
  t.timeout(600_000);
  const t0 = Date.now();
  const { dir, exportsDir: ex, server, client } = await startDaemonsWithFiles(t, 'libvirt', { 'a.img': 32 * MiB, 'b.img': 16 * MiB });
  const mapped = async (dev: string) => (await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=lv path=ip:127.0.0.1:${server.port} device_path=${dev}`, '--control', client.control])).device;
  const a = await mapped('a.img');
  const b = await mapped('b.img');
  const lv = await privateLibvirtd(t, join(dir, 'libvirt'));

  // the domain as `ibnbd libvirt-xml --domain` prints it, plus
  // what a test boot needs: the harness's kernel and initramfs, the console in a file, the second
  // serial port the harness's /init opens, root ports to hot-plug into, power-off ends it
  // type='qemu' (TCG) as every guest of the suite, whatever this host's /dev/kvm says
  const dom = await ibnbd(['libvirt-xml', a.name, '--domain', 'ibnbd-lv', '--domain-type', 'qemu', '--control', client.control]);
  t.is(dom.code, 0, dom.stderr);
  t.regex(dom.stdout, /<domain type='qemu'>/);
  const console = join(dir, 'console.log');
  const initrd = buildInitramfs(['virtio_pci', 'virtio_blk'], { mode: 'initramfs', net: false, shares: [], script: GUEST_SCRIPT }, join(dir, 'initrd.cpio.gz'));
  const xml = dom.stdout
    .replace("<memory unit='MiB'>1024</memory>", "<memory unit='MiB'>256</memory>")
    .replace('</type>\n  </os>', `</type>\n    <kernel>${guestKernel().vmlinuz}</kernel>\n    <initrd>${initrd}</initrd>\n    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>\n  </os>\n  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>`)
    .replace('  </devices>', [
      `    <serial type='file'><source path='${console}'/><target port='0'/></serial>`,
      "    <serial type='null'><target port='1'/></serial>",
      "    <controller type='pci' index='0' model='pcie-root'/>",
      ...[1, 2, 3, 4, 5, 6, 7, 8].map((i) => `    <controller type='pci' index='${i}' model='pcie-root-port'/>`),
      '  </devices>',
    ].join('\n'));
  const domFile = join(dir, 'domain.xml');
  writeFileSync(domFile, xml);
  const valid = await run('virt-xml-validate', [domFile, 'domain']);
  t.is(valid.code, 0, valid.out);
  const defined = await lv.virsh('define', domFile);
  t.is(defined.code, 0, defined.out);
  const started = await lv.virsh('start', 'ibnbd-lv');
  t.is(started.code, 0, `${started.out}\n${lv.log().slice(-3000)}`);
  t.teardown(async () => {
    await lv.virsh('destroy', 'ibnbd-lv');
    await lv.virsh('undefine', 'ibnbd-lv');
  });
  const out = () => (existsSync(console) ? readFileSync(console, 'utf8') : '');
  const waitFor = async (marker: string, ms: number) => {
    const end = Date.now() + ms;
    while (!out().includes(`@@IBNBD-MARK ${marker}@@`)) {
      if (Date.now() > end) throw new Error(`no '${marker}' from the guest; console:\n${out().slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  await waitFor('booted', 180_000);
  const bootMs = Date.now() - t0;
  t.true((await ibnbdJson<{ device: Record<string, any> }>(['show', a.name, '--control', client.control])).device.frontend_connected);

  // hot-plug: the second mapping's <disk>, as `ibnbd libvirt-xml` prints it
  const disk = await ibnbd(['libvirt-xml', b.name, '--target', 'vdb', '--control', client.control]);
  t.is(disk.code, 0, disk.stderr);
  const diskFile = join(dir, 'vdb.xml');
  writeFileSync(diskFile, disk.stdout);
  const attached = await lv.virsh('attach-device', 'ibnbd-lv', diskFile, '--live');
  t.is(attached.code, 0, `${attached.out}\n${lv.log().slice(-3000)}`);
  await waitFor('written-b', 120_000);
  const detached = await lv.virsh('detach-device', 'ibnbd-lv', diskFile, '--live');
  t.is(detached.code, 0, detached.out);

  // the guest ends (power-off destroys the domain)
  const end = Date.now() + 120_000;
  while (!/shut off/.test((await lv.virsh('domstate', 'ibnbd-lv')).out)) {
    if (Date.now() > end) return t.fail(`the domain did not end; console:\n${out().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 300));
  }
  const text = out();
  t.regex(text, new RegExp(`VDA_SECTORS ${(32 * MiB) / 512}\\b`));
  t.regex(text, /VDA_QUEUES 1\b/, "one vCPU: QEMU's default gives the disk one queue");
  t.regex(text, /WRITE_A 0\b/);
  t.regex(text, new RegExp(`VDB_SECTORS ${(16 * MiB) / 512}\\b`), 'the hot-plugged disk appeared in the guest');
  t.regex(text, /WRITE_B 0\b/);
  t.regex(text, /VDB_GONE yes/, 'and went away with detach-device');
  t.regex(text, /@@IBNBD-EXIT 0@@/);
  t.true(fileBytes(join(ex, 'a.img'), MiB, MiB).equals(pattern('ibnbd-libvirt-a', MiB)), "the guest's bytes are in a.img");
  t.true(fileBytes(join(ex, 'b.img'), 2 * MiB, MiB).equals(pattern('ibnbd-libvirt-b', MiB)), 'and in b.img, through the hot-plugged disk');
  const shownB = await ibnbdJson<{ device: Record<string, any> }>(['show', b.name, '--control', client.control]);
  t.false(shownB.device.frontend_connected, 'QEMU let go of the unplugged disk');
  t.is((await ibnbd(['unmap', b.name, '--control', client.control])).code, 0, 'so it unmaps without --force');
  t.log(`boot to the first write ${(bootMs / 1000).toFixed(1)} s; whole test ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});
