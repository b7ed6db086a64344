// The client daemon across restarts (docs/client.md, "Mappings across restarts"): its state file
// brings every mapping back under the same name and socket after SIGKILL or SIGTERM, `unmap` is
// what removes one for good, a name is never handed to another mapping, a state file that cannot
// be used is kept aside and said so, and a mapping whose server is away waits and comes back by
// itself. Which device a socket serves is checked by data: each device carries its own pattern.
// Real daemons as child processes over the transport under test; libblkio as the front-end.
import test, { type ExecutionContext } from 'ava';
import { existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, showDevice, startClientDaemon, startServerDaemon, until, type ClientDaemon } from '../support/daemons.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { testMapTarget } from '../support/transport-under-test.js';

const CLIENT = ['--heartbeat-ms', '200', '--heartbeat-missed-max', '3', '--reconnect-delay-ms', '500'];

async function setup(t: ExecutionContext, files: string[]) {
  const dir = tempDir(t, 'restart');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  for (const f of files) sparseFile(join(ex, f), 16 * MiB);
  const server = await startServerDaemon(t, dir, ex);
  const stateDir = join(dir, 'state');
  const start = () => startClientDaemon(t, dir, [...CLIENT, '--state-dir', stateDir]);
  return { dir, ex, server, stateDir, start, at: testMapTarget(server.port) };
}

const ops = (c: ClientDaemon) => ({
  map: async (s: string) => (await ibnbdJson<{ device: Record<string, any> }>(['map', s, '--control', c.control])).device,
  list: async () => (await ibnbdJson<{ devices: Record<string, any>[] }>(['list', '--control', c.control])).devices,
  show: (name: string) => showDevice(c.control, name),
  unmap: (name: string) => ibnbd(['unmap', name, '--control', c.control]),
});

const pattern = (socket: string, seed: number, mode: 'write' | 'check') =>
  blkio(['--path', socket, '--seed', String(seed), '--count', '16', mode]);

test.serial('SIGKILL, restart: every mapping is back on its own socket; the first unmapped and a third mapped, each socket still serves its device', async (t) => {
  const s = await setup(t, ['a.img', 'b.img', 'c.img']);
  let c = await s.start();
  const a = await ops(c).map(`sessname=r1 ${s.at} device_path=a.img`);
  const b = await ops(c).map(`sessname=r1 ${s.at} device_path=b.img`);
  t.deepEqual([a.name, b.name], ['ibnbd0', 'ibnbd1']);
  t.is((await pattern(a.socket, 11, 'write')).code, 0);
  t.is((await pattern(b.socket, 22, 'write')).code, 0);
  await c.stop('SIGKILL');
  c = await s.start();
  const listed = await ops(c).list();
  t.deepEqual(listed.map((d) => [d.name, d.socket, d.mapping_path, d.state]), [
    [a.name, a.socket, 'a.img', 'open'],
    [b.name, b.socket, 'b.img', 'open'],
  ], 'restored before the control socket answered, same names and sockets');
  t.regex(c.log(), /mapping ibnbd0 restored/);
  t.is((await pattern(a.socket, 11, 'check')).code, 0, 'ibnbd0 serves a.img');
  t.is((await pattern(b.socket, 22, 'check')).code, 0, 'ibnbd1 serves b.img');
  t.is((await ops(c).unmap(a.name)).code, 0);
  const third = await ops(c).map(`sessname=r1 ${s.at} device_path=c.img`);
  t.is((await pattern(third.socket, 33, 'write')).code, 0);
  await c.stop('SIGKILL');
  c = await s.start();
  const again = await ops(c).list();
  t.deepEqual(again.map((d) => [d.name, d.mapping_path]).sort(), [[b.name, 'b.img'], [third.name, 'c.img']].sort());
  t.is((await pattern(b.socket, 22, 'check')).code, 0, 'ibnbd1 still serves b.img');
  t.is((await pattern(third.socket, 33, 'check')).code, 0, `${third.name} serves c.img`);
});

