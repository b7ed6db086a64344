// Authenticated sessions (docs/security.md; docs/tcp-transport.md, "Authentication"), real
// daemons over TCP on this host: the right secret maps and passes a verified libblkio run; no
// secret, a wrong one, a handshake replayed from a good one, and a squatter on a name in use are
// each refused with EACCES and open nothing on the server; the client refuses a server that cannot
// prove the secret; a keys file others can read stops the start; SIGHUP picks up a new secret.
import test, { type ExecutionContext } from 'ava';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { freePort, sparseFile, tempDir } from '../../harness/fixtures.js';
import { cliPath, ibnbd, ibnbdJson, startClientDaemon, startServerDaemon, type ClientDaemon } from '../support/daemons.js';
import * as F from '../support/tcp-frames.js';
import { blkio, MiB } from '../support/vhost-helpers.js';
import { scaled } from '../support/transport-under-test.js';
import { spawnSync } from 'node:child_process';

const SECRET_A = randomBytes(32);
const SECRET_B = randomBytes(48);
const WRONG = randomBytes(32);

function keysFile(dir: string, name: string, lines: Record<string, Buffer | string>): string {
  const f = join(dir, name);
  writeFileSync(f, Object.entries(lines).map(([s, k]) => `${s} ${typeof k === 'string' ? k : k.toString('hex')}`).join('\n') + '\n', { mode: 0o600 });
  chmodSync(f, 0o600);
  return f;
}

async function setup(t: ExecutionContext) {
  const dir = tempDir(t, 'auth');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  for (const f of ['a.img', 'b.img', 'c.img']) sparseFile(join(ex, f), 16 * MiB);
  const serverKeys = keysFile(dir, 'server.keys', { 'vm-1': SECRET_A, 'vm-2': SECRET_B.toString('base64') });
  const server = await startServerDaemon(t, dir, ex, ['--auth-keys', serverKeys]);
  return { dir, ex, server, serverKeys };
}

const map = (client: ClientDaemon, s: string) => ibnbd(['map', s, '--json', '--control', client.control]);
const sessions = async (control: string) => (await ibnbdJson<{ sessions: Record<string, any>[] }>(['server', 'sessions', '--control', control])).sessions;
const devices = async (control: string) => (await ibnbdJson<{ devices: Record<string, any>[] }>(['server', 'devices', '--control', control])).devices;
const verify = (socket: string, seed: number) =>
  blkio(['--path', socket, '--timeout-ms', String(scaled(30_000)), '--qd', '8', '--seed', String(seed), '--count', '64', 'verify'], scaled(60_000));

test.serial('the right secret maps and verifies; no secret, a wrong one and a squatter on the name are EACCES, nothing opened', async (t) => {
  const { dir, server } = await setup(t);
  const goodDir = join(dir, 'good');
  await mkdir(goodDir);
  const good = await startClientDaemon(t, goodDir, ['--auth-keys', keysFile(dir, 'good.keys', { 'vm-1': SECRET_A, 'vm-2': SECRET_B })]);
  const r = await map(good, `sessname=vm-1 path=ip:127.0.0.1:${server.port} device_path=a.img`);
  t.is(r.code, 0, r.stderr);
  const dev = JSON.parse(r.stdout).device;
  const v = await verify(dev.socket, 3);
  t.is(v.code, 0, JSON.stringify(v.json));
  t.is(v.json.write.errors + v.json.read.errors + v.json.read.mismatches, 0);
  t.is((await map(good, `sessname=vm-2 path=ip:127.0.0.1:${server.port} device_path=b.img`)).code, 0, 'a base64 secret works as well');

  const nokeysDir = join(dir, 'nokeys');
  await mkdir(nokeysDir);
  const nokeys = await startClientDaemon(t, nokeysDir);
  const wrongDir = join(dir, 'wrong');
  await mkdir(wrongDir);
  const wrong = await startClientDaemon(t, wrongDir, ['--auth-keys', keysFile(dir, 'wrong.keys', { 'vm-3': WRONG, 'vm-1': WRONG })]);
  const before = await sessions(server.control);
  for (const [who, client, s] of [
    ['no secret', nokeys, `sessname=vm-3 path=ip:127.0.0.1:${server.port} device_path=c.img`],
    ['a wrong secret', wrong, `sessname=vm-3 path=ip:127.0.0.1:${server.port} device_path=c.img`],
    ['a squatter without the secret on the name in use', nokeys, `sessname=vm-1 path=ip:127.0.0.1:${server.port} device_path=c.img`],
    ['a squatter with a wrong secret on the name in use', wrong, `sessname=vm-1 path=ip:127.0.0.1:${server.port} device_path=c.img`],
  ] as const) {
    const m = await map(client, s);
    t.is(m.code, 13, `${who}: EACCES (${m.stderr})`);
    t.regex(m.stderr, /EACCES: .*authentication failed$/m, `${who}: says authentication failed, not which part`);
  }
  t.deepEqual((await sessions(server.control)).map((s) => s.sessname).sort(), before.map((s) => s.sessname).sort(), 'no session was created by a refused client');
  t.false((await devices(server.control)).some((d) => String(d.block_dev).endsWith('c.img')), 'nothing was opened for a refused client');
  t.regex(server.log(), /handshake from ip:127\.0\.0\.1:\d+ refused \(EACCES\): authentication failed: session 'vm-3' offered no proof/, 'the attempt is logged with the peer address');
  const refusal = server.entries().find((e) => e.msg.includes("session 'vm-3' offered no proof"))!;
  t.like(refusal, { level: 'warn', native: true, component: 'tcp-server' }, 'a native line, at warn');
  t.regex(refusal.path ?? '', /^ip:127\.0\.0\.1:\d+$/, 'the peer in its own field');
  t.regex(server.log(), /refused \(EACCES\): authentication failed for session 'vm-1'/);
  const again = await verify(dev.socket, 4);
  t.is(again.code, 0, `the real client is unaffected by the squatters: ${JSON.stringify(again.json)}`);
});

