// The libvirt XML we print for `virsh attach-device` must pass libvirt's own schema check
// (virt-xml-validate, domain.rng from libvirt-clients) and must carry any socket path intact.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { libvirtDiskXml, libvirtDomainXml, libvirtMemoryBackingXml } from '../../src/libvirt/xml.js';

const NASTY_PATH = `/run/ibnbd/a&b'<c>"d e.sock`;

function withFile<T>(xml: string, fn: (file: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-virtxml-'));
  try {
    const file = join(dir, 'domain.xml');
    writeFileSync(file, xml);
    return fn(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function validate(xml: string): { ok: boolean; out: string } {
  return withFile(xml, (file) => {
    const r = spawnSync('virt-xml-validate', [file, 'domain'], { encoding: 'utf8', timeout: 30_000 });
    return { ok: r.status === 0, out: `${r.stdout}${r.stderr}${r.error ?? ''}` };
  });
}

function xpath(xml: string, expr: string): string {
  return withFile(xml, (file) => execFileSync('xmllint', ['--xpath', expr, file], { encoding: 'utf8', timeout: 30_000 }).replace(/\n$/, ''));
}

const domain = () =>
  libvirtDomainXml({
    name: 'ibnbd-test',
    memoryMiB: 512,
    vcpus: 2,
    disks: [
      { socketPath: NASTY_PATH, queues: 2 },
      { socketPath: '/run/ibnbd/vdb.sock', target: 'vdb', reconnectSeconds: 0 },
    ],
  });

test('a whole domain with two vhost-user disks passes libvirt\'s domain schema', (t) => {
  const r = validate(domain());
  t.true(r.ok, r.out);
  // the validator does look at our disk element: a broken target makes it fail
  const broken = validate(domain().replace(`dev='vdb'`, `dev='nvme0'`));
  t.false(broken.ok, broken.out);
});

test('disk element: vhostuser, raw driver with queues, reconnect, virtio target', (t) => {
  const xml = domain();
  t.is(xpath(xml, 'string(/domain/devices/disk[1]/@type)'), 'vhostuser');
  t.is(xpath(xml, 'string(/domain/devices/disk[1]/driver/@queues)'), '2');
  t.is(xpath(xml, 'count(/domain/devices/disk[2]/driver/@queues)'), '0', 'no queues given: none in the XML, QEMU takes one per vCPU');
  t.is(xpath(xml, 'string(/domain/devices/disk[1]/driver/@type)'), 'raw');
  t.is(xpath(xml, 'string(/domain/devices/disk[1]/source/reconnect/@enabled)'), 'yes');
  t.is(xpath(xml, 'string(/domain/devices/disk[1]/source/reconnect/@timeout)'), '1');
  t.is(xpath(xml, 'count(/domain/devices/disk[2]/source/reconnect)'), '0');
  t.is(xpath(xml, 'string(/domain/devices/disk[2]/target/@dev)'), 'vdb');
  t.is(xpath(xml, 'string(/domain/devices/disk[2]/target/@bus)'), 'virtio');
  t.is(xpath(xml, 'string(/domain/memoryBacking/source/@type)'), 'memfd');
  t.is(xpath(xml, 'string(/domain/memoryBacking/access/@mode)'), 'shared');
});

test('socket paths are escaped and read back unchanged by an XML parser', (t) => {
  const disk = libvirtDiskXml({ socketPath: NASTY_PATH });
  const raw = disk.match(/path='([^']*)'/)![1];
  t.is(raw, '/run/ibnbd/a&amp;b&apos;&lt;c&gt;&quot;d e.sock');
  t.is(xpath(domain(), 'string(/domain/devices/disk[1]/source/@path)'), NASTY_PATH);
});

test('bad targets and options are rejected with EINVAL', (t) => {
  for (const target of ['sda', 'vd', 'vd1', 'vdA', 'hda', "vda'/>", 'vdabcd', '']) {
    t.throws(() => libvirtDiskXml({ socketPath: '/run/x.sock', target }), { code: 'EINVAL' }, target);
  }
  t.throws(() => libvirtDiskXml({ socketPath: 'relative.sock' }), { code: 'EINVAL' });
  t.throws(() => libvirtDiskXml({ socketPath: '/run/x\u0001.sock' }), { code: 'EINVAL' });
  for (const queues of [0, -1, 1.5, 257]) {
    t.throws(() => libvirtDiskXml({ socketPath: '/run/x.sock', queues }), { code: 'EINVAL' }, String(queues));
  }
  t.throws(() => libvirtDiskXml({ socketPath: '/run/x.sock', reconnectSeconds: -1 }), { code: 'EINVAL' });
  t.throws(
    () => libvirtDomainXml({ name: 'd', disks: [{ socketPath: '/a.sock' }, { socketPath: '/b.sock', target: 'vda' }] }),
    { code: 'EINVAL' },
  );
  t.throws(() => libvirtDomainXml({ name: 'bad name<', disks: [] }), { code: 'EINVAL' });
});

test('memoryBacking asks for shared memfd memory', (t) => {
  t.is(
    libvirtMemoryBackingXml(),
    "<memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>",
  );
});
