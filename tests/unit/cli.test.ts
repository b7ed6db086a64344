// The ibnbd command line as a user runs it (node bin/ibnbd.js, a real process) against a real
// ControlServer in this process whose handlers record each request and answer canned replies or
// errors: exit status, the one-line error form, --json, help, both forms of map, and that a
// malformed request never reaches the socket.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IbnbdError } from '../../src/errors.js';
import { ControlServer, type ControlHandler } from '../../src/control/index.js';
import { MAP_USAGE } from '../../src/proto/map-string.js';

const BIN = fileURLToPath(new URL('../../../bin/ibnbd.js', import.meta.url));
const dirs: string[] = [];
const servers: ControlServer[] = [];
test.after.always(async () => {
  for (const s of servers) await s.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function ibnbd(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 20_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const DEVICE = {
  name: '!dev!ram0',
  sessname: 'blya',
  mapping_path: '/dev/ram0',
  state: 'open',
  access_mode: 'rw',
  vhost_socket: '/run/ibnbd/vhost/!dev!ram0.sock',
};

/** A daemon stand-in: records requests; each command answers from `replies` (or throws). */
async function fakeDaemon(replies: Record<string, (args: Record<string, unknown>) => object> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-cli-'));
  dirs.push(dir);
  const requests: Array<Record<string, unknown>> = [];
  const record = (cmd: string): ControlHandler => async (args) => {
    requests.push({ cmd, ...args });
    const reply = replies[cmd];
    return reply ? reply(args) : {};
  };
  const server = new ControlServer(join(dir, 'client.sock'), {
    map: record('map'),
    unmap: record('unmap'),
    list: record('list'),
    show: record('show'),
  });
  await server.listen();
  servers.push(server);
  return { sock: server.path, requests, server };
}

test('map "<map string>": sends the canonical string, prints the result, exits 0', async (t) => {
  const d = await fakeDaemon({ map: () => ({ device: DEVICE }) });
  const r = await ibnbd(['map', 'sessname=blya path=ip:10.50.100.66:1234 device_path=/dev/ram0 access_mode=rw', '--control', d.sock]);
  t.is(r.stderr, '');
  t.is(r.code, 0);
  t.deepEqual(d.requests, [{ cmd: 'map', map: 'sessname=blya path=ip:10.50.100.66 device_path=/dev/ram0' }]);
  t.regex(r.stdout, /^name: +!dev!ram0$/m);
  t.regex(r.stdout, /^vhost_socket: +\/run\/ibnbd\/vhost\/!dev!ram0\.sock$/m);
});

test('the flag form sends exactly what the string form sends', async (t) => {
  const d = await fakeDaemon();
  const asString =
    'sessname=s1 path=ip:10.0.0.1,ip:10.0.0.2 path=ip:[fe80::1]:4000 device_path=vg/lv access_mode=ro io_mode=fileio transport=rdma queues=4 mp_policy=round-robin';
  const r1 = await ibnbd(['map', asString, '--control', d.sock]);
  const r2 = await ibnbd([
    'map', '--control', d.sock, '--sessname', 's1', '--path', 'ip:10.0.0.1,ip:10.0.0.2', '--path', 'ip:[fe80::1]:4000',
    '--device-path', 'vg/lv', '--access-mode', 'ro', '--io-mode', 'fileio', '--transport', 'rdma', '--queues', '4',
    '--mp-policy', 'round-robin',
  ]);
  // unquoted, as a user in a hurry types it
  const r3 = await ibnbd(['map', '--control', d.sock, ...asString.split(' ')]);
  for (const r of [r1, r2, r3]) {
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout, 'mapped vg!lv\n'); // an empty result: the CLI names the device_id
  }
  t.is(d.requests.length, 3);
  t.deepEqual(d.requests[1], d.requests[0]);
  t.deepEqual(d.requests[2], d.requests[0]);
  t.deepEqual(d.requests[0], { cmd: 'map', map: asString });
});

test('--json prints the raw result', async (t) => {
  const d = await fakeDaemon({ show: () => ({ device: DEVICE }), list: () => ({ devices: [DEVICE] }) });
  const r = await ibnbd(['show', '!dev!ram0', '--json', '--control', d.sock]);
  t.is(r.code, 0);
  t.deepEqual(JSON.parse(r.stdout), { device: DEVICE });
  t.deepEqual(d.requests, [{ cmd: 'show', device: '!dev!ram0' }]);
  const l = await ibnbd(['list', '--json', '--control', d.sock]);
  t.deepEqual(JSON.parse(l.stdout), { devices: [DEVICE] });
});

test('list prints a table, one row per device', async (t) => {
  const second = { ...DEVICE, name: 'sda', mapping_path: 'sda', state: 'closed' };
  const d = await fakeDaemon({ list: () => ({ devices: [DEVICE, second] }) });
  const r = await ibnbd(['list', '--control', d.sock]);
  t.is(r.code, 0);
  const lines = r.stdout.trimEnd().split('\n');
  t.is(lines.length, 3);
  t.regex(lines[0]!, /^name +sessname +mapping_path +state +access_mode +vhost_socket$/);
  t.regex(lines[1]!, /^!dev!ram0 +blya +\/dev\/ram0 +open +rw /);
  t.regex(lines[2]!, /^sda +blya +sda +closed +rw /);
  t.deepEqual(d.requests, [{ cmd: 'list' }]);

  const empty = await fakeDaemon({ list: () => ({ devices: [] }) });
  t.is((await ibnbd(['list', '--control', empty.sock])).stdout, 'no devices mapped\n');
});

test('unmap sends the device and force', async (t) => {
  const d = await fakeDaemon();
  const r1 = await ibnbd(['unmap', 'sda', '--control', d.sock]);
  const r2 = await ibnbd(['unmap', '!dev!ram0', '--force', '--control', d.sock]);
  t.is(r1.code, 0);
  t.is(r1.stdout, 'unmapped sda\n');
  t.is(r2.code, 0);
  t.deepEqual(d.requests, [
    { cmd: 'unmap', device: 'sda', force: false },
    { cmd: 'unmap', device: '!dev!ram0', force: true },
  ]);
});

test('a daemon error: "ibnbd: <ERRNO>: <message>" on stderr, exit status = errno', async (t) => {
  const d = await fakeDaemon({
    map: () => {
      throw new IbnbdError('EEXIST', 'device /dev/ram0 is already mapped\nby session blya');
    },
    unmap: () => {
      throw new IbnbdError('EBUSY', 'device sda is in use');
    },
  });
  const r = await ibnbd(['map', 'sessname=blya path=ip:10.50.100.66 device_path=/dev/ram0', '--control', d.sock]);
  t.is(r.code, 17);
  t.is(r.stdout, '');
  t.is(r.stderr, 'ibnbd: EEXIST: device /dev/ram0 is already mapped by session blya\n');
  const u = await ibnbd(['unmap', 'sda', '--control', d.sock]);
  t.is(u.code, 16);
  t.is(u.stderr, 'ibnbd: EBUSY: device sda is in use\n');
});

test('a malformed map is an EINVAL of the CLI, before any socket I/O', async (t) => {
  const d = await fakeDaemon();
  const cases: Array<[string[], RegExp]> = [
    [['map', 'sessname=s path=ip:10.0.0.300 device_path=d'], /^ibnbd: EINVAL: path: bad ip address '10\.0\.0\.300'\n$/],
    [['map', 'sessname=s device_path=d'], /^ibnbd: EINVAL: path: missing\n$/],
    [['map', '--sessname', 'a/b', '--path', 'ip:1.2.3.4', '--device-path', 'd'], /^ibnbd: EINVAL: sessname: contains '\/'\n$/],
    [['map', '--sessname', 's', '--path', 'ip:1.2.3.4', '--device-path', 'd', '--queues', '17'], /^ibnbd: EINVAL: queues: /],
    [['map', '--sessname', 's', '--path', 'ip:1.2.3.4', '--device-path', 'd', '--access-mode', 'rx'], /^ibnbd: EINVAL: access_mode: /],
    [['map', 'sessname=s path=ip:1.2.3.4 device_path=d', '--queues', '2'], /^ibnbd: EINVAL: map: give either/],
    [['map'], /^ibnbd: EINVAL: sessname: missing\n$/],
    [['unmap', ''], /^ibnbd: EINVAL: device: empty\n$/],
    [['show', 'a\u0001b'], /^ibnbd: EINVAL: device: /],
  ];
  for (const [args, stderr] of cases) {
    const r = await ibnbd([...args, '--control', d.sock]);
    t.is(r.code, 22, args.join(' '));
    t.regex(r.stderr, stderr);
    t.is(r.stdout, '');
  }
  t.is(d.server.connectionsAccepted, 0, 'no connection was ever made');
  t.deepEqual(d.requests, []);
});

test('usage errors of the command line are EINVAL in the same form', async (t) => {
  const cases: Array<[string[], string]> = [
    [['map', '--bogus'], "ibnbd: EINVAL: unknown option '--bogus'\n"],
    [['frobnicate'], "ibnbd: EINVAL: unknown command 'frobnicate'\n"],
    [['show'], "ibnbd: EINVAL: missing required argument 'device'\n"],
    [['list', '--control'], "ibnbd: EINVAL: option '--control <sock>' argument missing\n"],
    [[], "ibnbd: EINVAL: missing command (see 'ibnbd --help')\n"],
    [['help', 'nothing'], "ibnbd: EINVAL: help: no command or topic 'nothing'\n"],
  ];
  for (const [args, stderr] of cases) {
    const r = await ibnbd(args);
    t.is(r.code, 22, args.join(' '));
    t.is(r.stderr, stderr);
  }
});

test('no daemon: ENOENT "no daemon listening on <path>"', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-cli-'));
  dirs.push(dir);
  const sock = join(dir, 'nobody.sock');
  const r = await ibnbd(['list', '--control', sock]);
  t.is(r.code, 2);
  t.is(r.stderr, `ibnbd: ENOENT: no daemon listening on ${sock}\n`);
  t.is(r.stdout, '');
});

test('a daemon without the command: EOPNOTSUPP passed through', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-cli-'));
  dirs.push(dir);
  // e.g. the CLI pointed at the server daemon's socket, which knows no "list"
  const server = new ControlServer(join(dir, 'server.sock'), { status: async () => ({}) });
  await server.listen();
  servers.push(server);
  const r = await ibnbd(['list', '--control', server.path]);
  t.is(r.code, 95);
  t.regex(r.stderr, /^ibnbd: EOPNOTSUPP: cmd: unknown command 'list' \(this daemon knows: status\)\n$/);
});

test('help map prints the map string usage; --help and help exit 0', async (t) => {
  const r = await ibnbd(['help', 'map']);
  t.is(r.code, 0);
  t.is(r.stdout, MAP_USAGE);
  const h = await ibnbd(['--help']);
  t.is(h.code, 0);
  for (const c of ['map', 'unmap', 'list', 'show', 'help']) t.regex(h.stdout, new RegExp(`^  ${c} `, 'm'));
  const m = await ibnbd(['map', '--help']);
  t.is(m.code, 0);
  t.true(m.stdout.includes('--device-path <path>'));
  t.true(m.stdout.includes(MAP_USAGE.split('\n')[0]!));
  const u = await ibnbd(['help', 'unmap']);
  t.regex(u.stdout, /^Usage: ibnbd unmap \[options\] <device>/);
});
