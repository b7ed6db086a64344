// The metrics code without daemons (src/metrics/): the --metrics address, how a native snapshot
// becomes exposition text (cumulative histogram buckets, one snapshot per scrape, series that go
// away with their device), and the config keys of both daemons.
import test from 'ava';
import { Registry } from 'prom-client';
import { parseMetricsAddress } from '../../src/metrics/address.js';
import { ioFamilies, labelPaths, perScrape, type IoSource } from '../../src/metrics/families.js';
import { IO_OPS, type IoMetrics, type IoOpMetrics } from '../../src/backend/io-metrics.js';
import { validateServerOptions } from '../../src/server/options.js';
import { validateClientOptions } from '../../src/client/daemon.js';
import { parseOptions } from '../../bench/options.js';

test('--metrics takes ADDR:PORT or [V6]:PORT and refuses the rest with EINVAL naming it', (t) => {
  t.deepEqual(parseMetricsAddress('127.0.0.1:9741'), { host: '127.0.0.1', port: 9741 });
  t.deepEqual(parseMetricsAddress('[::1]:0'), { host: '::1', port: 0 });
  for (const bad of ['localhost:9741', '127.0.0.1', '127.0.0.1:70000', '::1:9741', '[::1]', '']) {
    const e = t.throws(() => parseMetricsAddress(bad), undefined, bad);
    t.is((e as { code?: string }).code, 'EINVAL');
    t.regex(e!.message, /^--metrics /);
  }
  t.deepEqual(validateServerOptions({ devSearchPath: '/', metrics: '10.0.0.1:9742' }).metrics, { host: '10.0.0.1', port: 9742 });
  t.is(validateServerOptions({ devSearchPath: '/' }).metrics, undefined);
  t.is(validateClientOptions({ metrics: '[fe80::1]:9741' }).metrics, '[fe80::1]:9741');
  t.throws(() => validateClientOptions({ metrics: 'nowhere' }), { message: /--metrics "nowhere"/ });
});

const BOUNDS = Array.from({ length: 20 }, (_, i) => (8 << i) / 1e6);

function opMetrics(requests: number, buckets: number[]): IoOpMetrics {
  const all = [...buckets, ...Array(21 - buckets.length).fill(0)] as number[];
  return { requests, bytes: requests * 4096, errors: { io: 0, invalid: 0, unsupported: 0, transport: 1 }, latencySumSeconds: 0.5, latencyBuckets: all };
}

function io(write: IoOpMetrics): IoMetrics {
  const m = Object.fromEntries(IO_OPS.map((op) => [op, opMetrics(0, [])])) as Record<(typeof IO_OPS)[number], IoOpMetrics>;
  return { ...m, write, latencyBoundsSeconds: BOUNDS };
}

test('a native snapshot becomes counters and a histogram with cumulative buckets, taken once per scrape', async (t) => {
  const registry = new Registry();
  let takes = 0;
  let devices: IoSource[] = [{ labels: { device: 'ibnbd0' }, inflight: 3, io: io(opMetrics(6, [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3])) }];
  const read = perScrape(() => {
    takes++;
    return devices;
  });
  ioFamilies(registry, 'ibnbd_test', ['device'], read);
  const text = await registry.metrics();
  t.is(takes, 1, 'five families, one snapshot');
  const line = (s: string) => t.true(text.split('\n').includes(s), s);
  line('# TYPE ibnbd_test_requests_total counter');
  line('ibnbd_test_requests_total{device="ibnbd0",op="write"} 6');
  line('ibnbd_test_bytes_total{device="ibnbd0",op="write"} 24576');
  line('ibnbd_test_errors_total{device="ibnbd0",op="write",kind="transport"} 1');
  line('ibnbd_test_inflight_requests{device="ibnbd0"} 3');
  line('# TYPE ibnbd_test_request_duration_seconds histogram');
  line('ibnbd_test_request_duration_seconds_bucket{device="ibnbd0",op="write",le="0.000008"} 1');
  line('ibnbd_test_request_duration_seconds_bucket{device="ibnbd0",op="write",le="0.000016"} 3');
  line('ibnbd_test_request_duration_seconds_bucket{device="ibnbd0",op="write",le="4.194304"} 3');
  line('ibnbd_test_request_duration_seconds_bucket{device="ibnbd0",op="write",le="+Inf"} 6');
  line('ibnbd_test_request_duration_seconds_count{device="ibnbd0",op="write"} 6');
  line('ibnbd_test_request_duration_seconds_sum{device="ibnbd0",op="write"} 0.5');
  // the next scrape takes a new snapshot, and a device that went away leaves no series
  await new Promise((r) => setImmediate(r));
  devices = [];
  const after = await registry.metrics();
  t.is(takes, 2);
  t.false(after.includes('ibnbd0'));
});

test('two paths of a session with one address get told apart, in the order the session lists them', (t) => {
  const path = (dst: string) => ({ src: '', dst, state: 'connected' as const, inflight: 0, reconnects: 0, hbRttNs: 0, requests: 0, failovers: 0 });
  const labelled = labelPaths([{ session: 's', paths: [path('ip:a:1'), path('ip:b:1'), path('ip:a:1')] }, { session: 't', paths: [path('ip:a:1')] }], (p) => p.dst);
  t.deepEqual(labelled.map((p) => p.labels), [
    { session: 's', path: 'ip:a:1' },
    { session: 's', path: 'ip:b:1' },
    { session: 's', path: 'ip:a:1#2' },
    { session: 't', path: 'ip:a:1' },
  ]);
});

test('bench: m (ours scraped every second) runs only with --metrics-cost, which brings a along', (t) => {
  t.deepEqual(parseOptions([]).targets, ['a', 'b', 'c', 'd', 'e']);
  t.deepEqual(parseOptions(['--metrics-cost']).targets, ['a', 'b', 'c', 'd', 'e', 'm']);
  t.deepEqual(parseOptions(['--targets', 'b', '--metrics-cost']).targets, ['a', 'b', 'm']);
  t.deepEqual(parseOptions(['--targets', 'a,m']).targets, ['a', 'm']);
});

test('an operation without requests has its counters at 0 and no histogram series', async (t) => {
  const registry = new Registry();
  ioFamilies(registry, 'ibnbd_t2', ['device'], perScrape(() => [{ labels: { device: 'd' }, inflight: 0, io: io(opMetrics(1, [1])) }]));
  const text = await registry.metrics();
  t.true(text.includes('ibnbd_t2_requests_total{device="d",op="discard"} 0'));
  t.true(text.includes('ibnbd_t2_request_duration_seconds_count{device="d",op="write"} 1'));
  t.false(text.includes('ibnbd_t2_request_duration_seconds_count{device="d",op="discard"}'));
});
