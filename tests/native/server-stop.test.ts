// Stopping the export server while clients are connected. stop() closes every session; once it
// resolves, the native side must neither call into JS nor still be inside the handler, because
// stop() releases the thread-safe function the handler reports through. A session-down report
// that was still running when stop() returned once aborted the whole process inside libuv
// (napi_call_threadsafe_function on a finalized function) under load.
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import test from 'ava';
import { ClientSession, configureIoThreads } from '../../src/backend/transport.js';
import { NativeServer, type NativeServerEvent } from '../../src/backend/server-native.js';
import { TEST_TRANSPORT, scaled, testEndpoint } from '../support/transport-under-test.js';

const LO = testEndpoint();

// Three IO threads: each path has four connections on different threads, so the last
// connection to close (which reports the session down) races with the others' wake-ups.
configureIoThreads(3);

interface Harness {
  server: NativeServer;
  port: number;
  events: NativeServerEvent[];
}

function startServer(t: import('ava').ExecutionContext): Harness {
  const h: Harness = { server: undefined as unknown as NativeServer, port: 0, events: [] };
  h.server = new NativeServer({ transport: TEST_TRANSPORT, listen: [LO] }, (ev) => h.events.push(ev));
  h.port = h.server.start()[0]!.port;
  t.teardown(() => h.server.stop());
  return h;
}

async function connectClients(t: import('ava').ExecutionContext, port: number, n: number): Promise<ClientSession[]> {
  const cs = Array.from({ length: n }, (_, i) => {
    const c = new ClientSession({
      transport: TEST_TRANSPORT,
      sessname: `stop-${process.pid}-${port}-${i}`,
      paths: [{ dst: { ...LO, port } }],
      reconnectDelayMs: 0,
      maxReconnectAttempts: 0,
    });
    t.teardown(() => c.close());
    return c;
  });
  await Promise.all(cs.map((c) => c.connect(scaled(10_000))));
  return cs;
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return cond();
}

const downs = (h: Harness) => h.events.filter((e) => e.type === 'session-down').length;

test.serial('stop() waits for a session-down report in progress; nothing reaches JS after it', async (t) => {
  // The report is held back on the thread that closed the session's last connection. A stop()
  // that came meanwhile once found no live session and returned at once, and JS released the
  // event function under the report: the event was lost, or (when the function was already
  // freed) the process aborted. The native fault hook touches a mark file as the hold begins, so
  // the test knows the window is open instead of guessing how long the server takes to see the
  // client go (a 100 ms guess failed under CI load). Rounds, because over TCP the report lands
  // on IO thread 0 (where stop() itself waits its turn) in about a third of them.
  const HOLD_MS = 400;
  const mark = join(mkdtempSync(join(tmpdir(), 'ibnbd-stop-')), 'hold');
  process.env.IBNBD_FAULT_SESSION_DOWN_DELAY_MS = String(HOLD_MS);
  process.env.IBNBD_FAULT_MARK_FILE = mark;
  let overlapped = 0;
  try {
    for (let round = 0; round < 4; round++) {
      const h = startServer(t);
      const [c] = await connectClients(t, h.port, 1);
      t.true(await waitFor(() => h.events.some((e) => e.type === 'session-up'), scaled(5000)), `round ${round}: session up`);
      rmSync(mark, { force: true });
      const closing = c!.close(); // blocks on the held IO thread too: not awaited yet
      t.true(await waitFor(() => existsSync(mark), scaled(5000)), `round ${round}: the server began its session-down report`);
      const holdEnd = statSync(mark).mtimeMs + HOLD_MS;
      const t0 = Date.now();
      await h.server.stop();
      const returned = Date.now();
      if (t0 < holdEnd) overlapped++;
      // 5 ms: the mark's mtime and Date.now() come from different clocks' roundings
      t.true(returned >= holdEnd - 5, `round ${round}: stop() returned ${Math.round(holdEnd - returned)} ms before the report finished`);
      // queued before the release: delivered
      t.true(await waitFor(() => downs(h) === 1, scaled(2000)), `round ${round}: session reported down`);
      await closing;
    }
    t.true(overlapped > 0, 'at least one stop() began while a report was held');
  } finally {
    delete process.env.IBNBD_FAULT_SESSION_DOWN_DELAY_MS;
    delete process.env.IBNBD_FAULT_MARK_FILE;
    rmSync(dirname(mark), { recursive: true, force: true });
  }
});

test.serial('stop() with clients connected, many times: every session reported down, no crash', async (t) => {
  for (let i = 0; i < 25; i++) {
    const h = startServer(t);
    const clients = await connectClients(t, h.port, 2);
    await h.server.stop();
    t.true(await waitFor(() => downs(h) === 2, scaled(2000)), `iteration ${i}: both sessions reported down`);
    await Promise.all(clients.map((c) => c.close()));
  }
});
