// Faults the network hides (docs/tcp-transport.md, "Fencing"; docs/client.md, "Path loss, waiting
// and the reconnect policy"): a silent cut (a relay that holds every byte and refuses nothing, and
// lets the held bytes through when the cut heals), a write the server is still executing when its
// path is lost. Each checks the data by reading the server's file back. TCP on this host: the relay and the fault hook of the server's
// IO path are ours; real daemons as child processes, libblkio as the front-end.
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, showDevice, startClientDaemon, startServerDaemon, until, type ClientDaemon } from '../support/daemons.js';
import { startRelay } from '../support/relay.js';
import { blkio, expectedPattern, fileBytes, MiB } from '../support/vhost-helpers.js';
import { scaled } from '../support/transport-under-test.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// Heartbeats that would take a minute to notice anything: the tests see io_timeout at work.
const SLOW_HEARTBEATS = ['--heartbeat-ms', '1000', '--heartbeat-missed-max', '60', '--reconnect-delay-ms', '500'];
const BLOCK = 64 * 1024;

async function exportsDir(t: ExecutionContext, files: Record<string, number>) {
  const dir = tempDir(t, 'fence');
  const ex = join(dir, 'exports');
  await mkdir(ex);
  for (const [f, size] of Object.entries(files)) sparseFile(join(ex, f), size);
  return { dir, ex };
}

function clientOps(client: ClientDaemon) {
  return {
    map: async (s: string) => (await ibnbdJson<{ device: Record<string, any> }>(['map', s, '--control', client.control])).device,
    show: (name: string) => showDevice(client.control, name),
  };
}

/** One block of `seed`'s pattern at `offset`, as one request. */
const writeBlock = (socket: string, seed: number, offset: number, timeoutMs = 60_000) =>
  blkio(['--path', socket, '--timeout-ms', String(scaled(timeoutMs)), '--seed', String(seed), '--count', '1', '--sequential',
    '--offset', String(offset), '--min-size', String(BLOCK), '--max-size', String(BLOCK), 'write'], scaled(timeoutMs + 10_000));

test.serial('a 40-s silent cut under a verifying writer at QD16: the dead path is found within io_timeout, no error, every byte on the server', async (t) => {
  const COUNT = 256;
  const { dir, ex } = await exportsDir(t, { 'c.img': COUNT * BLOCK });
  const server = await startServerDaemon(t, dir, ex);
  const relay = await startRelay(server.port);
  t.teardown(() => relay.close());
  const client = await startClientDaemon(t, dir, SLOW_HEARTBEATS);
  const c = clientOps(client);
  const dev = await c.map(`sessname=cut1 path=ip:127.0.0.1:${relay.port} transport=tcp device_path=c.img io_timeout=5`);
  const writer = blkio(['--path', dev.socket, '--timeout-ms', String(scaled(150_000)), '--qd', '16', '--seed', '41', '--count', String(COUNT),
    '--sequential', '--min-size', String(BLOCK), '--max-size', String(BLOCK), 'verify'], scaled(200_000));
  await until(() => c.show(dev.name), (d) => d.stats.writeBytes >= MiB, 60_000, 'the writer got going');
  relay.cut();
  const cutAt = Date.now();
  await until(() => c.show(dev.name), (d) => d.state === 'reconnecting', 30_000, 'the path is declared dead');
  const found = Date.now() - cutAt;
  t.log(`dead path found ${found} ms after the cut (io_timeout 5 s, heartbeat tick 1 s)`);
  t.true(found >= 4_000 && found <= 5_000 + 1_000 + 1_500, `within io_timeout plus one heartbeat tick: ${found} ms`);
  await sleep(40_000 - (Date.now() - cutAt));
  const during = await c.show(dev.name);
  t.is(during.stats.errors, 0, 'nothing failed during the cut');
  const stuckBytes = during.stats.writeBytes + during.stats.readBytes;
  const healAt = Date.now();
  const healed = relay.heal(3_000);
  await until(() => c.show(dev.name), (d) => d.state === 'open', 30_000, 'open again after the cut');
  await until(() => c.show(dev.name), (d) => d.stats.writeBytes + d.stats.readBytes > stuckBytes, 30_000, 'IO flows again');
  t.log(`IO flowing again ${Date.now() - healAt} ms after the cut healed; longest stall ≈ ${Date.now() - cutAt} ms`);
  await healed;
  const r = await writer;
  t.is(r.code, 0, `the writer saw no error and read back what it wrote: ${JSON.stringify(r.json)}`);
  t.is((await c.show(dev.name)).stats.errors, 0);
  t.true(fileBytes(join(ex, 'c.img'), 0, COUNT * BLOCK).equals(expectedPattern(41, 0, COUNT * BLOCK)), "the server's file holds every byte");
});

