// Adaptive polling of the IO threads (--poll-us, docs/operations.md, "Adaptive polling") on real
// daemons: with it on, verified libblkio IO finds work in the poll windows on both sides (show,
// `server sessions`, /metrics say so) and an idle daemon goes back to sleep instead of spinning;
// out of range is EINVAL naming the option; the config file sets it and SIGHUP moves it live,
// down to 0, where the threads poll no more.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { testMapTarget } from '../support/transport-under-test.js';

interface IoThreads {
  poll_us: number;
  polls: number;
  poll_hits: number;
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** CPU seconds (utime + stime, every thread) the process has used. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

async function waitForLog(log: () => string, re: RegExp, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!re.test(log())) {
    if (Date.now() > end) throw new Error(`no ${re} in the log:\n${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function clientThreads(control: string, device: string): Promise<IoThreads> {
  return (await ibnbdJson<{ device: { io_threads: IoThreads } }>(['show', device, '--control', control])).device.io_threads;
}

async function serverThreads(control: string): Promise<IoThreads> {
  return (await ibnbdJson<{ io_threads: IoThreads }>(['server', 'sessions', '--control', control])).io_threads;
}

/** COUNT random writes of 4..64 KiB at queue depth 8, read back and compared. */
async function verifiedIo(socket: string, count: number, seed: number) {
  return blkio(['--path', socket, '--qd', '8', '--count', String(count), '--seed', String(seed), '--min-size', '4096', '--max-size', String(64 * 1024), 'verify']);
}

test('--poll-us 50 on both daemons: verified IO, polls that found work on each side, and an idle daemon does not spin', async (t) => {
  const dir = tempDir(t, 'poll');
  const exportsDir = join(dir, 'exports');
  mkdirSync(exportsDir);
  sparseFile(join(exportsDir, 'disk.img'), 64 * MiB);
  const metrics = await freePort();
  // the server from its command line, the client from its config file: both ways of turning it on
  const server = await startServerDaemon(t, dir, exportsDir, ['--poll-us', '50', '--metrics', `127.0.0.1:${metrics}`]);
  const cfg = join(dir, 'client.toml');
  writeFileSync(cfg, 'poll-us = 50\n');
  const client = await startClientDaemon(t, dir, ['--config', cfg]);
  const { device } = await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=poll1 ${testMapTarget(server.port)} device_path=disk.img`, '--control', client.control]);

  const run = await verifiedIo(device.socket, 256, 21);
  t.is(run.code, 0, JSON.stringify(run.json));
  t.is(run.json.write.requests, 256);
  t.is(run.json.read.mismatches, 0, 'the data read back is what was written');

  const c = await clientThreads(client.control, device.name);
  const s = await serverThreads(server.control);
  for (const [who, x] of [['client', c], ['server', s]] as const) {
    t.log(`${who}: ${x.poll_hits} hits of ${x.polls} polls`);
    t.is(x.poll_us, 50, `${who}: poll_us`);
    t.true(x.poll_hits > 0, `${who}: polls found work (${JSON.stringify(x)})`);
    t.true(x.polls >= x.poll_hits, `${who}: a hit is a poll (${JSON.stringify(x)})`);
  }
  // the text forms name them too
  t.regex((await ibnbd(['show', device.name, '--control', client.control])).stdout, /^io_threads\.poll_hits:\s+\d+$/m);
  t.regex((await ibnbd(['server', 'sessions', '--control', server.control])).stdout, /^io_threads\/poll_us: 50$/m);
  // and /metrics, in seconds (the base unit), counters read at the scrape
  const text = await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
  t.regex(text, /^ibnbd_server_io_poll_window_seconds 0\.00005$/m);
  const hits = Number(/^ibnbd_server_io_poll_hits_total (\d+)$/m.exec(text)?.[1] ?? NaN);
  const polls = Number(/^ibnbd_server_io_polls_total (\d+)$/m.exec(text)?.[1] ?? NaN);
  t.true(hits >= s.poll_hits && polls >= hits, `metrics: ${hits} hits of ${polls} polls`);
  const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  t.is(check.status, 0, `promtool: ${check.stdout}${check.stderr}`);

  // idle: a window ends ≤ 50 µs after the last work, then the threads block in epoll again.
  // A loop that kept polling would burn a whole core (~2 s of CPU in 2 s); allow 10 %.
  await sleep(300);
  const pids = [server.proc.pid!, client.proc.pid!];
  const before = pids.map(cpuSeconds);
  const t0 = process.hrtime.bigint();
  await sleep(2000);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  pids.forEach((pid, i) => {
    const used = cpuSeconds(pid) - before[i]!;
    t.log(`${i ? 'client' : 'server'}: ${used.toFixed(2)} s CPU in ${seconds.toFixed(2)} s idle`);
    t.true(used < 0.1 * seconds, `${i ? 'client' : 'server'} daemon used ${used.toFixed(2)} s of CPU in ${seconds.toFixed(2)} s of idleness`);
  });
});

