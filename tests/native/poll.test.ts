// Adaptive polling of the IO threads (native/common/event_loop.cc) through the transport binding,
// in one process: counts start at 0, a window finds the answers of a request stream, and at 0 the
// threads make not one poll more. The daemons' side is tests/daemons/poll.test.ts.
import test from 'ava';
import { ClientSession, ioThreadStats, setPollUs } from '../../src/backend/transport.js';
import { NativeServer } from '../../src/backend/server-native.js';
import { loadNative } from '../../src/backend/native.js';

const LO = { kind: 'ip' as const, addr: '127.0.0.1', port: 0 };

/** A TCP server answering every read from JS, and a client session connected to it. */
async function pair(t: import('ava').ExecutionContext): Promise<ClientSession> {
  const server: NativeServer = new NativeServer({ transport: 'tcp', listen: [LO] }, (ev) => {
    if (ev.type === 'request') server.respond(ev.requestId, 0, Buffer.alloc(ev.dataLen));
  });
  const port = server.start()[0]!.port;
  t.teardown(() => server.stop());
  const c = new ClientSession({ transport: 'tcp', sessname: 'poll', paths: [{ dst: { ...LO, port } }] });
  t.teardown(() => c.close());
  await c.connect(5000);
  return c;
}

async function requests(c: ClientSession, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await c.request({ dir: 'read', usr: Buffer.from([0, 0, 0, 0]), readLen: 4096 });
    if (r.errno !== 0) throw new Error(`request ${i}: errno ${r.errno}`);
  }
}

test.serial('off until set; a window finds the work of a request stream; at 0 no thread polls', async (t) => {
  t.deepEqual(ioThreadStats(), { pollUs: 0, polls: 0, pollHits: 0 }, 'before the IO threads exist');
  const c = await pair(t);
  await requests(c, 20);
  t.deepEqual(ioThreadStats(), { pollUs: 0, polls: 0, pollHits: 0 }, 'off by default: IO without a poll');

  // the answers come back through JS here (hundreds of µs): a window long enough to see them
  setPollUs(1000);
  await requests(c, 50);
  const on = ioThreadStats();
  t.is(on.pollUs, 1000);
  t.true(on.pollHits > 0 && on.polls >= on.pollHits, JSON.stringify(on));

  setPollUs(0);
  await new Promise((r) => setTimeout(r, 20)); // a window already open ends (≤ 1 ms)
  const before = ioThreadStats();
  await requests(c, 50);
  t.deepEqual(ioThreadStats(), { ...before, pollUs: 0 }, 'not one poll more at 0');
});

test('the window is 0..1000 µs, checked in TS and again natively', (t) => {
  t.throws(() => setPollUs(1001), { code: 'EINVAL', message: /--poll-us: 1001 is not an integer from 0 \(off\) to 1000 microseconds/ });
  const raw = loadNative<{ setPollUs(us: unknown): void }>();
  t.throws(() => raw.setPollUs(2000), { message: /poll window must be an integer in 0\.\.1000 microseconds/ });
  t.throws(() => raw.setPollUs(-1), { message: /poll window must be an integer in 0\.\.1000 microseconds/ });
  t.throws(() => raw.setPollUs('50'), { message: /microseconds expected/ });
});