test.serial('a write held in the network while its path reconnects: the old connection is retired, its stale bytes never land over a newer write', async (t) => {
  const X = MiB;
  const { dir, ex } = await exportsDir(t, { 's.img': 8 * MiB });
  const server = await startServerDaemon(t, dir, ex);
  const relay = await startRelay(server.port);
  t.teardown(() => relay.close());
  const client = await startClientDaemon(t, dir, SLOW_HEARTBEATS);
  const c = clientOps(client);
  const dev = await c.map(`sessname=cut2 path=ip:127.0.0.1:${relay.port} transport=tcp device_path=s.img io_timeout=2`);
  t.is((await writeBlock(dev.socket, 1, X)).code, 0);
  relay.cut();
  const stale = writeBlock(dev.socket, 2, X); // its bytes stay in the relay, on the old connection
  await until(() => c.show(dev.name), (d) => d.state === 'reconnecting', 15_000, 'the path is declared dead');
  await sleep(3_000); // reconnect attempts meanwhile: held too, and given up by the client
  let oldReleasedAt = 0;
  const healed = relay.heal(6_000).then(() => (oldReleasedAt = Date.now()));
  t.is((await stale).code, 0, 'the held write completes, sent again on the new connection');
  const newer = await writeBlock(dev.socket, 3, X);
  const newerAt = Date.now();
  t.is(newer.code, 0);
  await healed;
  t.true(newerAt < oldReleasedAt, 'the newer write was done before the old connection\'s bytes went through');
  await sleep(1_000);
  t.true(fileBytes(join(ex, 's.img'), X, BLOCK).equals(expectedPattern(3, X, BLOCK)), 'the newer bytes are what stays');
  t.regex(server.log(), /retired: it reconnected/);
});

test.serial('two paths, one cut while the server still executes a write sent on it: 0 errors, and the newer write to the same blocks is what stays', async (t) => {
  const X = MiB;
  const { dir, ex } = await exportsDir(t, { 'm.img': 16 * MiB });
  const mark = join(dir, 'stall-began');
  const server = await startServerDaemon(t, dir, ex, [], undefined, { IBNBD_FAULT_STALL_WRITE: `${X}:6000`, IBNBD_FAULT_MARK_FILE: mark });
  const relays = [await startRelay(server.port), await startRelay(server.port)];
  t.teardown(() => relays.forEach((r) => r.close()));
  const client = await startClientDaemon(t, dir, SLOW_HEARTBEATS);
  const c = clientOps(client);
  const dev = await c.map(`sessname=mp1 path=ip:127.0.0.1:${relays[0]!.port} path=ip:127.0.0.1:${relays[1]!.port} transport=tcp device_path=m.img io_timeout=2 mp_policy=round-robin`);
  const stalled = writeBlock(dev.socket, 2, X);
  await until(async () => ({ began: existsSync(mark) }), (d) => d.began, 15_000, 'the server holds the write');
  const onPath = (await c.show(dev.name)).path_states.findIndex((p: Record<string, any>) => p.inflight > 0);
  t.true(onPath >= 0, 'the stalled write is in flight on one path');
  // more IO over both paths while one is lost: none of it may fail
  const load = blkio(['--path', dev.socket, '--timeout-ms', String(scaled(60_000)), '--qd', '16', '--seed', '9', '--count', '96', '--offset', String(4 * MiB),
    '--span', String(8 * MiB), '--min-size', String(BLOCK), '--max-size', String(BLOCK), 'verify'], scaled(90_000));
  await sleep(200);
  relays[onPath]!.cut();
  const cutAt = Date.now();
  t.is((await stalled).code, 0, 'the stalled write completes (sent again once the server finished the old copy)');
  t.log(`stalled write answered ${Date.now() - cutAt} ms after the cut`);
  t.is((await writeBlock(dev.socket, 3, X)).code, 0, 'a newer write to the same blocks');
  const l = await load;
  t.is(l.code, 0, `the other IO saw no error: ${JSON.stringify(l.json)}`);
  await sleep(6_500); // well past the stall: the stale copy, had it been let run, has landed
  t.true(fileBytes(join(ex, 'm.img'), X, BLOCK).equals(expectedPattern(3, X, BLOCK)), 'the newer bytes are what stays');
  const d = await c.show(dev.name);
  t.is(d.stats.errors, 0);
  t.is(d.state, 'open', 'one path left: the device never stopped');
  t.true(d.path_states[onPath].failovers > 0, 'requests were failed over from the cut path');
  t.regex(server.log(), /fenced by the client/);
  await relays[onPath]!.heal();
});
