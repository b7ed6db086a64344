// libvirt domain XML for attaching an ibnbd-vhost mapping (a vhost-user-blk socket) to a VM.
// libvirt accepts a vhostuser disk only when guest RAM is shareable, hence the memoryBacking
// helper. libvirt's own validation refuses <serial>, <readonly/>, <shareable/>, cache and io
// options on vhostuser disks (the device's serial and read-only state come from the backend:
// VIRTIO_BLK_T_GET_ID and VIRTIO_BLK_F_RO), so this module does not offer them.
import { isAbsolute } from 'node:path';
import { IbnbdError } from '../errors.js';

export interface LibvirtDiskOptions {
  /** the mapping's vhost-user-blk unix socket, absolute */
  socketPath: string;
  /** guest device name on the virtio bus: vda, vdb, ..., vdaa */
  target?: string;
  /** virtqueues of the device (driver queues=), 1..256; absent: QEMU's default, one per vCPU */
  queues?: number;
  /** seconds between QEMU's reconnect attempts after the backend went away; 0 disables */
  reconnectSeconds?: number;
}

/** Text escaped for use in an XML attribute value or element content. */
export function xmlEscape(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&${{ '&': 'amp', '<': 'lt', '>': 'gt', '"': 'quot', "'": 'apos' }[c]};`);
}

// XML 1.0 allows no control characters other than tab, LF and CR, even escaped
// eslint-disable-next-line no-control-regex
const XML_FORBIDDEN = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/;
const VIRTIO_TARGET = /^vd[a-z]{1,3}$/;

function invalid(msg: string): never {
  throw new IbnbdError('EINVAL', msg);
}

/** The <disk type='vhostuser'> element for `virsh attach-device` or a domain's <devices>. */
export function libvirtDiskXml(o: LibvirtDiskOptions): string {
  const target = o.target ?? 'vda';
  const queues = o.queues;
  const reconnect = o.reconnectSeconds ?? 1;
  if (typeof o.socketPath !== 'string' || !isAbsolute(o.socketPath)) {
    invalid(`socketPath must be an absolute path: ${String(o.socketPath)}`);
  }
  if (XML_FORBIDDEN.test(o.socketPath)) invalid('socketPath holds characters XML cannot carry');
  if (typeof target !== 'string' || !VIRTIO_TARGET.test(target)) {
    invalid(`target must name a virtio disk (vda, vdb, ...): ${String(target)}`);
  }
  if (queues !== undefined && (!Number.isInteger(queues) || queues < 1 || queues > 256)) invalid(`queues must be an integer in 1..256: ${queues}`);
  if (!Number.isInteger(reconnect) || reconnect < 0 || reconnect > 3600) {
    invalid(`reconnectSeconds must be an integer in 0..3600: ${reconnect}`);
  }
  // reconnect: QEMU redials the socket when the backend restarts, instead of the disk staying dead
  const reconnectXml =
    reconnect > 0 ? `\n    <reconnect enabled='yes' timeout='${reconnect}'/>\n  ` : '';
  return [
    `<disk type='vhostuser' device='disk'>`,
    // no queues=: QEMU gives the disk a queue per vCPU, within what the back-end offers
    `  <driver name='qemu' type='raw'${queues === undefined ? '' : ` queues='${queues}'`}/>`,
    `  <source type='unix' path='${xmlEscape(o.socketPath)}'>${reconnectXml}</source>`,
    `  <target dev='${target}' bus='virtio'/>`,
    `</disk>`,
  ].join('\n');
}

/** The memoryBacking a domain needs before it can take a vhost-user disk: memfd, shared. */
export function libvirtMemoryBackingXml(): string {
  return [
    `<memoryBacking>`,
    `  <source type='memfd'/>`,
    `  <access mode='shared'/>`,
    `</memoryBacking>`,
  ].join('\n');
}

export interface LibvirtDomainOptions {
  name: string;
  /** 'kvm' (the default) needs /dev/kvm; 'qemu' is QEMU's emulation (TCG), which any host can run */
  type?: 'kvm' | 'qemu';
  memoryMiB?: number;
  vcpus?: number;
  disks: LibvirtDiskOptions[];
}

function indent(xml: string, by: string): string {
  return xml
    .split('\n')
    .map((l) => by + l)
    .join('\n');
}

/** A minimal whole domain with the disks, for validation and as a starting point in docs. */
export function libvirtDomainXml(o: LibvirtDomainOptions): string {
  const mem = o.memoryMiB ?? 1024;
  const vcpus = o.vcpus ?? 1;
  if (typeof o.name !== 'string' || !/^[A-Za-z0-9_.+-]{1,64}$/.test(o.name)) invalid(`bad domain name: ${String(o.name)}`);
  if (!Number.isInteger(mem) || mem < 16) invalid(`memoryMiB must be an integer >= 16: ${mem}`);
  if (!Number.isInteger(vcpus) || vcpus < 1) invalid(`vcpus must be a positive integer: ${vcpus}`);
  const type = o.type ?? 'kvm';
  if (type !== 'kvm' && type !== 'qemu') invalid(`domain type must be kvm or qemu: ${String(type)}`);
  const targets = new Set<string>();
  const disks = o.disks.map((d) => {
    const xml = libvirtDiskXml(d);
    const t = d.target ?? 'vda';
    if (targets.has(t)) invalid(`target ${t} used twice`);
    targets.add(t);
    return indent(xml, '    ');
  });
  return [
    `<domain type='${type}'>`,
    `  <name>${xmlEscape(o.name)}</name>`,
    `  <memory unit='MiB'>${mem}</memory>`,
    indent(libvirtMemoryBackingXml(), '  '),
    `  <vcpu>${vcpus}</vcpu>`,
    `  <os>`,
    `    <type arch='x86_64' machine='q35'>hvm</type>`,
    `  </os>`,
    // ACPI: the guest's hot-plug of a disk (virsh attach-device) goes through it on q35
    `  <features>`,
    `    <acpi/>`,
    `    <apic/>`,
    `  </features>`,
    `  <devices>`,
    ...disks,
    `  </devices>`,
    `</domain>`,
    '',
  ].join('\n');
}
