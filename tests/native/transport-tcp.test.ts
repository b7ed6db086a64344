// The TCP transport over real loopback sockets: handshake and negotiation, requests both ways
// through the admin forwarding path, multiple paths, permits, heartbeat death, and a malformed
// handshake that must cost only its own connection.
import test from 'ava';
import { connect as netConnect } from 'node:net';
import { ClientSession, configureIoThreads, ioThreadCount, type LinkEvent } from '../../src/backend/transport.js';
import { NativeServer, type NativeServerEvent } from '../../src/backend/server-native.js';

const LO = { kind: 'ip' as const, addr: '127.0.0.1', port: 0 };

// Two IO threads: every path has a service and two IO connections, requests are spread over
// both threads and the server answers across threads.
configureIoThreads(2);


interface Harness {
  server: NativeServer;
  port: number;
  events: NativeServerEvent[];
  /** what the fake upper layer answers: echo usr back for reads, 0 for writes */
  answer: (ev: Extract<NativeServerEvent, { type: 'request' }>) => { errno: number; data?: Buffer } | null;
}

function startServer(t: import('ava').ExecutionContext, opts: Partial<{ queueDepth: number; maxIoSize: number; heartbeatMs: number; heartbeatMissedMax: number }> = {}): Harness {
  const h: Harness = {
    server: undefined as unknown as NativeServer,
    port: 0,
    events: [],
    answer: (ev) => (ev.dir === 'read' ? { errno: 0, data: Buffer.concat([ev.usr, Buffer.alloc(ev.dataLen)]).subarray(0, ev.dataLen) } : { errno: 0 }),
  };
  h.server = new NativeServer({ transport: 'tcp', listen: [LO], ...opts }, (ev) => {
    h.events.push(ev);
    if (ev.type === 'request') {
      const a = h.answer(ev);
      if (a) h.server.respond(ev.requestId, a.errno, a.data);
    }
  });
  const bound = h.server.start();
  h.port = bound[0]!.port;
  t.teardown(() => h.server.stop());
  return h;
}

