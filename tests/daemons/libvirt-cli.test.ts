// `ibnbd libvirt-xml` on a mapped device: the <disk type='vhostuser'> element and a whole domain
// that libvirt's own schema check (virt-xml-validate) accepts. What it prints comes from the
// client daemon's mapping alone, whatever the transport, so this file runs on the host only (not
// in the shared suite's RDMA guest).
import test from 'ava';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ibnbd, ibnbdJson, startDaemonsWithFiles } from '../support/daemons.js';
import { MiB } from '../support/vhost-helpers.js';

async function setup(t: import('ava').ExecutionContext) {
  const { dir, server, client } = await startDaemonsWithFiles(t, 'libvirt-xml', { 'lv.img': 8 * MiB, 'lv2.img': 8 * MiB });
  const mapJson = (m: string) => ibnbdJson<{ device: Record<string, any> }>(['map', m, '--control', client.control]);
  return { dir, client, mapJson, at: `path=ip:127.0.0.1:${server.port}` };
}

test('ibnbd libvirt-xml: the disk element of a mapped device, and a whole domain libvirt validates', async (t) => {
  const s = await setup(t);
  const { device } = await s.mapJson(`sessname=lv ${s.at} device_path=lv.img queues=2`);
  const disk = await ibnbd(['libvirt-xml', 'ibnbd0', '--target', 'vdb', '--control', s.client.control]);
  t.is(disk.code, 0, disk.stderr);
  t.true(disk.stdout.includes(`<source type='unix' path='${device.socket}'`), disk.stdout);
  t.regex(disk.stdout, /<disk type='vhostuser' device='disk'>/);
  t.regex(disk.stdout, /<driver name='qemu' type='raw' queues='2'\/>/);
  t.regex(disk.stdout, /<target dev='vdb' bus='virtio'\/>/);
  t.regex(disk.stderr, /<access mode='shared'\/>/, 'the shared-memory requirement is printed as a note');
  const domain = await ibnbd(['libvirt-xml', 'lv.img', '--domain', 'vm1', '--control', s.client.control]);
  t.is(domain.code, 0, domain.stderr);
  // a KVM domain cannot start without /dev/kvm: this host's domain type follows it
  let kvm0 = false;
  try {
    closeSync(openSync('/dev/kvm', 'r+'));
    kvm0 = true;
  } catch {
    /* no KVM here */
  }
  t.regex(domain.stdout, kvm0 ? /<domain type='kvm'>/ : /<domain type='qemu'>/);
  const qemu = await ibnbd(['libvirt-xml', 'lv.img', '--domain', 'vm1', '--domain-type', 'qemu', '--control', s.client.control]);
  t.regex(qemu.stdout, /<domain type='qemu'>/);
  const kvm = await ibnbd(['libvirt-xml', 'lv.img', '--domain', 'vm1', '--domain-type', 'kvm', '--control', s.client.control]);
  t.regex(kvm.stdout, /<domain type='kvm'>/);
  const bad = await ibnbd(['libvirt-xml', 'lv.img', '--domain', 'vm1', '--domain-type', 'xen', '--control', s.client.control]);
  t.is(bad.code, 22, bad.stderr);
  const file = join(s.dir, 'vm1.xml');
  writeFileSync(file, domain.stdout);
  const v = spawnSync('virt-xml-validate', [file, 'domain'], { encoding: 'utf8', timeout: 30_000 });
  t.is(v.status, 0, `${v.stdout}${v.stderr}`);
  const tooMany = await ibnbd(['libvirt-xml', 'ibnbd0', '--queues', '3', '--control', s.client.control]);
  t.is(tooMany.code, 22);
  t.regex(tooMany.stderr, /^ibnbd: EINVAL: --queues/m);
  const unknown = await ibnbd(['libvirt-xml', 'nope', '--control', s.client.control]);
  t.is(unknown.code, 2);
  // a default mapping (16 queues offered) leaves the count to QEMU: one per vCPU
  await s.mapJson(`sessname=lv2 ${s.at} device_path=lv2.img`);
  const auto = await ibnbd(['libvirt-xml', 'ibnbd1', '--control', s.client.control]);
  t.is(auto.code, 0, auto.stderr);
  t.regex(auto.stdout, /<driver name='qemu' type='raw'\/>/);
  const four = await ibnbd(['libvirt-xml', 'ibnbd1', '--queues', '4', '--control', s.client.control]);
  t.regex(four.stdout, /<driver name='qemu' type='raw' queues='4'\/>/);
});
