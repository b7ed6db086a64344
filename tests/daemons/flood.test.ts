// Bounded resources (docs/security.md, "Bounds"): a flood of half-open connections and of failed
// handshakes beside an established session. The server keeps at most --max-pending-handshakes
// connections in the handshake (the oldest goes first), closes the rest after
// --handshake-timeout-ms, logs one line where it would have logged thousands, and the good
// session's verifying writer sees no error; out of descriptors (EMFILE at accept) the server
// stops watching its listener for a second instead of spinning on it. Real daemons over TCP.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, rssBytes, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { scaled } from '../support/transport-under-test.js';
import * as F from '../support/tcp-frames.js';

const SECRET = randomBytes(32);
const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
/** user + system CPU of a process in clock ticks (/proc/<pid>/stat fields 14, 15) */
const cpuTicks = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]);
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function connect(port: number): Promise<net.Socket | null> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => resolve(s));
    s.once('error', () => resolve(null));
  });
}

async function setup(t: import('ava').ExecutionContext, extra: string[]) {
  const dir = tempDir(t, 'flood');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  sparseFile(join(ex, 'a.img'), 64 * MiB);
  const keys = join(dir, 'keys');
  writeFileSync(keys, `good ${SECRET.toString('hex')}\n`);
  chmodSync(keys, 0o600);
  const server = await startServerDaemon(t, dir, ex, ['--auth-keys', keys, ...extra]);
  const client = await startClientDaemon(t, dir, ['--auth-keys', keys]);
  const m = await ibnbd(['map', `sessname=good path=ip:127.0.0.1:${server.port} device_path=a.img`, '--json', '--control', client.control]);
  t.is(m.code, 0, m.stderr);
  return { server, socket: JSON.parse(m.stdout).device.socket as string };
}

const verify = (socket: string, seed: number, count: number) =>
  blkio(['--path', socket, '--timeout-ms', String(scaled(60_000)), '--qd', '16', '--seed', String(seed), '--count', String(count),
    '--min-size', '4096', '--max-size', '65536', '--span', String(count * 65536), 'verify'], scaled(300_000));

test.serial('2,000 half-open connections and 10,000 bad handshakes beside a verifying session: no error, pending, fds and RSS bounded', async (t) => {
  t.timeout(scaled(240_000));
  const { server, socket } = await setup(t, []);
  const pid = server.proc.pid!;
  const rss0 = rssBytes(pid);
  const fd0 = fdCount(pid);
  let fdMax = fd0;
  let rssMax = rss0;
  let stop = false;
  const sampler = (async () => {
    while (!stop) {
      fdMax = Math.max(fdMax, fdCount(pid));
      rssMax = Math.max(rssMax, rssBytes(pid));
      await sleep(50);
    }
  })();
  // the good session verifies, run after run, for as long as the flood lasts
  let flooding = true;
  const runs: Array<Awaited<ReturnType<typeof verify>>> = [];
  const work = (async () => {
    while (flooding || runs.length < 2) runs.push(await verify(socket, 7 + runs.length, 300));
  })();

  const t0 = Date.now();
  // 2,000 connections that never say a word
  const halfOpen: net.Socket[] = [];
  t.teardown(() => halfOpen.forEach((s) => s.destroy()));
  for (let i = 0; i < 2000; i++) {
    const s = await connect(server.port);
    if (s) {
      s.on('error', () => undefined);
      halfOpen.push(s);
    }
  }
  t.log(`2,000 half-open connections made in ${Date.now() - t0} ms`);
  // 10,000 handshakes that fail: no proof, a malformed request, a wrong proof
  const good = { version: 1, connIndex: 0, connCount: 2, queueDepth: 32, maxIoSize: 131072, incarnation: 1, sessionUuid: randomBytes(16), pathUuid: randomBytes(16), flags: 0, sessname: 'good' };
  let failed = 0;
  const one = async (i: number) => {
    const s = await connect(server.port);
    if (!s) return;
    s.on('error', () => undefined);
    s.resume(); // read the refusal, so the server's close is seen at once
    const kind = i % 3;
    if (kind === 0) s.write(F.encodeHandshakeReq(good));
    else if (kind === 1) s.write(randomBytes(F.HANDSHAKE_REQ_SIZE + 8));
    else {
      s.write(F.encodeHandshakeReq({ ...good, flags: F.FLAG_AUTH, clientNonce: randomBytes(32) }));
      s.once('data', () => s.write(F.encodeAuthProof({ clientProof: randomBytes(32) })));
    }
    await new Promise<void>((r) => {
      s.once('close', () => r());
      setTimeout(() => (s.destroy(), r()), scaled(5000));
    });
    failed++;
  };
  for (let i = 0; i < 10_000; i += 50) await Promise.all(Array.from({ length: 50 }, (_, k) => one(i + k)));
  t.log(`10,000 failed handshakes done ${Date.now() - t0} ms after the flood began`);
  flooding = false;
  await work;
  stop = true;
  await sampler;
  const ms = runs.map((r) => r.json.write.ms + r.json.read.ms).sort((a, b) => a - b);
  t.log(`the good session verified ${runs.length} runs of 300 requests meanwhile: median ${ms[ms.length >> 1]!.toFixed(0)} ms, longest ${ms[ms.length - 1]!.toFixed(0)} ms`);
  for (const w of runs) {
    t.is(w.code, 0, `the good session's writer: ${JSON.stringify(w.json)}`);
    t.is(w.json.write.errors + w.json.read.errors + w.json.read.mismatches, 0);
  }
  t.is(failed, 10_000);
  const log = server.log();
  t.log(`server during the flood: fds ${fd0} → at most ${fdMax}, RSS ${(rss0 / MiB).toFixed(1)} → at most ${(rssMax / MiB).toFixed(1)} MiB`);
  t.true(fdMax <= fd0 + 512 + 100, `at most --max-pending-handshakes (512) more descriptors than before (${fd0} → ${fdMax})`);
  t.true(rssMax - rss0 < 64 * MiB, `RSS grew by less than 64 MiB (${((rssMax - rss0) / MiB).toFixed(1)} MiB)`);
  t.regex(log, /handshakes in progress \(--max-pending-handshakes\): closing the oldest/);
  t.true((log.match(/\n/g) ?? []).length < 2000, `refusals logged up to 20 a second, the rest counted (${(log.match(/\n/g) ?? []).length} lines)`);
  // the half-open connections are closed by the server within the handshake timeout
  await sleep(scaled(6500));
  t.true(fdCount(pid) <= fd0 + 10, `the half-open connections are gone after the handshake timeout (${fdCount(pid)} fds, ${fd0} before)`);
});