test.serial('a handshake captured from a good one and replayed is refused: the server challenges each connection anew', async (t) => {
  const { dir, server } = await setup(t);
  // a recording relay: the bytes the real client sends on its first connection
  const recorded: Buffer[] = [];
  let first = true;
  const relay = net.createServer((a) => {
    const mine = first;
    first = false;
    const b = net.connect(server.port, '127.0.0.1');
    a.on('data', (d) => {
      if (mine) recorded.push(Buffer.from(d));
      b.write(d);
    });
    b.on('data', (d) => a.write(d));
    a.on('error', () => b.destroy());
    b.on('error', () => a.destroy());
    a.on('close', () => b.destroy());
    b.on('close', () => a.destroy());
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  t.teardown(() => relay.close());
  const relayPort = (relay.address() as net.AddressInfo).port;
  const client = await startClientDaemon(t, dir, ['--auth-keys', keysFile(dir, 'c.keys', { 'vm-1': SECRET_A })]);
  const m = await map(client, `sessname=vm-1 path=ip:127.0.0.1:${relayPort} device_path=a.img`);
  t.is(m.code, 0, m.stderr);
  const captured = Buffer.concat(recorded);
  const req = F.decodeHandshakeReq(captured.subarray(0, F.HANDSHAKE_REQ_SIZE + 4 + F.AUTH_NONCE_LEN));
  t.true(req.ok && (req.value.flags & F.FLAG_AUTH) !== 0, 'the captured request asked for authentication');
  const reqLen = F.HANDSHAKE_REQ_SIZE + 4 + F.AUTH_NONCE_LEN;
  const proof = captured.subarray(reqLen, reqLen + F.AUTH_PROOF_SIZE);
  t.true(F.decodeAuthProof(proof).ok, 'and a proof followed the challenge');

  // the replay, straight at the server
  const s = net.connect(server.port, '127.0.0.1');
  t.teardown(() => s.destroy());
  const chunks: Buffer[] = [];
  s.on('data', (d: Buffer) => chunks.push(d));
  await new Promise((r) => s.once('connect', r));
  s.write(captured.subarray(0, reqLen));
  const got = async (n: number) => {
    const end = Date.now() + scaled(5000);
    while (Buffer.concat(chunks).length < n && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return Buffer.concat(chunks);
  };
  const ch = F.decodeAuthChallenge((await got(F.AUTH_CHALLENGE_SIZE)).subarray(0, F.AUTH_CHALLENGE_SIZE));
  t.true(ch.ok, 'a fresh challenge');
  s.write(proof);
  const rsp = F.decodeHandshakeRsp((await got(F.AUTH_CHALLENGE_SIZE + F.HANDSHAKE_RSP_SIZE)).subarray(F.AUTH_CHALLENGE_SIZE, F.AUTH_CHALLENGE_SIZE + F.HANDSHAKE_RSP_SIZE));
  t.true(rsp.ok);
  if (rsp.ok) t.is(rsp.value.errno, -13, 'EACCES');
  t.regex(server.log(), /refused \(EACCES\): authentication failed for session 'vm-1'/);
  t.is((await sessions(server.control)).filter((x) => x.sessname === 'vm-1').length, 1, 'only the real session is there');
});

test.serial('the client refuses a server that cannot prove the secret: one without keys, or an impostor', async (t) => {
  const dir = tempDir(t, 'auth-srv');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  sparseFile(join(ex, 'a.img'), 16 * MiB);
  const plain = await startServerDaemon(t, dir, ex);
  t.regex(plain.log(), /sessions are not authenticated \(no --auth-keys\)/, 'said once at start');
  t.is(plain.log().match(/sessions are not authenticated/g)!.length, 1);
  const client = await startClientDaemon(t, dir, ['--auth-keys', keysFile(dir, 'c.keys', { 'vm-1': SECRET_A })]);
  const m = await map(client, `sessname=vm-1 path=ip:127.0.0.1:${plain.port} device_path=a.img`);
  t.is(m.code, 13, m.stderr);
  t.regex(client.log(), /the server did not authenticate itself/);
  t.is((await devices(plain.control)).length, 0, 'the client went no further than the handshake');

  // an impostor: challenges like a server, but cannot know the secret
  const impostor = net.createServer((s) => {
    s.once('data', () => s.write(F.encodeAuthChallenge({ serverNonce: randomBytes(32), serverProof: randomBytes(32) })));
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', r));
  t.teardown(() => impostor.close());
  const m2 = await map(client, `sessname=vm-1 path=ip:127.0.0.1:${(impostor.address() as net.AddressInfo).port} device_path=a.img`);
  t.is(m2.code, 13, m2.stderr);
  t.regex(client.log(), /the server's proof is wrong/);
});

test.serial('keys files: one others can read stops the start with the reason; SIGHUP picks up a new secret, sessions stay', async (t) => {
  const dir = tempDir(t, 'auth-keys');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  sparseFile(join(ex, 'a.img'), 16 * MiB);
  sparseFile(join(ex, 'c.img'), 16 * MiB);
  const open = keysFile(dir, 'open.keys', { 'vm-1': SECRET_A });
  chmodSync(open, 0o644);
  const port = await freePort();
  const r = spawnSync(process.execPath, [cliPath, 'server', '--listen', `127.0.0.1:${port}`, '--dev-search-path', ex, '--control', join(dir, 'x.sock'), '--auth-keys', open], { encoding: 'utf8', timeout: 20_000 });
  t.not(r.status, 0);
  t.regex(r.stderr, /EACCES: keys file .*open\.keys is readable or writable by group or others \(mode 0644\)/);
  const c = spawnSync(process.execPath, [cliPath, 'client', '--control', join(dir, 'y.sock'), '--run-dir', join(dir, 'run'), '--state-dir', join(dir, 'st'), '--auth-keys', open], { encoding: 'utf8', timeout: 20_000 });
  t.not(c.status, 0);
  t.regex(c.stderr, /readable or writable by group or others/, 'the client refuses it too');

  const serverKeys = keysFile(dir, 'server.keys', { 'vm-1': SECRET_A });
  const server = await startServerDaemon(t, dir, ex, ['--auth-keys', serverKeys]);
  const client = await startClientDaemon(t, dir, ['--auth-keys', keysFile(dir, 'client.keys', { 'vm-1': SECRET_A, 'vm-9': SECRET_B })]);
  t.is((await map(client, `sessname=vm-1 path=ip:127.0.0.1:${server.port} device_path=a.img`)).code, 0);
  t.is((await map(client, `sessname=vm-9 path=ip:127.0.0.1:${server.port} device_path=c.img`)).code, 13, 'vm-9 is not in the server file yet');
  writeFileSync(serverKeys, `vm-1 ${SECRET_A.toString('hex')}\nvm-9 ${SECRET_B.toString('hex')}\n`);
  server.proc.kill('SIGHUP');
  const end = Date.now() + scaled(5000);
  while (!/SIGHUP: 2 secret\(s\) reloaded/.test(server.log()) && Date.now() < end) await new Promise((r2) => setTimeout(r2, 20));
  t.regex(server.log(), /SIGHUP: 2 secret\(s\) reloaded/);
  const m = await map(client, `sessname=vm-9 path=ip:127.0.0.1:${server.port} device_path=c.img`);
  t.is(m.code, 0, m.stderr);
  t.deepEqual((await sessions(server.control)).map((s) => s.sessname).sort(), ['vm-1', 'vm-9'], 'vm-1 stayed up across the reload');
  // a broken file on SIGHUP: the old keys stay, with the reason
  writeFileSync(serverKeys, 'vm-1 short\n');
  server.proc.kill('SIGHUP');
  const end2 = Date.now() + scaled(5000);
  while (!/keys file not reloaded/.test(server.log()) && Date.now() < end2) await new Promise((r2) => setTimeout(r2, 20));
  t.regex(server.log(), /SIGHUP: keys file not reloaded, the previous keys stay: .*line 1/);
  t.true(readFileSync(serverKeys, 'utf8').length > 0);
});

test.serial('--allow: a peer outside every listed network is refused at accept, over IPv4 and IPv6; one inside maps', async (t) => {
  const dir = tempDir(t, 'allow');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  sparseFile(join(ex, 'a.img'), 16 * MiB);
  const port = await freePort();
  const server = await startServerDaemon(t, dir, ex, ['--listen', `[::1]:${port}`, '--allow', '10.9.0.0/16', '--allow', '::1']);
  const client = await startClientDaemon(t, dir);
  const refused = await map(client, `sessname=far path=ip:127.0.0.1:${server.port} device_path=a.img`);
  t.not(refused.code, 0, 'from 127.0.0.1, which no --allow lists');
  t.regex(server.log(), /connection from ip:127\.0\.0\.1:\d+ refused: not in --allow/);
  t.regex(server.log(), /connections accepted only from 10\.9\.0\.0\/16, ::1\/128 \(--allow\)/);
  t.is((await sessions(server.control)).length, 0);
  const ok = await map(client, `sessname=near path=ip:[::1]:${port} device_path=a.img`);
  t.is(ok.code, 0, ok.stderr);
});
