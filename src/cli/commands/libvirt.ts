// `ibnbd libvirt-xml <device>`: the <disk type='vhostuser'> element for a mapped device, asked of the
// client daemon (its socket path and queue count), for `virsh attach-device` or a domain's <devices>.
import type { Command } from 'commander';
import { closeSync, openSync } from 'node:fs';
import { IbnbdError } from '../../errors.js';
import { libvirtDiskXml, libvirtDomainXml, libvirtMemoryBackingXml } from '../../libvirt/xml.js';
import { MAX_QUEUES } from '../../proto/map-string.js';
import { addControlOptions, checkDeviceArg, sendRequest, type ControlOptions } from '../util.js';

interface LibvirtFlags extends ControlOptions {
  target: string;
  queues?: string;
  domain?: string;
  domainType?: string;
}

/** Whether this host's /dev/kvm opens for reading and writing, as QEMU needs it to. */
function kvmOpens(): boolean {
  try {
    closeSync(openSync('/dev/kvm', 'r+'));
    return true;
  } catch {
    return false;
  }
}

export function register(program: Command): void {
  addControlOptions(
    program
      .command('libvirt-xml')
      .summary('print the libvirt <disk> element of a mapped device')
      .description(
        "Print the <disk type='vhostuser'> element of a mapped device. The domain must back its memory " +
          "with shared memfd (<memoryBacking>, printed as a note, or a whole domain with --domain NAME).",
      )
      .argument('<device>', 'the mapping name or device_id')
      .option('--target <vdX>', 'guest device name', 'vda')
      .option('--queues <n>', 'virtqueues (default: one per vCPU, or the mapping\'s queues= when it caps them)')
      .option('--domain <name>', 'print a minimal whole domain with this disk instead')
      .option('--domain-type <kvm|qemu>', 'the domain\'s type (default: kvm where /dev/kvm opens, else qemu)'),
  ).action(async (device: string, flags: LibvirtFlags) => {
    const result = await sendRequest(flags, { cmd: 'show', device: checkDeviceArg(device) });
    const dev = (result as { device?: { socket?: unknown; queues?: unknown } }).device;
    if (!dev || typeof dev.socket !== 'string' || typeof dev.queues !== 'number') {
      throw new IbnbdError('EPROTO', 'the daemon answered show without a socket and queue count');
    }
    // a mapping that offers the most queues (the default) leaves the count to QEMU (one per vCPU);
    // one capped with queues= says so in the XML too
    let queues: number | undefined = dev.queues < MAX_QUEUES ? dev.queues : undefined;
    if (flags.queues !== undefined) {
      if (!/^\d+$/.test(flags.queues)) throw new IbnbdError('EINVAL', `--queues: '${flags.queues}' is not a number`);
      queues = Number(flags.queues);
      if (queues < 1 || queues > dev.queues) {
        throw new IbnbdError('EINVAL', `--queues: ${queues} is not within 1..${dev.queues} (the mapping's queue count)`);
      }
    }
    const disk = { socketPath: dev.socket, target: flags.target, queues };
    if (flags.domain !== undefined) {
      // a KVM domain cannot start on a host without /dev/kvm: QEMU's emulation there, unless told
      const type = flags.domainType ?? (kvmOpens() ? 'kvm' : 'qemu');
      if (type !== 'kvm' && type !== 'qemu') throw new IbnbdError('EINVAL', `--domain-type: '${type}' is not kvm or qemu`);
      process.stdout.write(libvirtDomainXml({ name: flags.domain, type, disks: [disk] }));
      return;
    }
    const xml = libvirtDiskXml(disk);
    if (flags.json) {
      process.stdout.write(`${JSON.stringify({ disk: xml, memoryBacking: libvirtMemoryBackingXml() })}\n`);
      return;
    }
    process.stdout.write(`${xml}\n`);
    process.stderr.write(
      `note: the domain needs shared guest memory for vhost-user:\n${libvirtMemoryBackingXml()}\n`,
    );
  });
}