test.serial('name=: a mapping of its own name keeps it; a taken name is EEXIST, a bad one EINVAL', async (t) => {
  const s = await setup(t, ['n.img', 'm.img']);
  let c = await s.start();
  const d = await ops(c).map(`sessname=r2 ${s.at} device_path=n.img name=vm-7.disk0`);
  t.is(d.name, 'vm-7.disk0');
  t.true(d.socket.endsWith('/vhost/vm-7.disk0.sock'));
  const taken = await ibnbd(['map', `sessname=r2 ${s.at} device_path=m.img name=vm-7.disk0`, '--control', c.control]);
  t.regex(taken.stderr, /EEXIST: name 'vm-7.disk0' is taken/);
  const bad = await ibnbd(['map', `sessname=r2 ${s.at} device_path=m.img name=../x`, '--control', c.control]);
  t.regex(bad.stderr, /EINVAL: name: '\.\.\/x' is not/);
  t.is((await pattern(d.socket, 44, 'write')).code, 0);
  await c.stop('SIGKILL');
  c = await s.start();
  t.deepEqual((await ops(c).list()).map((x) => x.name), ['vm-7.disk0']);
  t.is((await pattern(d.socket, 44, 'check')).code, 0);
});

test.serial('SIGTERM and start: the same mappings on the same sockets; unmap and restart: gone', async (t) => {
  const s = await setup(t, ['t.img']);
  let c = await s.start();
  const d = await ops(c).map(`sessname=r3 ${s.at} device_path=t.img ctrl_loss_tmo=30`);
  t.is((await pattern(d.socket, 55, 'write')).code, 0);
  t.is(await c.stop('SIGTERM'), 0);
  t.false(existsSync(d.socket), 'a clean stop removes the socket');
  c = await s.start();
  const back = await ops(c).show(d.name);
  t.is(back.socket, d.socket);
  t.is(back.ctrl_loss_tmo, 30, 'with its policy');
  t.is((await pattern(d.socket, 55, 'check')).code, 0);
  t.is((await ops(c).unmap(d.name)).code, 0);
  await c.stop('SIGTERM');
  c = await s.start();
  t.deepEqual(await ops(c).list(), []);
  t.false(existsSync(d.socket));
});

