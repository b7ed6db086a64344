// The native bench tools never wait without a limit: a missing socket, a back-end that accepts
// and never answers, and a TCP peer that never replies all end in exit code 2 with a JSON error.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const release = resolve(import.meta.dirname, '..', '..', '..', 'native', 'build', 'Release');

function run(tool: string, args: string[], timeoutMs: number): Promise<{ code: number | null; json: { ok: boolean; error?: string }; ms: number }> {
  const started = Date.now();
  return new Promise((res, rej) => {
    const child = spawn(join(release, tool), args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      try {
        res({ code, json: JSON.parse(out.trim().split('\n').pop() ?? ''), ms: Date.now() - started });
      } catch {
        rej(new Error(`${tool} printed no JSON (exit ${code}): ${out}`));
      }
    });
  });
}

function silentServer(listen: (s: Server) => void): Promise<{ server: Server; sockets: Socket[] }> {
  const sockets: Socket[] = [];
  const server = createServer((s) => sockets.push(s));
  return new Promise((res) => {
    server.on('listening', () => res({ server, sockets }));
    listen(server);
  });
}

test('blkio bench: a missing socket is ENOENT, exit 2', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-bench-tools-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = await run('ibnbd-blkio-bench', ['--path', join(dir, 'nothing.sock'), '--runtime-ms', '100'], 20_000);
  t.is(r.code, 2);
  t.false(r.json.ok);
  t.regex(r.json.error ?? '', /No such file or directory/);
});

test('blkio bench: a back-end that accepts and never answers ends by the watchdog, exit 2', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-bench-tools-'));
  const { server, sockets } = await silentServer((s) => s.listen(join(dir, 'mute.sock')));
  t.teardown(() => { sockets.forEach((s) => s.destroy()); server.close(); rmSync(dir, { recursive: true, force: true }); });
  const r = await run('ibnbd-blkio-bench', ['--path', join(dir, 'mute.sock'), '--runtime-ms', '100', '--timeout-ms', '100'], 30_000);
  t.is(r.code, 2);
  t.regex(r.json.error ?? '', /watchdog/);
  t.true(r.ms < 15_000, `ended after ${r.ms} ms`);
});

test('tcp probe: a peer that never replies is a timeout, exit 2', async (t) => {
  const { server, sockets } = await silentServer((s) => s.listen(0, '127.0.0.1'));
  t.teardown(() => { sockets.forEach((s) => s.destroy()); server.close(); });
  const port = (server.address() as { port: number }).port;
  const r = await run('ibnbd-tcp-probe', ['client', '--connect', `127.0.0.1:${port}`, '--runtime-ms', '100', '--timeout-ms', '300'], 20_000);
  t.is(r.code, 2);
  t.regex(r.json.error ?? '', /no reply within --timeout-ms/);
  t.true(r.ms < 10_000);
});

test('tcp probe against its own server: QD1 and QD32 both complete, one reply per request', async (t) => {
  const server = spawn(join(release, 'ibnbd-tcp-probe'), ['server', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => server.kill('SIGKILL'));
  const port = await new Promise<number>((res, rej) => {
    const timer = setTimeout(() => rej(new Error('probe server did not start')), 10_000);
    server.stdout.once('data', (d: Buffer) => { clearTimeout(timer); res((JSON.parse(d.toString()) as { port: number }).port); });
  });
  for (const qd of ['1', '32']) {
    const r = await run('ibnbd-tcp-probe', ['client', '--connect', `127.0.0.1:${port}`, '--qd', qd, '--runtime-ms', '200'], 20_000);
    const j = r.json as unknown as { ok: boolean; ios: number; submitted: number; iops: number };
    t.is(r.code, 0);
    t.true(j.ok && j.ios > 0 && j.submitted >= j.ios);
  }
});

// --driver io_uring: the same load loop on a block device or file (bench --interop runs it on the
// kernel client's /dev/rnbdN); here a file on the host's disk, read with O_DIRECT
test('blkio bench --driver io_uring: reads a file through the same loop, capacity and counts reported', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-bench-tools-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'disk.img');
  writeFileSync(file, Buffer.alloc(4 << 20, 0x5a));
  for (const [rw, bs, qd] of [['randread', 4096, 4], ['read', 131072, 2]] as const) {
    const r = await run('ibnbd-blkio-bench', ['--driver', 'io_uring', '--path', file, '--rw', rw, '--bs', String(bs), '--qd', String(qd), '--runtime-ms', '200'], 20_000);
    t.is(r.code, 0, JSON.stringify(r.json));
    const j = r.json as unknown as { ok: boolean; capacity: number; ios: number; iops: number; mbps: number; errors: number };
    t.true(j.ok);
    t.is(j.capacity, 4 << 20);
    t.true(j.ios > 0 && j.errors === 0, `${rw}: ${j.ios} IOs`);
    t.true(Math.abs(j.mbps - (j.iops * bs) / 1e6) <= 0.01 * j.mbps + 0.05);
  }
});

test('blkio bench: an unknown --driver is refused before anything is opened, exit 2', (t) => {
  const r = spawnSync(join(release, 'ibnbd-blkio-bench'), ['--driver', 'nvme-io_uring', '--path', '/dev/null'], { encoding: 'utf8', timeout: 10_000 });
  t.is(r.status, 2);
  t.regex(r.stderr, /--driver: virtio-blk-vhost-user or io_uring/);
});
