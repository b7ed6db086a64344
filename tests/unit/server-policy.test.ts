// The OPEN/CLOSE policy of the export server driven through its event interface with real
// codec bytes, on real files, symlinks and loop devices; the native side is only recorded here
// (attach/detach/respond). The same rules over the real transport: server-io.test.ts.
import test from 'ava';
import { constants } from 'node:os';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decode, type OpenRspMsg } from '../../src/proto/ibnbd.js';
import { ExportServer, type NativePort } from '../../src/server/server.js';
import type { AttachSpec } from '../../src/server/session.js';
import { probe } from '../../src/server/probe.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { TWO_SESSION_ACCESS_MATRIX, closeMsg, loopDevice, openMsg, sessInfo } from '../support/server-helpers.js';

const E = constants.errno;

class RecordingPort implements NativePort {
  attached = new Map<string, AttachSpec>();
  replies = new Map<number, { errno: number; data?: Buffer }>();
  readonly #waiting = new Map<number, (r: { errno: number; data?: Buffer }) => void>();
  respond(requestId: number, errno: number, data?: Buffer): void {
    const r = data ? { errno, data } : { errno };
    this.replies.set(requestId, r);
    this.#waiting.get(requestId)?.(r);
    this.#waiting.delete(requestId);
  }
  /** The answer to a request: admin requests are answered asynchronously (OPEN runs off the loop). */
  reply(requestId: number): Promise<{ errno: number; data?: Buffer }> {
    const r = this.replies.get(requestId);
    return r ? Promise.resolve(r) : new Promise((resolve) => this.#waiting.set(requestId, resolve));
  }
  attach(sessionId: string, deviceId: number, spec: AttachSpec): void {
    const k = `${sessionId}/${deviceId}`;
    if (this.attached.has(k)) throw new Error(`double attach ${k}`);
    this.attached.set(k, spec);
  }
  detach(sessionId: string, deviceId: number): void {
    if (!this.attached.delete(`${sessionId}/${deviceId}`)) throw new Error(`detach of unattached ${sessionId}/${deviceId}`);
  }
  inflight(): number {
    return 0;
  }
  paths() {
    return [{ src: '127.0.0.1:40000', dst: '127.0.0.1:1234', state: 'connected', inflight: 0 }];
  }
}

function rig(searchPath: string) {
  const port = new RecordingPort();
  const server = new ExportServer(port, { devSearchPath: searchPath, probe });
  let rid = 0;
  const up = (sessionId: string, sessname: string) => server.handleEvent({ type: 'session-up', sessionId, sessname });
  const down = (sessionId: string) => server.handleEvent({ type: 'session-down', sessionId });
  const send = (sessionId: string, usr: Buffer, dir: 'read' | 'write' = 'read', dataLen = 56) => {
    const requestId = ++rid;
    server.handleEvent({ type: 'request', sessionId, requestId, dir, usr, dataLen });
    return port.reply(requestId);
  };
  const open = async (sessionId: string, name: string, mode: 'ro' | 'rw' | 'migration' = 'rw', io: 'blockio' | 'fileio' = 'blockio') => {
    const r = await send(sessionId, openMsg(name, mode, io));
    if (r.errno !== 0) return { errno: r.errno } as const;
    const d = decode(r.data!);
    if (!d.ok || d.msg.type !== 'OPEN_RSP') throw new Error('bad OPEN_RSP');
    return { errno: 0, rsp: d.msg as OpenRspMsg } as const;
  };
  const close = async (sessionId: string, id: number) => (await send(sessionId, closeMsg(id), 'write', 0)).errno;
  return { port, server, up, down, send, open, close };
}

test('SESS_INFO negotiates min(client, 2)', async (t) => {
  const r = rig(tempDir(t, 'pol'));
  r.up('1', 's');
  for (const [client, want] of [[1, 1], [2, 2], [7, 2]] as const) {
    const rep = (await r.send('1', sessInfo(client), 'read', 36));
    t.is(rep.errno, 0);
    const d = decode(rep.data!);
    t.true(d.ok && d.msg.type === 'SESS_INFO_RSP' && d.msg.ver === want);
  }
  t.is((await r.send('1', sessInfo(2), 'write', 0)).errno, E.EINVAL, 'no READ buffer for the response');
  t.is((await r.send('1', Buffer.from([9, 0, 0, 0]), 'read', 36)).errno, E.EPROTO, 'unknown type');
  t.is((await r.send('1', Buffer.alloc(2), 'read', 36)).errno, E.EINVAL, 'short');
  t.is((await r.send('nope', sessInfo(2), 'read', 36)).errno, E.ENOTCONN, 'unknown session');
});

test('access-mode matrix across two sessions, release on CLOSE and on session death', async (t) => {
  const dir = tempDir(t, 'pol');
  sparseFile(join(dir, 'disk'), 1 << 20);
  const r = rig(dir);
  r.up('a', 'sa');
  r.up('b', 'sb');
  for (const [m1, m2, want] of TWO_SESSION_ACCESS_MATRIX) {
    const o1 = (await r.open('a', 'disk', m1));
    t.is(o1.errno, 0);
    const o2 = (await r.open('b', 'disk', m2));
    t.is(o2.errno, want, `${m1} then ${m2}`);
    t.is((await r.close('a', o1.rsp!.deviceId)), 0);
    if (o2.errno === 0) t.is((await r.close('b', o2.rsp!.deviceId)), 0);
  }
  // a third writer is refused even as migration
  const w1 = (await r.open('a', 'disk', 'rw'));
  const w2 = (await r.open('b', 'disk', 'migration'));
  t.is(w2.errno, 0);
  r.up('c', 'sc');
  t.is((await r.open('c', 'disk', 'migration')).errno, E.EPERM);
  t.is((await r.open('c', 'disk', 'ro')).errno, 0);
  // the rw holder dies: its writer is released, one writer (migration) is left
  r.down('a');
  t.is((await r.open('c', '/disk', 'rw')).errno, E.EEXIST, 'c already maps this device as "disk"');
  r.up('d', 'sd');
  t.is((await r.open('d', 'disk', 'rw')).errno, E.EPERM, 'migration writer still there');
  t.is((await r.open('d', 'disk', 'migration')).errno, 0);
  void w1;
  r.down('b');
  r.down('c');
  r.down('d');
  t.is(r.port.attached.size, 0, 'everything detached');
  t.is(r.server.exports.size, 0, 'every export released');
  t.deepEqual(r.server.devices(), []);
});

test('same session + same name: same id, no second permission check; ids per session', async (t) => {
  const dir = tempDir(t, 'pol');
  for (const n of ['a', 'b', 'c']) sparseFile(join(dir, n), 1 << 20);
  const r = rig(dir);
  r.up('1', 's1');
  const a = (await r.open('1', 'a', 'rw'));
  const again = (await r.open('1', 'a', 'rw'));
  t.is(again.errno, 0);
  t.is(again.rsp!.deviceId, a.rsp!.deviceId);
  t.is((await r.open('1', 'b')).rsp!.deviceId, 1);
  t.is((await r.open('1', 'c')).rsp!.deviceId, 2);
  t.is((await r.close('1', 1)), 0);
  t.is((await r.open('1', 'c')).rsp!.deviceId, 2, 'c stays 2');
  t.is((await r.open('1', 'b')).rsp!.deviceId, 1, 'lowest free id');
  t.is((await r.close('1', 99)), 0, 'unknown id ignored');
  r.up('2', 's2');
  t.is((await r.open('2', 'c', 'ro')).rsp!.deviceId, 0, 'ids are per session');
  t.is(r.port.attached.size, 4);
});

test('path refusals with their errno; absolute device_path stays inside', async (t) => {
  const root = tempDir(t, 'pol');
  const search = join(root, 'exports');
  mkdirSync(join(search, 'dev'), { recursive: true });
  sparseFile(join(search, 'dev', 'ram0'), 1 << 20);
  writeFileSync(join(root, 'secret'), 'secret');
  symlinkSync(join(root, 'secret'), join(search, 'out'));
  mkdirSync(join(search, 'adir'));
  const r = rig(search);
  r.up('1', 's');
  t.is((await r.open('1', '../secret')).errno, E.EINVAL);
  t.is((await r.open('1', 'a/../../etc')).errno, E.EINVAL);
  t.is((await r.open('1', 'out')).errno, E.EPERM);
  t.is((await r.open('1', 'missing')).errno, E.ENOENT);
  t.is((await r.open('1', 'adir')).errno, E.EINVAL);
  t.is((await r.open('1', '/dev/null')).errno, E.ENOENT, '/dev/null is looked up under the search path');
  const ok = (await r.open('1', '/dev/ram0'));
  t.is(ok.errno, 0);
  const tree = r.server.devices();
  t.is(tree.length, 1);
  t.is(tree[0]!.block_dev, join(search, 'dev', 'ram0'));
  t.deepEqual(tree[0]!.sessions, [
    { sessname: 's', read_only: 0, mapping_path: '/dev/ram0', device_id: 0, access_mode: 'rw', io_mode: 'blockio' },
  ]);
});

test('%SESSNAME% namespaces, loop block devices and the introspection tree', async (t) => {
  const root = tempDir(t, 'pol');
  mkdirSync(join(root, 'blya'));
  mkdirSync(join(root, 'other'));
  const backing = sparseFile(join(root, 'backing.img'), 4 << 20);
  const loop = loopDevice(t, backing);
  symlinkSync(loop, join(root, 'blya', 'sda'));
  symlinkSync(loop, join(root, 'other', 'vdb'));
  const r = rig(join(root, '%SESSNAME%'));
  r.up('1', 'blya');
  r.up('2', 'other');
  // the symlink to /dev/loopN leaves the search directory: refused
  t.is((await r.open('1', 'sda')).errno, E.EPERM);
  // a search path that contains /dev reaches the loop device
  const r2 = rig('/dev');
  r2.up('1', 'blya');
  r2.up('2', 'other');
  const name = loop.slice('/dev/'.length);
  const o = await r2.open('1', name, 'rw');
  t.is(o.errno, 0);
  t.is(o.rsp!.nsectors, BigInt((4 << 20) / 512));
  t.is((await r2.open('2', `/${name}`, 'ro')).errno, 0);
  t.is((await r2.open('2', name, 'migration')).errno, E.EEXIST, 'same session, same device, other name');
  t.deepEqual(
    r2.server.devices().map((d) => [d.name, d.block_dev, d.type, d.writers, d.sessions.map((s) => [s.sessname, s.read_only, s.mapping_path])]),
    [[name, loop, 'block', 1, [['blya', 0, name], ['other', 1, `/${name}`]]]],
  );
  t.is(await r2.close('1', 0), 0);
  t.deepEqual(r2.server.devices()[0]!.sessions.map((s) => s.sessname), ['other']);
  r2.server.handleEvent({ type: 'session-down', sessionId: '2' });
  t.deepEqual(r2.server.devices(), []);
});

test('force-close keeps the id reserved until the client CLOSEs it', async (t) => {
  const dir = tempDir(t, 'pol');
  sparseFile(join(dir, 'disk'), 1 << 20);
  const r = rig(dir);
  r.up('1', 's');
  const o = (await r.open('1', 'disk'));
  const devName = r.server.devices()[0]!.name;
  t.deepEqual(r.server.forceClose('s', devName), { sessname: 's', device_id: 0 });
  t.is(r.port.attached.size, 0);
  t.deepEqual(r.server.devices(), []);
  t.deepEqual(r.server.sessionList()[0]!.closed_ids, [0]);
  const again = (await r.open('1', 'disk'));
  t.is(again.rsp!.deviceId, 1, 'reserved id 0 is not handed out again');
  t.is((await r.close('1', o.rsp!.deviceId)), 0);
  t.deepEqual(r.server.sessionList()[0]!.closed_ids, []);
  t.throws(() => r.server.forceClose('s', 'nope'), { code: 'ENOENT' } as never);
});
