// The workloads of `npm run bench` (from the benchmark issue): 4 KiB random read and write at
// QD1 and QD32, 128 KiB sequential read and write at QD8. One queue each, fixed seed. One more on
// request: 4 KiB random read on 4 queues × QD32, against the 1-queue figure of the same run.
export type Rw = 'randread' | 'randwrite' | 'read' | 'write' | 'randrw';

export interface Workload {
  id: string;
  label: string;
  rw: Rw;
  bs: number;
  qd: number;
  /** the figure the chart and the summary lead with */
  headline: 'iops' | 'mbps';
  /** virtqueues the load generator drives, qd requests on each; 1 unless said */
  queues?: number;
}

export const WORKLOADS: readonly Workload[] = [
  { id: 'randread-4k-qd1', label: '4 KiB randread QD1', rw: 'randread', bs: 4096, qd: 1, headline: 'iops' },
  { id: 'randread-4k-qd32', label: '4 KiB randread QD32', rw: 'randread', bs: 4096, qd: 32, headline: 'iops' },
  { id: 'randwrite-4k-qd1', label: '4 KiB randwrite QD1', rw: 'randwrite', bs: 4096, qd: 1, headline: 'iops' },
  { id: 'randwrite-4k-qd32', label: '4 KiB randwrite QD32', rw: 'randwrite', bs: 4096, qd: 32, headline: 'iops' },
  { id: 'read-128k-qd8', label: '128 KiB seq read QD8', rw: 'read', bs: 131072, qd: 8, headline: 'mbps' },
  { id: 'write-128k-qd8', label: '128 KiB seq write QD8', rw: 'write', bs: 131072, qd: 8, headline: 'mbps' },
  { id: 'randread-4k-4q-qd32', label: '4 KiB randread 4 queues × QD32', rw: 'randread', bs: 4096, qd: 32, queues: 4, headline: 'iops' },
];

/** What a run does without --workloads: every workload of one queue. */
export const DEFAULT_WORKLOAD_IDS: readonly string[] = WORKLOADS.filter((w) => (w.queues ?? 1) === 1).map((w) => w.id);

/** The most queues a workload drives: the peers' exports offer this many. */
export const MAX_QUEUES = Math.max(...WORKLOADS.map((w) => w.queues ?? 1));

export function isReadLike(rw: Rw): boolean {
  return rw === 'randread' || rw === 'read';
}

/** What the guest benches (--rdma, --interop) run: TCG makes every second dear, so reads only. */
export const GUEST_WORKLOAD_IDS: readonly string[] = ['randread-4k-qd1', 'randread-4k-qd32', 'read-128k-qd8'];
