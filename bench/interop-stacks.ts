// The six stacks `bench --interop` measures on one device in one guest: the four client/server
// pairs of the kernel's RNBD and ours, ours again with both daemons polling, and the stack a user would build instead of our client on
// an RDMA host (the kernel client with qemu-storage-daemon's vhost-user export). Every figure is
// divided by two of them: the all-kernel pair and that alternative.

export type PairId = 'kk' | 'ko' | 'ok' | 'oo' | 'op' | 'kq';

/** The polling window of the second set of our daemons (stack op); see bench/rdma.ts for why 1000 under TCG. */
export const INTEROP_POLL_US = 1000;

export interface Pair {
  id: PairId;
  label: string;
  short: string;
  /** how the load generator reaches it: libblkio's io_uring driver on a /dev/rnbdN, or its virtio-blk-vhost-user driver on a socket */
  via: 'block' | 'vhost-user';
  /** the guest script's shell variable holding that device or socket */
  target: string;
  /** the kernel client's /dev/rnbdN underneath (shell variable): its /sys/block stat is read around every run */
  kernelDev?: string;
}

export const PAIRS: readonly Pair[] = [
  { id: 'kk', label: 'kernel client → kernel server', short: 'K→K', via: 'block', target: '$KK', kernelDev: '$KK' },
  { id: 'ko', label: 'kernel client → our server', short: 'K→ours', via: 'block', target: '$KO', kernelDev: '$KO' },
  { id: 'ok', label: 'our client → kernel server', short: 'ours→K', via: 'vhost-user', target: '$OK' },
  { id: 'oo', label: 'our client → our server', short: 'ours→ours', via: 'vhost-user', target: '$OO' },
  // a second pair of our daemons, both with --poll-us (interrupt-driven above is the default)
  { id: 'op', label: `our client → our server, both --poll-us ${INTEROP_POLL_US}`, short: 'ours→ours polled', via: 'vhost-user', target: '$OP' },
  // the same /dev/rnbdN as K→K: the same kernel client, session and kernel server, with qsd's hop on top
  { id: 'kq', label: 'kernel client + qsd vhost-user export', short: 'K+qsd', via: 'vhost-user', target: '$KQ', kernelDev: '$KK' },
];

/** The pairs fio also measures: the ones the load generator reaches as a /dev/rnbdN. */
export const FIO_PAIRS: readonly Pair[] = PAIRS.filter((p) => p.via === 'block');

/** The stacks every other is divided by: the all-kernel pair, and the alternative to our client (issue 21: ours→ours ≥ 1.0× K+qsd). */
export const BASES = ['kk', 'kq'] as const satisfies readonly PairId[];
export type BaseId = (typeof BASES)[number];

export const pairById = (id: PairId): Pair => PAIRS.find((p) => p.id === id)!;
