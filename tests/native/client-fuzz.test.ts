// A hostile server cannot hurt the client (docs/security.md): a scripted TCP server answers the
// client's handshakes correctly and then every request with a malformed reply (an unknown id, a
// data length other than the one asked for, a bad kind, a reserved byte set, an errno out of
// range, a frame cut short, a frame that belongs on the service connection, random bytes).
// The client must close that path each time and dial again, never crash, and never write
// outside a request's buffer nor into one whose request was already answered: the buffers sit
// between guard bytes, and every answered request's buffer is refilled with a marker that must
// still be there at the end. A good session to a real server beside it verifies its reads
// throughout. In the sanitizer tier under ASan/UBSan as well.
import test from 'ava';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { ClientSession, type LinkEvent } from '../../src/backend/transport.js';
import { encode } from '../../src/proto/ibnbd.js';
import * as F from '../support/tcp-frames.js';
import { mapDevice, serveFile } from '../support/vhost-helpers.js';

// under ASan too: 100,004 in 138.6 s on this host, beside the tier's guests (2026-12-06)
const TARGET = 100_000;
const SESSIONS = 8;
const QD = 8;
const READ = 4096;
const GUARD = 64;

/** The malformed answers; each closes the client's path. */
const MUTATIONS = ['unknown-id', 'short-data', 'long-data', 'bad-kind', 'reserved', 'errno-positive', 'errno-range', 'cut-short', 'heartbeat-with-data', 'fence-ack', 'random'] as const;

function hostileServer() {
  let sent = 0;
  const counts = new Map<string, number>();
  const srv = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let handshaken = false;
    let need = F.HANDSHAKE_REQ_SIZE;
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!handshaken) {
        if (buf.length < need) return;
        const nameLen = buf.readUInt16LE(10);
        need = F.HANDSHAKE_REQ_SIZE + nameLen;
        if (buf.length < need) return;
        const req = F.decodeHandshakeReq(buf.subarray(0, need));
        buf = buf.subarray(need);
        if (!req.ok) return void s.destroy();
        handshaken = true;
        s.write(F.encodeHandshakeRsp({ version: F.VERSION, errno: 0, queueDepth: Math.min(req.value.queueDepth, QD), maxIoSize: 131072 }));
        if (req.value.connIndex === 0) buf = Buffer.alloc(0); // the service connection: heartbeats only, left alone
        return;
      }
      if (buf.length < F.FRAME_HEADER_SIZE) return;
      const h = F.decodeFrameHeader(buf.subarray(0, F.FRAME_HEADER_SIZE));
      if (!h.ok || (h.value.kind !== 'READ_REQ' && h.value.kind !== 'WRITE_REQ')) return;
      const m = MUTATIONS[sent % MUTATIONS.length]!;
      sent++;
      counts.set(m, (counts.get(m) ?? 0) + 1);
      const id = h.value.id;
      const want = h.value.kind === 'READ_REQ' ? h.value.dataLen : 0;
      const rsp = (over: Partial<F.FrameHeader>, data = Buffer.alloc(0)) =>
        Buffer.concat([F.encodeFrameHeader({ kind: 'RESPONSE', usrLen: 0, id, dataLen: data.length, errno: 0, cookie: 0n, ...over }), data]);
      let out: Buffer;
      switch (m) {
        case 'unknown-id': out = rsp({ id: id + 1000 }, randomBytes(want)); break;
        case 'short-data': out = rsp({ dataLen: Math.max(0, want - 512) }, randomBytes(Math.max(0, want - 512))); break;
        case 'long-data': out = rsp({ dataLen: want + 4096 }, randomBytes(want + 4096)); break;
        case 'bad-kind': out = rsp({}, randomBytes(want)); out[0] = [0, 8, 200][sent % 3]!; break;
        case 'reserved': out = rsp({}, randomBytes(want)); out[1] = 1; break;
        case 'errno-positive': out = rsp({}); out.writeInt32LE(5, 12); break;
        case 'errno-range': out = rsp({}); out.writeInt32LE(-5000, 12); break;
        case 'cut-short': out = rsp({}, randomBytes(want)).subarray(0, 30); break;
        case 'heartbeat-with-data': out = Buffer.concat([F.encodeFrameHeader({ kind: 'HEARTBEAT', usrLen: 0, id: 0, dataLen: 16, errno: 0, cookie: 1n }), randomBytes(16)]); break;
        case 'fence-ack': out = F.encodeFrameHeader({ kind: 'FENCE_ACK', usrLen: 0, id: 0, dataLen: 0, errno: 0, cookie: 1n }); break;
        default: out = randomBytes(24 + (sent % 200));
      }
      s.end(out);
      buf = Buffer.alloc(0);
    });
  });
  return { srv, sent: () => sent, counts };
}

