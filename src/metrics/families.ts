// The metric families both daemons export, built on prom-client collectors: each family's
// collect() reads a native snapshot when /metrics is scraped and rewrites its samples from it.
// Nothing here runs per IO; the IO threads keep the counts in native memory
// (native/common/io_metrics.h, the transports' path counters) and we only copy them out.
//
// The families are shared by the client (ibnbd_client_…, one device per mapping) and the server
// (ibnbd_server_…, one device per device × session); the daemons' files say what they label.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { IO_ERROR_KINDS, IO_OPS, type IoMetrics } from '../backend/io-metrics.js';
import type { IoThreadStats, PathInfo, PathState } from '../backend/transport.js';

type Labels = Record<string, string>;
interface Sample {
  labels: Labels;
  value: number;
}

/**
 * One native snapshot per scrape: every family's collect() runs in the same turn of the event
 * loop (prom-client calls them one after the other before awaiting), so the first one takes the
 * snapshot and the others reuse it; the next scrape takes a fresh one.
 */
export function perScrape<T>(take: () => T): () => T {
  let cached: { value: T } | undefined;
  return () => {
    if (!cached) {
      cached = { value: take() };
      setImmediate(() => (cached = undefined));
    }
    return cached.value;
  };
}

/** A counter or gauge whose values are the native ones: reset, then set from the snapshot at each
 *  scrape, so that a series whose device or path went away disappears instead of staying at its
 *  last value. A counter is rebuilt with inc(), the only way prom-client sets one. */
function snapshotSeries(type: 'counter' | 'gauge', registry: Registry, name: string, help: string, labelNames: string[], read: () => Sample[]): void {
  const config = { name, help, labelNames, registers: [registry] };
  if (type === 'counter') new Counter({ ...config, collect() { this.reset(); for (const s of read()) this.inc(s.labels, s.value); } });
  else new Gauge({ ...config, collect() { this.reset(); for (const s of read()) this.set(s.labels, s.value); } });
}

const snapshotCounter = snapshotSeries.bind(null, 'counter');
const snapshotGauge = snapshotSeries.bind(null, 'gauge');

interface HistogramSample {
  labels: Labels;
  /** per bucket, not cumulative; one more than bounds (the overflow) */
  buckets: number[];
  sumSeconds: number;
}

/**
 * A histogram whose buckets were counted natively. prom-client's Histogram only observes one
 * value at a time, so this one replaces how the values are produced (the exposition format:
 * cumulative _bucket series with le, then _sum and _count) and keeps the rest of the class, so
 * the registry formats it as any other histogram.
 */
class NativeHistogram extends Histogram<string> {
  constructor(
    registry: Registry,
    private readonly metric: string,
    help: string,
    labelNames: string[],
    private readonly bounds: () => number[],
    private readonly read: () => HistogramSample[],
  ) {
    super({ name: metric, help, labelNames, registers: [registry] });
  }

  async getForPromString(): Promise<Awaited<ReturnType<Histogram<string>['get']>>> {
    const values: { value: number; labels: Record<string, string | number>; metricName: string }[] = [];
    const bounds = this.bounds();
    for (const s of this.read()) {
      let acc = 0;
      bounds.forEach((le, i) => {
        acc += s.buckets[i] ?? 0;
        values.push({ value: acc, labels: { ...s.labels, le }, metricName: `${this.metric}_bucket` });
      });
      const count = acc + (s.buckets[bounds.length] ?? 0);
      values.push({ value: count, labels: { ...s.labels, le: '+Inf' }, metricName: `${this.metric}_bucket` });
      values.push({ value: s.sumSeconds, labels: s.labels, metricName: `${this.metric}_sum` });
      values.push({ value: count, labels: s.labels, metricName: `${this.metric}_count` });
    }
    // the registry reads name, help, type and aggregator as prom-client's own classes give them
    const self = this as unknown as { name: string; help: string; type: never; aggregator: 'sum' };
    return { name: self.name, help: self.help, type: self.type, values, aggregator: self.aggregator } as never;
  }

  override get(): ReturnType<Histogram<string>['get']> {
    return this.getForPromString();
  }
}

/** One device's IO as the native side counted it, with the labels that name it. */
export interface IoSource {
  labels: Labels;
  inflight: number;
  io: IoMetrics | undefined;
}

/**
 * requests, bytes, errors by kind, in-flight and the latency histogram, per operation, of every
 * device `read` lists. prefix: "ibnbd_client" or "ibnbd_server".
 */
export function ioFamilies(registry: Registry, prefix: string, deviceLabels: string[], read: () => IoSource[]): void {
  const perOp = (value: (io: IoMetrics, op: (typeof IO_OPS)[number]) => number) => (): Sample[] =>
    read().flatMap((d) => (d.io ? IO_OPS.map((op) => ({ labels: { ...d.labels, op }, value: value(d.io!, op) })) : []));
  snapshotCounter(registry, `${prefix}_requests_total`, 'Requests answered, any result, by operation', [...deviceLabels, 'op'],
    perOp((io, op) => io[op].requests));
  snapshotCounter(registry, `${prefix}_bytes_total`,
    'Bytes of the successful requests: data for read/write, the range for discard/write_zeroes, 0 for flush',
    [...deviceLabels, 'op'], perOp((io, op) => io[op].bytes));
  snapshotCounter(registry, `${prefix}_errors_total`,
    'Failed requests by operation and kind: io (the device or server said no), invalid (malformed or out of range), unsupported, transport (lost with the network or the session)',
    [...deviceLabels, 'op', 'kind'],
    () => read().flatMap((d) => (d.io ? IO_OPS.flatMap((op) => IO_ERROR_KINDS.map((kind) => ({ labels: { ...d.labels, op, kind }, value: d.io![op].errors[kind] }))) : [])));
  snapshotGauge(registry, `${prefix}_inflight_requests`, 'Requests received and not yet answered', deviceLabels,
    () => read().map((d) => ({ labels: d.labels, value: d.inflight })));
  new NativeHistogram(registry, `${prefix}_request_duration_seconds`,
    'Time from receiving a request to answering it, by operation', [...deviceLabels, 'op'],
    () => read().find((d) => d.io)?.io?.latencyBoundsSeconds ?? [],
    // an operation's histogram from its first request on: most devices never see some operations,
    // and 23 series of zeroes each would be most of a large scrape (the counters stay, at 0)
    () => read().flatMap((d) => (d.io ? IO_OPS.filter((op) => d.io![op].requests > 0).map((op) => ({ labels: { ...d.labels, op }, buckets: d.io![op].latencyBuckets, sumSeconds: d.io![op].latencySumSeconds })) : [])));
}

