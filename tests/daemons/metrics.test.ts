// /metrics on both daemons (docs/operations.md, "Metrics"): after a verified libblkio run, the
// text both serve passes `promtool check metrics`, and the request and byte counters of the
// client's device and of the server's device × session equal exactly what the run did; the
// path and session families say connected/open. The server gets --metrics on its command line,
// the client the `metrics` key of its config file: both ways of turning it on.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { testMapTarget } from '../support/transport-under-test.js';

interface Series {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a text exposition (our label values hold no quotes or commas). */
function parseExposition(text: string): Series[] {
  const out: Series[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels[k!] = v!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** The one sample of name whose labels include these; fails when there is none or several. */
function sample(all: Series[], name: string, labels: Record<string, string>): number {
  const hits = all.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (hits.length !== 1) throw new Error(`${name}${JSON.stringify(labels)}: ${hits.length} samples`);
  return hits[0]!.value;
}

async function scrape(port: number, path = '/metrics'): Promise<{ status: number; text: string; type: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, text: await r.text(), type: r.headers.get('content-type') ?? '' };
}

function promtool(text: string): { code: number | null; out: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

test('metrics: promtool accepts both daemons\' /metrics and the IO counters equal the run exactly', async (t) => {
  const dir = tempDir(t, 'metrics');
  const exportsDir = join(dir, 'exports');
  mkdirSync(exportsDir);
  sparseFile(join(exportsDir, 'disk.img'), 64 * MiB);
  const [serverMetrics, clientMetrics] = [await freePort(), await freePort()];
  const server = await startServerDaemon(t, dir, exportsDir, ['--metrics', `127.0.0.1:${serverMetrics}`]);
  const cfg = join(dir, 'client.toml');
  writeFileSync(cfg, `metrics = "127.0.0.1:${clientMetrics}"\n`);
  const client = await startClientDaemon(t, dir, ['--config', cfg]);

  const mapped = await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=metrics1 ${testMapTarget(server.port)} device_path=disk.img`, '--control', client.control]);
  const device = mapped.device.name as string;

  // The workload: COUNT sequential writes of SIZE bytes (below the max IO size, so one IBNBD
  // request each on the wire), read back and compared, then one flush.
  const COUNT = 48;
  const SIZE = 64 * 1024;
  const run = await blkio(['--path', mapped.device.socket, '--qd', '8', '--count', String(COUNT), '--seed', '11', '--sequential',
    '--min-size', String(SIZE), '--max-size', String(SIZE), 'verify']);
  t.is(run.code, 0, JSON.stringify(run.json));
  t.is(run.json.write.requests, COUNT);
  t.is(run.json.read.mismatches, 0);
  t.is((await blkio(['--path', mapped.device.socket, 'flush'])).code, 0);

  const c = await scrape(clientMetrics);
  const s = await scrape(serverMetrics);
  t.is(c.status, 200);
  t.regex(c.type, /^text\/plain; version=0\.0\.4/);
  for (const [who, text] of [['client', c.text], ['server', s.text]] as const) {
    const check = promtool(text);
    t.is(check.code, 0, `promtool check metrics on the ${who}'s /metrics: ${check.out}`);
  }
  const cs = parseExposition(c.text);
  const ss = parseExposition(s.text);

  const dev = { device };
  // the server names a device as `ibnbd server devices` does
  const exported = await ibnbdJson<{ devices: { name: string }[] }>(['server', 'devices', '--control', server.control]);
  t.is(exported.devices.length, 1);
  const srv = { session: 'metrics1', device: exported.devices[0]!.name };
  for (const [all, labels, prefix] of [[cs, dev, 'ibnbd_client'], [ss, srv, 'ibnbd_server']] as const) {
    t.is(sample(all, `${prefix}_requests_total`, { ...labels, op: 'write' }), COUNT, `${prefix} writes`);
    t.is(sample(all, `${prefix}_bytes_total`, { ...labels, op: 'write' }), COUNT * SIZE, `${prefix} bytes written`);
    t.is(sample(all, `${prefix}_requests_total`, { ...labels, op: 'read' }), COUNT, `${prefix} reads`);
    t.is(sample(all, `${prefix}_bytes_total`, { ...labels, op: 'read' }), COUNT * SIZE, `${prefix} bytes read`);
    t.is(sample(all, `${prefix}_requests_total`, { ...labels, op: 'flush' }), 1, `${prefix} flushes`);
    t.is(sample(all, `${prefix}_requests_total`, { ...labels, op: 'discard' }), 0);
    t.is(sample(all, `${prefix}_errors_total`, { ...labels, op: 'write', kind: 'io' }), 0);
    t.is(sample(all, `${prefix}_inflight_requests`, labels), 0);
    // the histogram holds every write: its +Inf bucket and its count are the write count
    t.is(sample(all, `${prefix}_request_duration_seconds_bucket`, { ...labels, op: 'write', le: '+Inf' }), COUNT);
    t.is(sample(all, `${prefix}_request_duration_seconds_count`, { ...labels, op: 'write' }), COUNT);
    t.true(sample(all, `${prefix}_request_duration_seconds_sum`, { ...labels, op: 'write' }) > 0);
    // and the path carried them all (plus the admin requests: SESS_INFO, OPEN)
    t.true(sample(all, `${prefix}_path_requests_total`, { session: 'metrics1' }) >= 2 * COUNT + 1);
    t.is(sample(all, `${prefix}_path_state`, { session: 'metrics1', state: 'connected' }), 1);
    t.is(sample(all, `${prefix}_path_state`, { session: 'metrics1', state: 'reconnecting' }), 0);
  }
  t.is(sample(cs, 'ibnbd_client_path_reconnects_total', { session: 'metrics1' }), 0);
  t.is(sample(cs, 'ibnbd_client_path_failovers_total', { session: 'metrics1' }), 0);
  t.is(sample(cs, 'ibnbd_client_session_state', { session: 'metrics1', state: 'open' }), 1);
  t.is(sample(cs, 'ibnbd_client_device_state', { device, state: 'open' }), 1);
  t.is(sample(ss, 'ibnbd_server_session_state', { session: 'metrics1', state: 'connected' }), 1);
  t.true(sample(ss, 'ibnbd_server_session_state_seconds', { session: 'metrics1' }) > 0);
  // process metrics on both
  t.true(sample(cs, 'process_resident_memory_bytes', {}) > 0);
  t.true(sample(ss, 'process_resident_memory_bytes', {}) > 0);

  // only /metrics is served
  t.is((await scrape(clientMetrics, '/')).status, 404);
  t.is((await scrape(serverMetrics, '/metricsx')).status, 404);

  // an unmapped device's series go away with it
  t.is((await ibnbd(['unmap', device, '--control', client.control])).code, 0);
  t.false((await scrape(clientMetrics)).text.includes(`device="${device}"`));
});

test('metrics: a bad --metrics address is refused at start, naming the option', async (t) => {
  const dir = tempDir(t, 'metrics-bad');
  const r = await ibnbd(['client', '--control', join(dir, 'c.sock'), '--run-dir', join(dir, 'run'), '--state-dir', join(dir, 'state'), '--metrics', 'localhost']);
  t.is(r.code, 22, r.stderr);
  t.regex(r.stderr, /--metrics "localhost": not ADDR:PORT/);
});