test('100,000 malformed replies: the client drops the path each time, never writes outside or late into a buffer, and goes on', async (t) => {
  t.timeout(600_000);
  const hostile = hostileServer();
  await new Promise<void>((r) => hostile.srv.listen(0, '127.0.0.1', r));
  t.teardown(() => hostile.srv.close());
  const port = (hostile.srv.address() as net.AddressInfo).port;

  // the good session: a real server in this process, a file written and read back all along
  const served = serveFile(t, 16 << 20);
  const good = await mapDevice(t, served.port, 'disk.img');
  let goodRounds = 0;
  let goodBad = 0;
  const goodLoop = (async () => {
    while (hostile.sent() < TARGET) {
      const offset = (goodRounds % 256) * 65536;
      const data = randomBytes(65536);
      const io = (op: 'READ' | 'WRITE') => encode({ type: 'IO', deviceId: good.rsp.deviceId, sector: BigInt(offset / 512), op, sync: false, fua: false, biSize: 65536, prio: 0 });
      const w = await good.session.request({ dir: 'write', usr: io('WRITE'), data });
      const r = await good.session.request({ dir: 'read', usr: io('READ'), readLen: 65536 });
      if (w.errno !== 0 || r.errno !== 0 || !r.data?.equals(data)) goodBad++;
      goodRounds++;
    }
  })();

  const sessions: ClientSession[] = [];
  t.teardown(() => Promise.all(sessions.map((s) => s.close())));
  for (let i = 0; i < SESSIONS; i++) {
    const s = new ClientSession({ transport: 'tcp', sessname: `fuzz${i}`, paths: [{ dst: { kind: 'ip', addr: '127.0.0.1', port } }], queueDepth: QD, reconnectDelayMs: 50 }, (_ev: LinkEvent) => undefined);
    await s.connect(10_000);
    sessions.push(s);
  }
  // every request's buffer between guards; an answered one is refilled with its marker
  const arena = Buffer.alloc(SESSIONS * QD * (READ + GUARD) + GUARD, 0xa5);
  const slot = (i: number) => arena.subarray(GUARD + i * (READ + GUARD), GUARD + i * (READ + GUARD) + READ);
  const usr = Buffer.alloc(32);
  let answered = 0;
  const started = Date.now();
  const worker = async (i: number) => {
    const s = sessions[Math.floor(i / QD)]!;
    const b = slot(i);
    while (hostile.sent() < TARGET && Date.now() - started < 500_000) {
      b.fill(0x5a);
      const r = await s.request({ dir: 'read', usr, buffer: b });
      answered++;
      b.fill(0xa5); // the marker: nothing may land here after the answer
      if (r.errno !== 0) await new Promise((res) => setTimeout(res, 1));
    }
  };
  await Promise.all(Array.from({ length: SESSIONS * QD }, (_, i) => worker(i)));
  const secs = (Date.now() - started) / 1000;
  await goodLoop;
  t.log(`the good session wrote and read back 64 KiB ${goodRounds} times meanwhile`);
  t.true(goodRounds > 10, 'the good session kept working');
  t.is(goodBad, 0, 'every one of its writes was read back as written');
  await new Promise((r) => setTimeout(r, 200)); // anything late would have landed by now
  t.log(`${hostile.sent()} malformed replies in ${secs.toFixed(1)} s (${[...hostile.counts].map(([k, v]) => `${k} ${v}`).join(', ')}); ${answered} requests answered`);
  t.true(hostile.sent() >= TARGET, `${hostile.sent()} malformed replies`);
  t.true(arena.every((x) => x === 0xa5), 'no byte outside a buffer, nor inside one after its answer, was written');
  for (const s of sessions) t.true(s.paths().length === 1, 'the session is still there, its path redialled');
});