function client(t: import('ava').ExecutionContext, port: number, extra: Partial<ConstructorParameters<typeof ClientSession>[0]> = {}, onLink?: (e: LinkEvent) => void): ClientSession {
  const c = new ClientSession({ transport: 'tcp', sessname: `t-${port}-${Math.random().toString(36).slice(2)}`, paths: [{ dst: { ...LO, port } }], ...extra }, onLink);
  t.teardown(() => c.close());
  return c;
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('handshake negotiates the smaller queue depth and max IO size; the server sees the session', async (t) => {
  const h = startServer(t, { queueDepth: 64, maxIoSize: 64 * 1024 });
  const links: LinkEvent[] = [];
  const c = client(t, h.port, { queueDepth: 128, maxIoSize: 128 * 1024 }, (e) => links.push(e));
  await c.connect(5000);
  t.is(c.queueDepth, 64);
  t.is(c.maxIoSize, 64 * 1024);
  t.regex(c.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  await waitFor(() => links.includes('connected'), 2000, 'connected event');
  await waitFor(() => h.events.some((e) => e.type === 'session-up'), 2000, 'session-up');
  const up = h.events.find((e) => e.type === 'session-up') as Extract<NativeServerEvent, { type: 'session-up' }>;
  t.is(up.uuid, c.uuid);
  t.is(h.server.stats().sessions.length, 1);
  t.regex(h.server.stats().sessions[0]!.paths[0]!.src, /^ip:127\.0\.0\.1:\d+$/);

  // smaller client side wins too
  const c2 = client(t, h.port, { queueDepth: 16, maxIoSize: 8192 });
  await c2.connect(5000);
  t.is(c2.queueDepth, 16);
  t.is(c2.maxIoSize, 8192);
});

test('requests are forwarded both ways with their user message and data', async (t) => {
  const h = startServer(t);
  const c = client(t, h.port);
  await c.connect(5000);
  const usr = Buffer.from([0, 0, 0, 0, 2, 0, 0, 0]);
  const r = await c.request({ dir: 'read', usr, readLen: 36 });
  t.is(r.errno, 0);
  t.deepEqual(r.data!.subarray(0, 8), usr);
  t.is(r.data!.length, 36);
  const payload = Buffer.alloc(100_000, 7);
  h.answer = (ev) => ({ errno: ev.dataLen === payload.length ? 0 : -22 });
  const w = await c.request({ dir: 'write', usr: Buffer.from([5, 0, 0, 0, 9, 0, 0, 0]), data: payload });
  t.is(w.errno, 0);
  const req = h.events.filter((e) => e.type === 'request').at(-1) as Extract<NativeServerEvent, { type: 'request' }>;
  t.is(req.dir, 'write');
  t.is(req.dataLen, payload.length);
  h.answer = () => ({ errno: 2 });
  const e = await c.request({ dir: 'read', usr: Buffer.from([1, 2, 3, 4]), readLen: 8 });
  t.is(e.errno, -2);
  t.is(e.data, undefined);
  // beyond the negotiated max IO size: refused locally
  const big = await c.request({ dir: 'write', usr, data: Buffer.alloc(c.maxIoSize + 1) });
  t.is(big.errno, -22);
});

// The client takes small READ responses many at a time through its receive buffer and copies
// their data out, and reads larger ones (over 8 KiB) straight into place: a burst of answers of
// every size, sent back to back, must put each one's bytes in its own buffer and nowhere else,
// whichever way it was received and wherever a receive call cut it.
test('a burst of READ answers of mixed sizes: every buffer gets exactly its own bytes', async (t) => {
  const h = startServer(t, { queueDepth: 64, maxIoSize: 128 * 1024 });
  const held: Extract<NativeServerEvent, { type: 'request' }>[] = [];
  h.answer = (ev) => {
    held.push(ev);
    return null;
  };
  const c = client(t, h.port, { queueDepth: 64, maxIoSize: 128 * 1024 });
  await c.connect(5000);
  const fill = (id: number, len: number): Buffer => {
    const b = Buffer.alloc(len);
    for (let j = 0; j < len; j++) b[j] = (id * 31 + j * 7 + (j >> 8)) & 0xff;
    return b;
  };
  const sizes = [512, 4096, 8192, 8193, 4096, 65536, 1, 4096, 131072, 2048, 4096, 12288];
  for (let round = 0; round < 4; round++) {
    const n = 60;
    const ps = Array.from({ length: n }, (_, i) => {
      const id = round * 1000 + i;
      const usr = Buffer.alloc(8);
      usr.writeUInt32LE(id, 4);
      return c.request({ dir: 'read', usr, readLen: sizes[(i + round) % sizes.length]! }).then((r) => ({ r, id }));
    });
    await waitFor(() => held.length === n, 5000, `${n} requests at the server`);
    // answered all at once, in an order unlike the requests', so responses of both kinds follow
    // each other in one stream
    const batch = held.splice(0).reverse();
    for (const ev of batch) h.server.respond(ev.requestId, 0, fill(ev.usr.readUInt32LE(4), ev.dataLen));
    for (const { r, id } of await Promise.all(ps)) {
      t.is(r.errno, 0);
      const len = sizes[(id % 1000 + round) % sizes.length]!;
      t.true(r.data!.equals(fill(id, len)), `request ${id} (${len} B) holds its own bytes`);
    }
  }
});

// Requests from JS are spread over the IO threads, so the order in which they reach the permit
// queue is the threads' race, not the order of the calls: the test checks the bound and that every
// waiter is served, one new request per answer.
test('permits: more requests than the queue depth wait, never more than the depth in flight, all complete', async (t) => {
  const h = startServer(t, { queueDepth: 4 });
  const held: Extract<NativeServerEvent, { type: 'request' }>[] = [];
  h.answer = (ev) => {
    held.push(ev);
    return null;
  };
  const c = client(t, h.port);
  await c.connect(5000);
  t.is(c.queueDepth, 4);
  const done: number[] = [];
  // Requests are spread over the two IO threads (and connections), which take permits and send
  // in whatever order they run: each of the first 4 is awaited at the server before the next is
  // made, and the waiters are made with a gap, so the order they reach the transport is the
  // order of the calls (the property under test is the permit queue's FIFO, not cross-thread
  // scheduling or the order the server's epoll reports two connections).
  const ps: Promise<{ errno: number }>[] = [];
  for (let i = 0; i < 12; i++) {
    ps.push(c.request({ dir: 'write', usr: Buffer.from([9, 0, 0, 0, i]) }).then((r) => { done.push(i); return r; }));
    if (i < 4) await waitFor(() => held.length === i + 1, 2000, `request ${i} at the server`);
    else await new Promise((r) => setTimeout(r, 50));
  }
  await waitFor(() => held.length === 4, 2000, '4 requests at the server');
  await new Promise((r) => setTimeout(r, 100));
  t.is(held.length, 4, 'no more than queue depth in flight');
  let answered = 0;
  while (done.length < 12) {
    const ev = held.shift();
    if (ev) {
      h.server.respond(ev.requestId, 0);
      answered++;
    }
    await new Promise((r) => setTimeout(r, 5));
    const arrived = h.events.filter((e) => e.type === 'request').length;
    t.true(arrived - answered <= 4, `at most 4 in flight (arrived ${arrived}, answered ${answered})`);
  }
  const rs = await Promise.all(ps);
  t.true(rs.every((r) => r.errno === 0));
  const order = h.events.filter((e) => e.type === 'request').map((e) => (e as { usr: Buffer }).usr[4]!);
  t.deepEqual([...order].sort((a, b) => a - b), [...Array(12).keys()], 'every request reached the server once');
});

test('two paths: both connect, requests spread, one session on the server', async (t) => {
  const h = startServer(t);
  const links: LinkEvent[] = [];
  const c = client(t, h.port, { paths: [{ dst: { ...LO, port: h.port } }, { dst: { ...LO, port: h.port } }], mpPolicy: 'round-robin' }, (e) => links.push(e));
  await c.connect(5000);
  t.is(c.paths().length, 2);
  t.true(c.paths().every((p) => p.state === 'connected'));
  await waitFor(() => h.server.stats().sessions[0]?.paths.length === 2, 2000, 'two server paths');
  const rs = await Promise.all(Array.from({ length: 20 }, () => c.request({ dir: 'read', usr: Buffer.from([0, 0, 0, 0]), readLen: 4 })));
  t.true(rs.every((r) => r.errno === 0));
  t.is(links.filter((l) => l === 'connected').length, 1);
});

test('heartbeats: a server that stops answering is detected, requests fail instead of hanging', async (t) => {
  const h = startServer(t, { heartbeatMs: 100, heartbeatMissedMax: 2 });
  const links: LinkEvent[] = [];
  const c = client(t, h.port, { heartbeatMs: 100, heartbeatMissedMax: 2, reconnectDelayMs: 60_000 }, (e) => links.push(e));
  await c.connect(5000);
  h.answer = () => null; // hold requests forever
  const pending = c.request({ dir: 'write', usr: Buffer.from([5, 0, 0, 0, 1, 0, 0, 0]) });
  await waitFor(() => h.events.some((e) => e.type === 'request'), 2000, 'request at the server');
  const t0 = Date.now();
  // freeze the server side: stop it (closes sockets) — the client must notice within the window
  await h.server.stop();
  const r = await pending;
  // lost with its only path (-ENOTCONN: safe to send again once the session is back), or cut
  t.true(r.errno === -107 || r.errno === -103 || r.errno === -104, `errno ${r.errno}`);
  await waitFor(() => links.includes('disconnected'), 2000, 'disconnected');
  t.true(Date.now() - t0 < 2000);
  const after = await c.request({ dir: 'read', usr: Buffer.from([0, 0, 0, 0]), readLen: 4 });
  t.is(after.errno, -107); // ENOTCONN
});

test('heartbeats: a peer that goes silent without closing is declared dead after the missed max', async (t) => {
  // a fake server that completes the handshake and then never says a word
  const { createServer } = await import('node:net');
  const sockets: import('node:net').Socket[] = [];
  const srv = createServer((s) => {
    sockets.push(s);
    s.once('data', () => {
      const rsp = Buffer.alloc(32);
      rsp.writeUInt32LE(0x54434249, 0);
      rsp.writeUInt16LE(1, 4);
      rsp.writeUInt32LE(8, 12);
      rsp.writeUInt32LE(65536, 16);
      s.write(rsp);
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    sockets.forEach((s) => s.destroy());
    srv.close();
  });
  const port = (srv.address() as import('node:net').AddressInfo).port;
  const links: LinkEvent[] = [];
  const c = client(t, port, { heartbeatMs: 50, heartbeatMissedMax: 3, queueDepth: 8, maxIoSize: 65536, reconnectDelayMs: 60_000 }, (e) => links.push(e));
  await c.connect(5000);
  const t0 = Date.now();
  const pending = c.request({ dir: 'read', usr: Buffer.from([0, 0, 0, 0]), readLen: 512 });
  await waitFor(() => links.includes('disconnected'), 3000, 'disconnected');
  const elapsed = Date.now() - t0;
  t.true(elapsed >= 150 && elapsed < 1500, `detected after ${elapsed} ms`);
  t.is((await pending).errno, -107, 'lost with its path: ENOTCONN, not an error of the server');
});

test('a malformed handshake closes only its own connection', async (t) => {
  const h = startServer(t);
  const c = client(t, h.port);
  await c.connect(5000);
  for (const junk of [Buffer.alloc(64, 0xff), Buffer.concat([Buffer.from('IBCT'), Buffer.alloc(60)])]) {
    const reply = await new Promise<Buffer>((resolve, reject) => {
      const s = netConnect(h.port, '127.0.0.1', () => s.write(junk));
      const chunks: Buffer[] = [];
      s.on('data', (d: Buffer) => chunks.push(d));
      s.on('close', () => resolve(Buffer.concat(chunks)));
      s.on('error', reject);
      setTimeout(() => reject(new Error('server kept a malformed connection open')), 3000).unref();
    });
    t.is(reply.length, 32);
    t.true(reply.readInt32LE(8) < 0, 'refusal carries an errno');
  }
  const r = await c.request({ dir: 'read', usr: Buffer.from([0, 0, 0, 0]), readLen: 4 });
  t.is(r.errno, 0, 'the established session is untouched');
});

test('the IO thread pool has the configured size and cannot be resized once running', (t) => {
  t.is(ioThreadCount(), 2);
  t.notThrows(() => configureIoThreads(2));
  t.throws(() => configureIoThreads(3), { code: 'EBUSY' });
  t.throws(() => configureIoThreads(0), { code: 'EINVAL' });
});

test('rdma is known but not built yet; unknown transports are refused', (t) => {
  const e = t.throws(() => new ClientSession({ transport: 'rdma', sessname: 'x', paths: [{ dst: { ...LO, port: 1 } }] }));
  t.is((e as { code?: string }).code, 'ENODEV');
  t.throws(() => new ClientSession({ transport: 'udp' as 'tcp', sessname: 'x', paths: [{ dst: { ...LO, port: 1 } }] }), { code: 'EINVAL' });
  t.throws(() => new ClientSession({ transport: 'tcp', sessname: 'a/b', paths: [{ dst: { ...LO, port: 1 } }] }), { code: 'EINVAL' });
  t.throws(() => new ClientSession({ transport: 'tcp', sessname: 'x'.repeat(257), paths: [{ dst: { ...LO, port: 1 } }] }), { code: 'EINVAL' });
});

test('connect to a closed port fails with ECONNREFUSED', async (t) => {
  const h = startServer(t);
  const port = h.port;
  await h.server.stop();
  const c = client(t, port);
  await t.throwsAsync(() => c.connect(2000), { code: 'ECONNREFUSED' });
});

/** A TCP relay that can be cut, standing in for one network path. */
async function relay(t: import('ava').ExecutionContext, port: number): Promise<{ port: number; cut: () => void }> {
  const { createServer, connect } = await import('node:net');
  const socks = new Set<import('node:net').Socket>();
  const srv = createServer((a) => {
    const b = connect(port, '127.0.0.1');
    socks.add(a).add(b);
    a.pipe(b).pipe(a);
    const end = (): void => {
      a.destroy();
      b.destroy();
    };
    a.on('error', end).on('close', end);
    b.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const cut = (): void => {
    srv.close();
    for (const s of socks) s.destroy();
  };
  t.teardown(cut);
  return { port: (srv.address() as import('node:net').AddressInfo).port, cut };
}

test('failover: requests in flight on a path that dies are re-issued on the other path', async (t) => {
  const h = startServer(t);
  const held: Extract<NativeServerEvent, { type: 'request' }>[] = [];
  h.answer = (ev) => {
    held.push(ev);
    return null;
  };
  const r1 = await relay(t, h.port);
  const links: LinkEvent[] = [];
  const c = client(t, h.port, { paths: [{ dst: { ...LO, port: r1.port } }, { dst: { ...LO, port: h.port } }], mpPolicy: 'round-robin', reconnectDelayMs: 60_000 }, (e) => links.push(e));
  await c.connect(5000);
  const ps = Array.from({ length: 8 }, (_, i) => c.request({ dir: 'read', usr: Buffer.from([9, 0, 0, 0, i]), readLen: 16 }));
  await waitFor(() => held.length === 8, 2000, '8 requests held');
  const viaRelay = c.paths()[0]!.inflight;
  t.true(viaRelay > 0, 'round-robin used the relayed path');
  t.deepEqual(c.paths().map((p) => [p.requests, p.failovers]), [[0, 0], [0, 0]], 'nothing completed or moved yet');
  r1.cut();
  await waitFor(() => c.paths()[0]!.state !== 'connected', 2000, 'relayed path down');
  // fenced (docs/tcp-transport.md, "Fencing"): no copy goes out again while the lost path's
  // requests still run on the server
  await new Promise((r) => setTimeout(r, 300));
  t.is(held.length, 8, 'nothing re-sent while the lost copies are unanswered');
  // the server finishes them (their answers are discarded); then the copies arrive on the
  // surviving path and are answered at once
  h.answer = (ev) => ({ errno: 0, data: Buffer.alloc(ev.dataLen, ev.usr[4]) });
  for (const ev of held) {
    try {
      h.server.respond(ev.requestId, 0, Buffer.alloc(ev.dataLen, ev.usr[4]));
    } catch {
      /* its connection is gone: that copy's answer is discarded */
    }
  }
  const rs = await Promise.all(ps);
  rs.forEach((r, i) => {
    t.is(r.errno, 0);
    t.true(r.data!.every((b) => b === i));
  });
  t.false(links.includes('disconnected'), 'one path left: the session never went down');
  const [dead, alive] = c.paths();
  t.is(dead!.failovers, viaRelay, 'every request in flight on the dead path was moved, and counted once');
  t.is(dead!.requests, 0, 'none completed on the dead path');
  t.is(alive!.requests, 8, 'the surviving path completed its own requests and the moved ones');
  t.is(alive!.failovers, 0);
});

test('reconnect: a restarted server brings the path back and RECONNECTED is raised', async (t) => {
  const h = startServer(t);
  const port = h.port;
  const links: LinkEvent[] = [];
  const c = client(t, port, { reconnectDelayMs: 100 }, (e) => links.push(e));
  await c.connect(5000);
  await h.server.stop();
  await waitFor(() => links.includes('disconnected'), 3000, 'disconnected');
  const h2 = new NativeServer({ transport: 'tcp', listen: [{ ...LO, port }] }, (ev) => {
    if (ev.type === 'request') h2.respond(ev.requestId, 0);
  });
  h2.start();
  t.teardown(() => h2.stop());
  await waitFor(() => links.includes('reconnected'), 5000, 'reconnected');
  t.true(c.paths()[0]!.reconnects >= 1);
  t.is((await c.request({ dir: 'write', usr: Buffer.from([5, 0, 0, 0, 1, 0, 0, 0]) })).errno, 0);
});

test('server side: a client that handshakes and goes silent is dropped by heartbeat; a bad frame drops only its path', async (t) => {
  const F = await import('../support/tcp-frames.js');
  const { randomBytes } = await import('node:crypto');
  // 200 ms × 3: the raw client below acknowledges from this worker's event loop, which the
  // file's other tests share; at 50 ms × 2 a stall of ~100 ms there (the sanitizer tier, under
  // load, twice) dropped the path before the session was up
  const h = startServer(t, { heartbeatMs: 200, heartbeatMissedMax: 3 });
  const good = client(t, h.port);
  await good.connect(5000);
  // A raw path of two connections. Its connection 0 acknowledges the server's heartbeats while
  // answering() says so: a connection 0 silent from the start got its half-made path dropped
  // whenever the second connection came later than the heartbeat window, and the session never
  // went up.
  const rawPath = async (sessname: string, answering: () => boolean): Promise<import('node:net').Socket[]> => {
    const su = randomBytes(16), pu = randomBytes(16);
    const socks: import('node:net').Socket[] = [];
    for (let i = 0; i < 2; i++) {
      const s = netConnect(h.port, '127.0.0.1');
      t.teardown(() => s.destroy());
      await new Promise((r) => s.once('connect', r));
      s.write(F.encodeHandshakeReq({ version: 1, connIndex: i, connCount: 2, queueDepth: 8, maxIoSize: 65536, incarnation: 1, sessionUuid: su, pathUuid: pu, flags: 0, sessname }));
      const rsp = await new Promise<Buffer>((r) => s.once('data', r));
      const d = F.decodeHandshakeRsp(rsp.subarray(0, 32));
      t.true(d.ok && d.value.errno === 0 && d.value.queueDepth === 8);
      // what follows the handshake on a quiet session: heartbeats (frame headers, no payload)
      const H = F.FRAME_HEADER_SIZE;
      let rest = rsp.subarray(32);
      const onFrames = (chunk: Buffer) => {
        rest = Buffer.concat([rest, chunk]);
        for (; rest.length >= H; rest = rest.subarray(H)) {
          const f = F.decodeFrameHeader(rest.subarray(0, H));
          if (f.ok && f.value.kind === 'HEARTBEAT' && answering() && !s.destroyed) {
            s.write(F.encodeFrameHeader({ kind: 'HEARTBEAT_ACK', usrLen: 0, id: 0, dataLen: 0, errno: 0, cookie: f.value.cookie }));
          }
        }
      };
      s.on('data', onFrames);
      onFrames(Buffer.alloc(0));
      socks.push(s);
    }
    return socks;
  };
  const closed = (s: import('node:net').Socket): Promise<void> => new Promise((r) => (s.destroyed ? r() : s.once('close', () => r())));
  let answering = true;
  const silent = await rawPath('silent', () => answering);
  await waitFor(() => h.events.some((e) => e.type === 'session-up' && e.sessname === 'silent'), 5000, 'silent session up');
  answering = false; // from here on it reads and never answers a heartbeat
  const t0 = Date.now();
  await Promise.race([Promise.all(silent.map(closed)), new Promise((_, rej) => setTimeout(() => rej(new Error('silent client kept')), 5000))]);
  // 3 missed heartbeats of 200 ms and the tick that counts the third
  t.true(Date.now() - t0 < 2000, `dropped ${Date.now() - t0} ms after it went silent`);
  await waitFor(() => h.events.filter((e) => e.type === 'session-down').length === 1, 2000, 'session-down');

  const rude = await rawPath('rude', () => true);
  rude[1]!.write(F.encodeFrameHeader({ kind: 'READ_REQ', usrLen: 4, id: 8, dataLen: 512, errno: 0, cookie: 0n })); // id ≥ queue depth
  await Promise.race([Promise.all(rude.map(closed)), new Promise((_, rej) => setTimeout(() => rej(new Error('bad frame tolerated')), 3000))]);
  t.is((await good.request({ dir: 'write', usr: Buffer.from([5, 0, 0, 0, 1, 0, 0, 0]) })).errno, 0, 'other sessions unaffected');
});