test.serial('out of descriptors at accept: the listener rests instead of spinning, the session goes on', async (t) => {
  const { server, socket } = await setup(t, ['--max-pending-handshakes', '5000']);
  const pid = server.proc.pid!;
  // leave the server a few descriptors above what it holds
  const limit = fdCount(pid) + 40;
  execFileSync('prlimit', ['--pid', String(pid), `--nofile=${limit}:${limit}`]);
  const socks: net.Socket[] = [];
  t.teardown(() => socks.forEach((s) => s.destroy()));
  // 40 take the descriptors left, the rest wait in the listen backlog (more would wait on SYN retries)
  for (let i = 0; i < 100; i++) {
    const s = await connect(server.port);
    if (s) s.on('error', () => undefined), socks.push(s);
  }
  const end = Date.now() + scaled(5000);
  while (!/accept: Too many open files; not accepting for a second/.test(server.log()) && Date.now() < end) await sleep(50);
  t.regex(server.log(), /accept: Too many open files; not accepting for a second/);
  const ticks0 = cpuTicks(pid);
  await sleep(3000);
  const cpuMs = ((cpuTicks(pid) - ticks0) * 1000) / 100;
  t.log(`server CPU over 3 s with its descriptors used up and 60 connections waiting: ${cpuMs} ms`);
  t.true(cpuMs < 1000, `not spinning on the listener (${cpuMs} ms of CPU in 3 s)`);
  const w = await verify(socket, 9, 200);
  t.is(w.code, 0, `the established session: ${JSON.stringify(w.json)}`);
  t.is((server.log().match(/not accepting for a second/g) ?? []).length, 1, 'said once, not once a second');
});

test.serial('each bound is a server option with a clear refusal: sessions EBUSY, connections EBUSY, buffer memory ENOMEM, devices EMFILE', async (t) => {
  const dir = tempDir(t, 'limits');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  for (const f of ['a', 'b', 'c']) sparseFile(join(ex, `${f}.img`), 16 * MiB);
  const server = await startServerDaemon(t, dir, ex, ['--max-sessions', '2', '--max-devices-per-session', '1', '--max-conns-per-session', '2',
    '--max-buffer-memory', '96M', '--queue-depth', '256', '--max-io-size', '131072']);
  const client = await startClientDaemon(t, dir);
  const map = (s: string) => ibnbd(['map', `${s} device_path=a.img access_mode=ro`, '--control', client.control]);
  const at = `path=ip:127.0.0.1:${server.port}`;
  t.is((await map(`sessname=s1 ${at}`)).code, 0, 'one session: 256 × 128 KiB = 32 MiB of buffers');
  const dev = await ibnbd(['map', `sessname=s1 ${at} device_path=b.img`, '--control', client.control]);
  t.is(dev.code, 24, `a second device in the session: EMFILE (${dev.stderr})`);
  t.regex(server.log(), /session s1 has 1 devices open, its most \(--max-devices-per-session\)/);
  const twoPaths = await map(`sessname=s2 ${at} path=ip:127.0.0.1@ip:127.0.0.1:${server.port}`);
  t.is(twoPaths.code, 0, `a second path over the connection limit is refused, the first carries the session: ${twoPaths.stderr}`);
  t.regex(server.log(), /the session has its most connections \(--max-conns-per-session 2\)/);
  const third = await map(`sessname=s3 ${at}`);
  t.is(third.code, 16, `a third session: EBUSY (${third.stderr})`);
  t.regex(third.stderr, /the server refused it for now: at its limit of sessions or of connections per session/);
  t.regex(server.log(), /the server has its most sessions \(--max-sessions 2\)/);
  const big = await startServerDaemon(t, join(dir), ex, ['--max-buffer-memory', '40M', '--queue-depth', '256']);
  t.is((await map(`sessname=m1 path=ip:127.0.0.1:${big.port}`)).code, 0);
  const m2 = await map(`sessname=m2 path=ip:127.0.0.1:${big.port}`);
  t.is(m2.code, 12, `a second 32-MiB session past 40 MiB: ENOMEM (${m2.stderr})`);
  t.regex(big.log(), /the sessions' request buffers would pass --max-buffer-memory \(41943040 bytes\)/);
});
