// The native bench tools never wait without a limit: a missing socket, a back-end that accepts
// and never answers, and a TCP peer that never replies all end in exit code 2 with a JSON error.
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const release = resolve(import.meta.dirname, '..', '..', 'native', 'build', 'Release');

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
