// The qemu-system-x86_64 command line for a test guest (docs/testing.md, "Guests under TCG").
// Pure: paths in, argv out.
export interface DiskSpec {
  /** vhost-user-blk unix socket of the backend (ours or qemu-storage-daemon). */
  socket: string;
  /** virtqueues the guest driver gets (vhost-user-blk-pci num-queues); default 1; 'qemu': no
   *  num-queues at all, QEMU's own default (one per vCPU, refused if the back-end offers fewer). */
  numQueues?: number | 'qemu';
  /** reconnect=1 on the chardev: QEMU redials a backend that went away, every second. */
  reconnect?: boolean;
}

export interface ShareSpec {
  /** host directory exported over 9p, writable unless readOnly */
  hostPath: string;
  /** 9p mount tag, [A-Za-z0-9_-], at most 31 characters */
  tag: string;
  /** where the guest mounts it; default the same path as on the host */
  guestPath?: string;
  /** read-only on both sides (QEMU readonly=on, mount ro) and cached in the guest (cache=loose),
   *  as the hostroot mount is: for trees the host does not change while the guest runs */
  readOnly?: boolean;
}

export interface QemuArgsInput {
  kernel: string;
  initrd: string;
  memMiB: number;
  /** guest RAM 8 KiB over memMiB (QEMU rounds -m up to 8 KiB), for guests that live-migrate under TCG (GuestOptions.tcgMigrationRam) */
  ramPlus8K?: boolean;
  /** vCPUs; the guest's virtio_blk uses at most one queue per vCPU */
  cpus?: number;
  /** -cpu model; default max */
  cpuModel?: string;
  controlSocket: string;
  disks: DiskSpec[];
  hostRoot: boolean;
  shares: ShareSpec[];
  net: boolean;
  append?: string;
  /** `-incoming URI`: a destination that waits for a migration instead of booting */
  incoming?: string;
  /** a QMP monitor listening on this unix socket (migrate, query-migrate, quit) */
  qmpSocket?: string;
}

/** QEMU option values separate on ',': a literal comma is written ',,'. */
function optValue(s: string): string {
  return s.replace(/,/g, ',,');
}

export function qemuArgs(a: QemuArgsInput): string[] {
  const ram = a.ramPlus8K ? `${a.memMiB * 1024 + 8}K` : `${a.memMiB}M`;
  const args = [
    '-machine', 'q35,memory-backend=mem', '-accel', 'tcg', '-cpu', a.cpuModel ?? 'max', '-smp', String(a.cpus ?? 1),
    '-m', ram,
    // vhost-user backends map guest RAM: it must be a shareable fd (without it the backend
    // fails on SET_VRING_ADDR and the guest just hangs)
    '-object', `memory-backend-memfd,id=mem,size=${ram},share=on`,
    '-kernel', a.kernel, '-initrd', a.initrd,
    '-append', `console=ttyS0 panic=-1 quiet${a.append ? ' ' + a.append : ''}`,
    '-display', 'none', '-no-reboot', '-nodefaults',
    // ttyS0: console on our stdout; ttyS1: host -> guest control lines over a unix socket the
    // harness listens on (QEMU dials it at start-up, so it is connected before the guest boots)
    '-chardev', 'stdio,id=ser0,signal=off', '-serial', 'chardev:ser0',
    '-chardev', `socket,id=ctl,path=${optValue(a.controlSocket)}`, '-serial', 'chardev:ctl',
  ];
  a.disks.forEach((d, i) => {
    args.push(
      '-chardev', `socket,id=vub${i},path=${optValue(d.socket)}${d.reconnect ? ',reconnect=1' : ''}`,
      '-device', `vhost-user-blk-pci,id=vblk${i},chardev=vub${i}${d.numQueues === 'qemu' ? '' : `,num-queues=${d.numQueues ?? 1}`}`,
    );
  });
  if (a.hostRoot) {
    // multidevs=remap: the host root spans several filesystems; without it inode numbers
    // collide and /proc, /sys misbehave in the guest
    args.push('-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot');
  }
  for (const s of a.shares) {
    args.push('-virtfs', `local,path=${optValue(s.hostPath)},mount_tag=${s.tag},security_model=none,${s.readOnly ? 'readonly=on,' : ''}multidevs=remap,id=fs_${s.tag}`);
  }
  if (a.net) args.push('-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0');
  // wait=off: QEMU starts without waiting for a QMP client
  if (a.qmpSocket !== undefined) args.push('-qmp', `unix:${optValue(a.qmpSocket)},server=on,wait=off`);
  // last, so a destination's argv is the source's with this appended (and its own sockets)
  if (a.incoming !== undefined) args.push('-incoming', a.incoming);
  return args;
}
