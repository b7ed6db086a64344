// The daemons under systemd (docs/operations.md, "systemd"): Type=notify as systemd sees it, a
// unix datagram socket at $NOTIFY_SOCKET (received here by python3, as Node has no unix datagram
// sockets): READY=1 only once the control socket (and the server's listener) answers, with a
// STATUS line; WATCHDOG=1 twice per WATCHDOG_USEC; STOPPING=1 on SIGTERM. And the shipped units
// pass `systemd-analyze verify` without a warning (with ExecStart pointed at this checkout's
// `ibnbd`, the one thing an installation changes).
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { projectRoot } from '../../src/backend/native.js';
import { tempDir } from '../../harness/fixtures.js';
import { cliPath, startClientDaemon, startServerDaemon } from '../support/daemons.js';

const RECEIVER = `
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("BOUND", flush=True)
while True:
    d = s.recv(65536)
    print(int(time.time() * 1000), d.decode().replace("\\n", "|"), flush=True)
`;

interface Note { at: number; state: string; controlAnswered?: boolean; portAnswered?: boolean }

/** A NOTIFY_SOCKET and what arrives on it; at READY=1 it tries the given sockets at once. */
async function notifySocket(t: import('ava').ExecutionContext, dir: string, probeAtReady: { control: () => string; port?: () => number }) {
  const path = join(dir, 'notify.sock');
  const py = spawn('python3', ['-c', RECEIVER, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => py.kill('SIGKILL'));
  const notes: Note[] = [];
  const tries: Promise<void>[] = [];
  const connects = (o: net.NetConnectOpts) => new Promise<boolean>((resolve) => {
    const c = net.connect(o);
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => { c.destroy(); resolve(false); });
  });
  let buf = '';
  await new Promise<void>((resolve) => {
    py.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === 'BOUND') { resolve(); continue; }
        const sp = line.indexOf(' ');
        const note: Note = { at: Number(line.slice(0, sp)), state: line.slice(sp + 1) };
        notes.push(note);
        if (note.state.includes('READY=1')) {
          tries.push(connects({ path: probeAtReady.control() }).then((ok) => { note.controlAnswered = ok; }));
          if (probeAtReady.port) tries.push(connects({ host: '127.0.0.1', port: probeAtReady.port() }).then((ok) => { note.portAnswered = ok; }));
        }
      }
    });
  });
  const waitFor = async (re: RegExp, ms = 10_000): Promise<Note> => {
    const end = Date.now() + ms;
    for (;;) {
      const n = notes.find((x) => re.test(x.state));
      if (n) {
        await Promise.all(tries);
        return n;
      }
      if (Date.now() > end) throw new Error(`no ${re} on NOTIFY_SOCKET; got ${JSON.stringify(notes)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return { path, notes, waitFor };
}

test('server: READY=1 once its control socket and listener answer, STATUS, WATCHDOG=1 per WATCHDOG_USEC, STOPPING=1 on SIGTERM', async (t) => {
  const dir = tempDir(t, 'sd-srv');
  const ex = join(dir, 'exports');
  mkdirSync(ex);
  let control = '';
  let port = 0;
  const n = await notifySocket(t, dir, { control: () => control, port: () => port });
  // the control path and port are known before the daemon starts: startServerDaemon names them
  const { freePort } = await import('../../harness/fixtures.js');
  port = await freePort();
  control = join(dir, `server-${port}.sock`);
  const server = await startServerDaemon(t, dir, ex, [], port, { NOTIFY_SOCKET: n.path, WATCHDOG_USEC: '400000' });
  const ready = await n.waitFor(/READY=1/);
  t.true(ready.controlAnswered, 'the control socket answered when READY=1 arrived');
  t.true(ready.portAnswered, 'and so did the listening port');
  t.regex(ready.state, /STATUS=listening on 127\.0\.0\.1:\d+/);
  t.regex(ready.state, new RegExp(`MAINPID=${server.proc.pid}`));
  // half the period: 200 ms apart. The receiver stamps arrivals, and on 2 busy cores it may be
  // scheduled late for one datagram, so the cadence is judged over six of them (five periods),
  // not by the shortest single gap: 400 ms (the full period) or 100 ms would both fall outside.
  const end = Date.now() + 8000;
  while (n.notes.filter((x) => x.state === 'WATCHDOG=1').length < 6 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  const dogs = n.notes.filter((x) => x.state === 'WATCHDOG=1');
  t.true(dogs.length >= 6, `WATCHDOG=1 keeps coming for WATCHDOG_USEC=400000 (${dogs.length})`);
  const mean = (dogs[5]!.at - dogs[0]!.at) / 5;
  t.true(mean >= 150 && mean <= 300, `every half period: ${mean.toFixed(0)} ms on average over 5 gaps`);
  t.is(await server.stop('SIGTERM'), 0);
  const stopping = await n.waitFor(/STOPPING=1/);
  t.true(stopping.at >= ready.at);
  t.false(n.notes.slice(n.notes.indexOf(stopping) + 1).some((x) => x.state === 'WATCHDOG=1'), 'no watchdog after STOPPING=1');
});

test('client: READY=1 once its control socket answers; nothing is sent without NOTIFY_SOCKET', async (t) => {
  const dir = tempDir(t, 'sd-clt');
  const control = join(dir, 'client.sock');
  const n = await notifySocket(t, dir, { control: () => control });
  const client = await startClientDaemon(t, dir, [], { NOTIFY_SOCKET: n.path });
  const ready = await n.waitFor(/READY=1/);
  t.true(ready.controlAnswered, 'the control socket answered when READY=1 arrived');
  t.regex(ready.state, /STATUS=0 device\(s\) mapped; control socket /);
  t.is(n.notes.filter((x) => x.state === 'WATCHDOG=1').length, 0, 'no WatchdogSec, no watchdog');
  t.is(await client.stop('SIGTERM'), 0);
  await n.waitFor(/STOPPING=1/);
  // without NOTIFY_SOCKET the same daemon starts and stops as before, sending nothing
  const before = n.notes.length;
  const dir2 = tempDir(t, 'sd-clt2');
  const plain = await startClientDaemon(t, dir2);
  t.is(await plain.stop('SIGTERM'), 0);
  t.is(n.notes.length, before);
});

test('the shipped units pass systemd-analyze verify without a warning; a bad key warns, a missing command fails', (t) => {
  const dir = tempDir(t, 'sd-units');
  const check = (name: string, text: string) => {
    const file = join(dir, name);
    writeFileSync(file, text);
    return spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8', timeout: 60_000 });
  };
  for (const unit of ['ibnbd-server.service', 'ibnbd-client.service']) {
    const text = readFileSync(join(projectRoot, 'packaging', 'systemd', unit), 'utf8');
    t.regex(text, /^Type=notify$/m);
    t.regex(text, /^LimitMEMLOCK=infinity$/m);
    t.regex(text, /^ExecStart=\/usr\/local\/bin\/ibnbd /m);
    // installed, `ibnbd` is /usr/local/bin/ibnbd (npm's global prefix); here, this checkout's
    const local = text.replace(/^ExecStart=\/usr\/local\/bin\/ibnbd /m, `ExecStart=${cliPath} `);
    const v = check(unit, local);
    t.is(v.status, 0, `${unit}: ${v.stdout}${v.stderr}`);
    t.is(v.stderr.trim(), '', `${unit}: not a single warning`);
    // what verify says of a unit it should refuse: an unknown key is a warning (exit 0), a
    // command that is not there an error
    const bad = check(unit.replace('.service', '-bad.service'), local.replace('Type=notify', 'Type=notify\nRestartOnTuesdays=yes'));
    t.regex(bad.stderr, /Unknown key 'RestartOnTuesdays'/);
    const missing = check(unit.replace('.service', '-missing.service'), local.replace(`ExecStart=${cliPath} `, `ExecStart=${join(dir, 'no-such-ibnbd')} `));
    t.not(missing.status, 0, `a unit whose ExecStart is not there fails: ${missing.stderr}`);
  }
});