test.serial('a state file that cannot be used: the daemon starts, says why, and keeps the file aside', async (t) => {
  const s = await setup(t, ['x.img']);
  await mkdir(s.stateDir, { recursive: true });
  const file = join(s.stateDir, 'mappings.json');
  const good = (mappings: unknown, version = 1) => JSON.stringify({ format: 'ibnbd-client-state', version, mappings });
  const cases: Array<[string, string, RegExp]> = [
    ['corrupt', '\u0000\u0001garbage', /state file unusable \(not JSON/],
    ['truncated', good([{ name: 'ibnbd0', map: `sessname=r4 ${s.at} device_path=x.img` }]).slice(0, 40), /state file unusable \(not JSON \(truncated or corrupt\)/],
    ['future', good([], 9), /state file unusable \(version 9 is from a newer daemon; this daemon reads version 1\)/],
  ];
  for (const [what, text, message] of cases) {
    writeFileSync(file, text);
    const c = await s.start();
    t.regex(c.log(), message, what);
    t.deepEqual(await ops(c).list(), [], `${what}: no mappings`);
    const aside = readdirSync(s.stateDir).filter((f) => f.startsWith('mappings.json.bad-'));
    t.true(aside.some((f) => readFileSync(join(s.stateDir, f), 'utf8') === text), `${what}: the file is kept as it was`);
    await c.stop('SIGKILL');
  }
  // one bad entry among good ones costs only itself; a socket path that another process
  // listens on keeps its mapping waiting, and says so
  const vhostDir = join(s.dir, 'run', 'vhost');
  await mkdir(vhostDir, { recursive: true });
  const squatter = net.createServer().listen(join(vhostDir, 'taken.sock'));
  t.teardown(() => void squatter.close());
  writeFileSync(file, good([
    { name: 'ibnbd0', map: `sessname=r4 ${s.at} device_path=x.img` },
    { name: 'bad/name', map: 'whatever' },
    { name: 'taken', map: `sessname=r4 ${s.at} device_path=x.img access_mode=ro` },
  ]));
  const c = await s.start();
  t.regex(c.log(), /mapping bad\/name not restored: bad or missing name/);
  t.regex(c.log(), /mapping taken not restored yet: cannot listen on the vhost-user socket: another process listens on that path/);
  const list = await ops(c).list();
  t.deepEqual(list.map((d) => [d.name, d.state]), [['ibnbd0', 'open'], ['taken', 'closed']], 'refused here: closed, and tried again');
  t.regex(list[1]!.state_reason, /not restored since the daemon started/);
  t.true(readdirSync(s.stateDir).some((f) => f.startsWith('mappings.json.rejected-')), 'the rejected entry is kept');
  squatter.close();
  await until(() => ops(c).show('taken'), (d) => d.state === 'open', 15_000, 'restored once the socket path is free');
});

test.serial('a mapping whose device is gone from the server at start is kept closed with the reason, and restored once it is back', async (t) => {
  const s = await setup(t, ['g.img']);
  let c = await s.start();
  const d = await ops(c).map(`sessname=r6 ${s.at} device_path=g.img`);
  t.is((await pattern(d.socket, 77, 'write')).code, 0);
  await c.stop('SIGKILL');
  renameSync(join(s.ex, 'g.img'), join(s.ex, 'g.img.away'));
  c = await s.start();
  const gone = await ops(c).show(d.name);
  t.is(gone.state, 'closed');
  t.regex(gone.state_reason, /not restored since the daemon started .*no such device on the server/);
  t.regex(c.log(), /mapping ibnbd0 not restored yet: .*no such device on the server/);
  renameSync(join(s.ex, 'g.img.away'), join(s.ex, 'g.img'));
  await until(() => ops(c).show(d.name), (x) => x.state === 'open', 15_000, 'restored once the device is back');
  t.is((await pattern(d.socket, 77, 'check')).code, 0);
});

test.serial('a mapping whose server is away at start waits, listed with why, and comes back by itself', async (t) => {
  const s = await setup(t, ['w.img']);
  let c = await s.start();
  const d = await ops(c).map(`sessname=r5 ${s.at} device_path=w.img`);
  t.is((await pattern(d.socket, 66, 'write')).code, 0);
  await c.stop('SIGKILL');
  await s.server.stop('SIGKILL');
  c = await s.start();
  const waiting = await ops(c).show(d.name);
  t.is(waiting.state, 'reconnecting');
  t.regex(waiting.state_reason, /not restored since the daemon started/);
  const refused = await new Promise<string>((resolve) => net.connect(d.socket).once('connect', () => resolve('connected')).once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error')));
  t.not(refused, 'connected', 'nothing serves the socket until it is restored (a VM retries meanwhile)');
  const taken = await ibnbd(['map', `sessname=r5 ${s.at} device_path=w.img`, '--control', c.control]);
  t.regex(taken.stderr, /EEXIST/, 'the waiting mapping holds its device');
  const again = join(s.dir, 'server-again');
  await mkdir(again);
  await startServerDaemon(t, again, s.ex, [], s.server.port);
  await until(() => ops(c).show(d.name), (x) => x.state === 'open', 20_000, 'restored once the server is back');
  t.is((await pattern(d.socket, 66, 'check')).code, 0);
});

test.serial('SIGKILL and restart under a verifying writer that redials (ibnbd-blkio --reconnect-ms, as QEMU reconnect=1): 0 errors, every byte read back', async (t) => {
  const s = await setup(t, ['l.img']);
  let c = await s.start();
  const d = await ops(c).map(`sessname=r7 ${s.at} device_path=l.img`);
  // the server is frozen first, so the daemon surely dies with the writer's requests in flight
  s.server.proc.kill('SIGSTOP');
  t.teardown(() => void s.server.proc.kill('SIGCONT'));
  const load = blkio(['--path', d.socket, '--reconnect-ms', '3000', '--timeout-ms', '60000', '--qd', '16', '--seed', '88', '--count', '192',
    '--sequential', '--min-size', String(64 * 1024), '--max-size', String(64 * 1024), 'verify'], 120_000);
  await until(() => ops(c).show(d.name), (x) => x.stats.inflight >= 16, 30_000, 'requests in flight');
  await c.stop('SIGKILL');
  s.server.proc.kill('SIGCONT');
  c = await s.start();
  const r = await load;
  t.is(r.code, 0, JSON.stringify(r.json));
  const json = r.json as { write: { errors: number; reconnects: number }; read: { errors: number; mismatches: number } };
  t.true(json.write.reconnects >= 1, `the writer redialled the restarted daemon: ${JSON.stringify(json)}`);
  t.is(json.write.errors + json.read.errors + json.read.mismatches, 0);
});
