// The control plane never hangs on one server: server A answers heartbeats but never the OPEN of
// 'stuck.img' (its test-only fault hook IBNBD_FAULT_DROP_OPEN, docs/server.md), server B is
// normal, and the client daemon runs with --admin-timeout 3. The stuck OPEN holds up its own
// session only (maps and unmaps of another session go on at once; a map of the same session waits
// behind it, in order), fails with ETIMEDOUT after the admin timeout (exit status 110 from the
// CLI), a forced unmap in that session and the daemon's SIGTERM shutdown finish within it. Real
// daemons as child processes over the transport under test (TCP here, RDMA in the soft-RoCE guest:
// the hook is in the server's JS, so both wires have it).
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { controlRequest } from '../../src/control/index.js';
import { IbnbdError } from '../../src/errors.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, startClientDaemon, startServerDaemon } from '../support/daemons.js';
import { MiB } from '../support/vhost-helpers.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

const ADMIN_TIMEOUT_MS = 3_000;
// --io-timeout 0: the OPEN the server never answers stays outstanding on the path; with an
// io_timeout the transport would declare the path dead after it (and fail the request), here
// the admin timeout alone is under test
const CLIENT = ['--admin-timeout', String(ADMIN_TIMEOUT_MS / 1000), '--io-timeout', '0'];
const DROPPED = /IBNBD_FAULT_DROP_OPEN/g;

type Device = Record<string, any>;