const PATH_STATES: PathState[] = ['connecting', 'connected', 'reconnecting', 'closed'];

/** One transport path, with the labels that name it (session, path address). */
export interface PathSource {
  labels: Labels;
  path: PathInfo;
}

/**
 * The paths of some sessions, each labelled with its session and path(p). Two paths of a session
 * that would get the same label (two paths to one server address from different local ones) are
 * told apart as "ADDR#2", "ADDR#3" in the order the session lists them, which does not change,
 * so that no two series share their labels.
 */
export function labelPaths(sessions: { session: string; paths: PathInfo[] }[], path: (p: PathInfo) => string): PathSource[] {
  return sessions.flatMap(({ session, paths }) => {
    const seen = new Map<string, number>();
    return paths.map((p) => {
      const base = path(p);
      const n = (seen.get(base) ?? 0) + 1;
      seen.set(base, n);
      return { labels: { session, path: n === 1 ? base : `${base}#${n}` }, path: p };
    });
  });
}

/** Per path: state (one series per possible state, 1 for the current one), reconnects,
 *  failovers (client), heartbeat round trip, requests. */
export function pathFamilies(registry: Registry, prefix: string, read: () => PathSource[], opts: { failovers: boolean; requestsHelp: string }): void {
  const labelNames = ['session', 'path'];
  snapshotGauge(registry, `${prefix}_path_state`, 'The path\'s state: 1 for the state it is in, 0 for the others', [...labelNames, 'state'],
    () => read().flatMap((p) => PATH_STATES.map((state) => ({ labels: { ...p.labels, state }, value: p.path.state === state ? 1 : 0 }))));
  snapshotCounter(registry, `${prefix}_path_reconnects_total`, 'Times the path was connected again after it was lost', labelNames,
    () => read().map((p) => ({ labels: p.labels, value: p.path.reconnects })));
  if (opts.failovers) {
    snapshotCounter(registry, `${prefix}_path_failovers_total`, 'Requests in flight on the path when it died that were sent again on another path', labelNames,
      () => read().map((p) => ({ labels: p.labels, value: p.path.failovers })));
  }
  snapshotGauge(registry, `${prefix}_path_heartbeat_rtt_seconds`, 'Round trip of the path\'s last heartbeat (0 before the first)', labelNames,
    () => read().map((p) => ({ labels: p.labels, value: p.path.hbRttNs / 1e9 })));
  snapshotCounter(registry, `${prefix}_path_requests_total`, opts.requestsHelp, labelNames,
    () => read().map((p) => ({ labels: p.labels, value: p.path.requests })));
  snapshotGauge(registry, `${prefix}_path_inflight_requests`, 'Requests in flight on the path', labelNames,
    () => read().map((p) => ({ labels: p.labels, value: p.path.inflight })));
}

/**
 * The IO threads' adaptive polling (--poll-us), process-wide: the window (a gauge in seconds, the
 * base unit; 0 when off) and, summed over the threads since the start, the non-blocking waits made
 * in windows and those that found work. hits / polls is how often polling paid.
 */
export function pollFamilies(registry: Registry, prefix: string, read: () => IoThreadStats): void {
  snapshotGauge(registry, `${prefix}_io_poll_window_seconds`, 'How long an IO thread polls for work after work before it sleeps (--poll-us); 0: never', [],
    () => [{ labels: {}, value: read().pollUs / 1e6 }]);
  snapshotCounter(registry, `${prefix}_io_polls_total`, 'Non-blocking waits the IO threads made in their poll windows', [],
    () => [{ labels: {}, value: read().polls }]);
  snapshotCounter(registry, `${prefix}_io_poll_hits_total`, 'Non-blocking waits of the poll windows that found work', [],
    () => [{ labels: {}, value: read().pollHits }]);
}

/** One session (or client device) and the state it is in since when. */
export interface StateSource {
  labels: Labels;
  state: string;
  seconds: number;
}

/** `${prefix}_state` (1 for the current state of the list, 0 for the others) and
 *  `${prefix}_state_seconds` (how long it has been in it). */
export function stateFamilies(registry: Registry, prefix: string, what: string, labelNames: string[], states: readonly string[], read: () => StateSource[]): void {
  snapshotGauge(registry, `${prefix}_state`, `The ${what}'s state: 1 for the state it is in, 0 for the others`, [...labelNames, 'state'],
    () => read().flatMap((s) => states.map((state) => ({ labels: { ...s.labels, state }, value: s.state === state ? 1 : 0 }))));
  snapshotGauge(registry, `${prefix}_state_seconds`, `Seconds the ${what} has been in its current state`, labelNames,
    () => read().map((s) => ({ labels: s.labels, value: s.seconds })));
}