test('--poll-us beyond 1000 is EINVAL naming the option, on either daemon and in a config file', async (t) => {
  const dir = tempDir(t, 'poll-bad');
  const c = await ibnbd(['client', '--control', join(dir, 'c.sock'), '--run-dir', join(dir, 'run'), '--state-dir', join(dir, 'state'), '--poll-us', '2000']);
  t.is(c.code, 22, c.stderr);
  t.regex(c.stderr, /--poll-us: 2000 is not an integer from 0 \(off\) to 1000 microseconds/);
  const s = await ibnbd(['server', '--dev-search-path', dir, '--control', join(dir, 's.sock'), '--listen', '127.0.0.1:0', '--poll-us', '2000']);
  t.is(s.code, 22, s.stderr);
  t.regex(s.stderr, /--poll-us "2000": must be an integer in 0\.\.1000/);
  const cfg = join(dir, 'client.toml');
  writeFileSync(cfg, 'poll-us = -5\n');
  const f = await ibnbd(['client', '--config', cfg, '--control', join(dir, 'c.sock'), '--run-dir', join(dir, 'run'), '--state-dir', join(dir, 'state')]);
  t.is(f.code, 22, f.stderr);
  t.regex(f.stderr, new RegExp(`${cfg}:1: key 'poll-us': --poll-us: -5 is not an integer`));
});

test('SIGHUP moves poll-us live on both daemons: show and sessions say so, and at 0 the threads poll no more', async (t) => {
  const dir = tempDir(t, 'poll-hup');
  const exportsDir = join(dir, 'exports');
  mkdirSync(exportsDir);
  sparseFile(join(exportsDir, 'disk.img'), 16 * MiB);
  const scfg = join(dir, 'server.toml');
  const ccfg = join(dir, 'client.toml');
  writeFileSync(scfg, 'max-sessions = 10\n');
  writeFileSync(ccfg, 'io-timeout = 30\n');
  const server = await startServerDaemon(t, dir, exportsDir, ['--config', scfg]);
  const client = await startClientDaemon(t, dir, ['--config', ccfg]);
  const { device } = await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=poll2 ${testMapTarget(server.port)} device_path=disk.img`, '--control', client.control]);
  t.is((await clientThreads(client.control, device.name)).poll_us, 0, 'off by default');
  t.is((await serverThreads(server.control)).poll_us, 0);

  writeFileSync(scfg, 'max-sessions = 10\npoll-us = 100\n');
  writeFileSync(ccfg, 'io-timeout = 30\npoll-us = 100\n');
  server.proc.kill('SIGHUP');
  client.proc.kill('SIGHUP');
  await waitForLog(server.log, /SIGHUP: poll-us now 100 \(was 0\)/);
  await waitForLog(client.log, /SIGHUP: poll-us now 100 \(was 0\)/);
  t.notRegex(server.log() + client.log(), /changes [^:]*poll-us/, 'poll-us is not reported as needing a restart');
  t.is((await clientThreads(client.control, device.name)).poll_us, 100);
  t.is((await serverThreads(server.control)).poll_us, 100);
  const on = await verifiedIo(device.socket, 64, 5);
  t.is(on.code, 0, JSON.stringify(on.json));
  t.is(on.json.read.mismatches, 0);
  t.true((await clientThreads(client.control, device.name)).poll_hits > 0, 'the running threads poll from the SIGHUP on');
  t.true((await serverThreads(server.control)).poll_hits > 0);

  // the key gone: back to the default, off
  writeFileSync(scfg, 'max-sessions = 10\n');
  writeFileSync(ccfg, 'io-timeout = 30\n');
  server.proc.kill('SIGHUP');
  client.proc.kill('SIGHUP');
  await waitForLog(server.log, /SIGHUP: poll-us now 0 \(was 100\)/);
  await waitForLog(client.log, /SIGHUP: poll-us now 0 \(was 100\)/);
  await sleep(50);  // a window already open ends (100 µs)
  const c0 = await clientThreads(client.control, device.name);
  const s0 = await serverThreads(server.control);
  t.is(c0.poll_us, 0);
  const off = await verifiedIo(device.socket, 64, 6);
  t.is(off.code, 0, JSON.stringify(off.json));
  t.is(off.json.read.mismatches, 0);
  t.is((await clientThreads(client.control, device.name)).polls, c0.polls, 'client: no poll at poll-us 0');
  t.is((await serverThreads(server.control)).polls, s0.polls, 'server: no poll at poll-us 0');
});