async function setup(t: ExecutionContext) {
  const dir = tempDir(t, 'admint');
  const exportsA = join(dir, 'exports-a');
  const exportsB = join(dir, 'exports-b');
  await mkdir(exportsA);
  await mkdir(exportsB);
  for (const f of ['stuck.img', 'a1.img', 'a2.img']) sparseFile(join(exportsA, f), 8 * MiB);
  sparseFile(join(exportsB, 'b.img'), 8 * MiB);
  const serverA = await startServerDaemon(t, dir, exportsA, [], undefined, { IBNBD_FAULT_DROP_OPEN: 'stuck.img' });
  const serverB = await startServerDaemon(t, dir, exportsB);
  const client = await startClientDaemon(t, dir, CLIENT);
  // straight to the control socket: what is timed is the daemon, not the CLI's start-up
  const request = (req: Record<string, unknown>) => controlRequest(client.control, req, { timeoutMs: scaled(60_000) });
  const map = async (s: string): Promise<Device> => ((await request({ cmd: 'map', map: s })) as { device: Device }).device;
  const unmap = async (name: string, force = false): Promise<Device> =>
    ((await request({ cmd: 'unmap', device: name, force })) as { device: Device }).device;
  const list = async (): Promise<Device[]> => ((await request({ cmd: 'list' })) as { devices: Device[] }).devices;
  /** Until server A logged n OPENs left unanswered: the stuck request is out. */
  const dropped = async (n: number) => {
    const end = Date.now() + scaled(20_000);
    while ((serverA.log().match(DROPPED) ?? []).length < n) {
      if (Date.now() > end) throw new Error(`server A never dropped OPEN #${n}: ${serverA.log()}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const serverSessions = async (server: typeof serverA) => JSON.stringify(await controlRequest(server.control, { cmd: 'sessions' }));
  return { client, serverA, serverB, request, map, unmap, list, dropped, serverSessions, atA: testMapTarget(serverA.port), atB: testMapTarget(serverB.port) };
}

/** Polls cond until it holds; throws naming what did not happen within the (scaled) bound. */
async function until(cond: () => Promise<boolean>, boundMs: number, what: string): Promise<void> {
  const end = Date.now() + scaled(boundMs);
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${scaled(boundMs)} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A promise's outcome and when it settled, without ever rejecting. */
function settled<T>(p: Promise<T>): Promise<{ value?: T; error?: unknown; at: number }> {
  return p.then(
    (value) => ({ value, at: Date.now() }),
    (error: unknown) => ({ error, at: Date.now() }),
  );
}

test.serial('an OPEN the server never answers holds up its own session only, and fails with ETIMEDOUT after the admin timeout', async (t) => {
  const s = await setup(t);
  const a1 = await s.map(`sessname=sa ${s.atA} device_path=a1.img`);
  t.is(a1.state, 'open');

  const stuckStart = Date.now();
  const stuck = settled(ibnbd(['map', `sessname=sa ${s.atA} device_path=stuck.img`, '--control', s.client.control], scaled(60_000)));
  let stuckDone = false;
  void stuck.then(() => (stuckDone = true));
  await s.dropped(1);
  const droppedAt = Date.now();

  // another session on another server: at once, the stuck OPEN notwithstanding
  const t0 = Date.now();
  const b = await s.map(`sessname=sb ${s.atB} device_path=b.img`);
  const mapped = Date.now() - t0;
  t.is(b.state, 'open');
  await s.unmap(b.name);
  const both = Date.now() - t0;
  t.false(stuckDone, 'the stuck map still waits');
  t.true(both < ADMIN_TIMEOUT_MS, `map (${mapped} ms) and unmap (${both - mapped} ms) of session sb did not wait for session sa`);
  t.log(`session sb: map ${mapped} ms, unmap ${both - mapped} ms while session sa's OPEN waited`);

  // the same session: queued behind the stuck OPEN, served once it timed out
  const a2 = settled(s.map(`sessname=sa ${s.atA} device_path=a2.img`));
  const st = await stuck;
  const r = st.value!;
  t.is(r.code, 110, r.stderr);
  t.regex(r.stderr, /^ibnbd: ETIMEDOUT: OPEN of 'stuck\.img' on session 'sa': no answer from the server within 3 s$/m);
  t.true(st.at - stuckStart >= ADMIN_TIMEOUT_MS, `not before the admin timeout (${st.at - stuckStart} ms)`);
  t.true(st.at - droppedAt < ADMIN_TIMEOUT_MS + scaled(2_000), `soon after it (${st.at - droppedAt} ms after the server dropped the OPEN)`);
  const second = await a2;
  t.falsy(second.error, String(second.error));
  t.is(second.value!.state, 'open');
  t.is(second.value!.name, 'ibnbd1', 'the smallest free name (ibnbd0 is a1)');
  t.true(second.at - stuckStart >= ADMIN_TIMEOUT_MS, `the map of the same session waited behind the stuck OPEN (${second.at - stuckStart} ms)`);

  t.deepEqual((await s.list()).map((d) => d.mapping_path), ['a1.img', 'a2.img'], 'stuck.img is not mapped');
  const t1 = Date.now();
  await s.unmap('ibnbd0');
  await s.unmap('ibnbd1');
  t.true(Date.now() - t1 < ADMIN_TIMEOUT_MS, 'the session is usable again: unmaps at once');
  await until(async () => !(await s.serverSessions(s.serverA)).includes('"sa"'), 10_000, 'session sa closed with its last device');
});

test.serial('unmap --force of a device whose session has an OPEN stuck finishes within the admin timeout', async (t) => {
  const s = await setup(t);
  const a1 = await s.map(`sessname=sa ${s.atA} device_path=a1.img`);
  const stuck = settled(s.map(`sessname=sa ${s.atA} device_path=stuck.img`));
  let stuckDone = false;
  void stuck.then(() => (stuckDone = true));
  await s.dropped(1);

  const t0 = Date.now();
  const forced = settled(s.unmap(a1.name, true));
  // the device goes at once (its CLOSE waits for the session's turn)
  await until(async () => !(await s.list()).some((d) => d.name === a1.name), 10_000, 'the forced device leaves the list');
  t.false(stuckDone, 'gone from the list while the stuck OPEN still waits');
  t.false(existsSync(a1.socket), 'its socket removed');
  const f = await forced;
  const took = f.at - t0;
  t.falsy(f.error, String(f.error));
  t.is(f.value!.name, a1.name);
  t.true(took < ADMIN_TIMEOUT_MS + scaled(500), `the forced unmap took ${took} ms`);
  t.log(`forced unmap: ${took} ms with an OPEN of its session stuck`);

  const st = await stuck;
  t.true(st.error instanceof IbnbdError && st.error.code === 'ETIMEDOUT', String(st.error));
  // the CLOSE was sent in the session's turn or the session closed: either way the server let a1 go
  await until(async () => !(await s.serverSessions(s.serverA)).includes('a1.img'), 10_000, 'server A lets a1.img go');
  t.deepEqual(await s.list(), []);
});

test.serial('SIGTERM with an OPEN stuck: the client daemon stops within the admin timeout, every session closed', async (t) => {
  const s = await setup(t);
  const a1 = await s.map(`sessname=sa ${s.atA} device_path=a1.img`);
  const b = await s.map(`sessname=sb ${s.atB} device_path=b.img`);
  const stuck = settled(s.map(`sessname=sa ${s.atA} device_path=stuck.img`));
  await s.dropped(1);

  const t0 = Date.now();
  const code = await s.client.stop('SIGTERM');
  const took = Date.now() - t0;
  t.is(code, 0, s.client.log());
  t.true(took < ADMIN_TIMEOUT_MS + scaled(3_000), `stopped in ${took} ms`);
  t.log(`SIGTERM to exit: ${took} ms with an OPEN stuck`);
  t.truthy((await stuck).error, 'the stuck map got no device');
  t.false(existsSync(a1.socket));
  t.false(existsSync(b.socket));
  t.false(existsSync(s.client.control));
  await until(async () => !(await s.serverSessions(s.serverB)).includes('"sb"'), 10_000, 'server B: session sb closed');
  await until(async () => !(await s.serverSessions(s.serverA)).includes('"sa"'), 10_000, 'server A: session sa closed');
});
