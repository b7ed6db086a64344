// The ibnbd command line as a user runs it (node bin/ibnbd.js, a real process) against a real
// ControlServer in this process whose handlers record each request and answer canned replies or
// errors: exit status, the one-line error form, --json, help, both forms of map, and that a
// malformed request never reaches the socket.
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IbnbdError } from '../../src/errors.js';
import { ControlServer, type ControlHandler } from '../../src/control/index.js';
import { MAP_USAGE } from '../../src/proto/map-string.js';
import { validateClientOptions } from '../../src/client/daemon.js';
import { CLIENT_DEFAULTS } from '../../src/client/defaults.js';

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
    'sessname=s1 path=ip:10.0.0.1,ip:10.0.0.2 path=ip:[fe80::1]:4000 device_path=vg/lv access_mode=ro io_mode=fileio transport=rdma queues=4 mp_policy=round-robin' +
    ' reconnect_delay=5 ctrl_loss_tmo=-1 fast_io_fail_tmo=30 io_timeout=10';
  const r1 = await ibnbd(['map', asString, '--control', d.sock]);
  const r2 = await ibnbd([
    'map', '--control', d.sock, '--sessname', 's1', '--path', 'ip:10.0.0.1,ip:10.0.0.2', '--path', 'ip:[fe80::1]:4000',
    '--device-path', 'vg/lv', '--access-mode', 'ro', '--io-mode', 'fileio', '--transport', 'rdma', '--queues', '4',
    '--mp-policy', 'round-robin', '--reconnect-delay', '5', '--ctrl-loss-tmo', '-1', '--fast-io-fail-tmo', '30',
    '--io-timeout', '10',
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
    [['map', '--sessname', 's', '--path', 'ip:1.2.3.4', '--device-path', 'd', '--reconnect-delay', '0'], /^ibnbd: EINVAL: reconnect_delay: /],
    [['map', '--sessname', 's', '--path', 'ip:1.2.3.4', '--device-path', 'd', '--io-timeout', '3601'], /^ibnbd: EINVAL: io_timeout: 3601 is out of range/],
    [['map', 'sessname=s path=ip:1.2.3.4 device_path=d io_timeout=-1'], /^ibnbd: EINVAL: io_timeout: /],
    [['map', '--sessname', 's', '--path', 'ip:1.2.3.4', '--device-path', 'd', '--ctrl-loss-tmo', '-2'], /^ibnbd: EINVAL: ctrl_loss_tmo: /],
    [['map', '--sessname', 's', '--path', 'ip:1.2.3.4', '--device-path', 'd', '--fast-io-fail-tmo', 'soon'], /^ibnbd: EINVAL: fast_io_fail_tmo: /],
    [['map', 'sessname=s path=ip:1.2.3.4 device_path=d ctrl_loss_tmo=0 fast_io_fail_tmo=5'], /^ibnbd: EINVAL: fast_io_fail_tmo: 5 s is longer than ctrl_loss_tmo \(0 s\)/],
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

test('ibnbd client: the reconnect policy defaults, validated before the daemon starts', (t) => {
  const o = validateClientOptions({});
  t.is(o.reconnectDelayMs, 2000);
  t.is(o.ctrlLossTmo, 600);
  t.is(o.fastIoFailTmo, -1);
  t.is(o.ioTimeout, 30);
  t.is(CLIENT_DEFAULTS.reconnectDelayMs, 2000);
  t.is(CLIENT_DEFAULTS.ioTimeout, 30);
  t.is(validateClientOptions({ ioTimeout: 0 }).ioTimeout, 0, 'off');
  t.is(validateClientOptions({ ioTimeout: 3600 }).ioTimeout, 3600);
  t.is(o.adminTimeout, 30, 'admin requests wait 30 s for their answer by default');
  t.is(validateClientOptions({ adminTimeout: 1 }).adminTimeout, 1);
  t.is(validateClientOptions({ adminTimeout: 3600 }).adminTimeout, 3600);
  t.is(validateClientOptions({ reconnectDelay: 5 }).reconnectDelayMs, 5000);
  t.is(validateClientOptions({ reconnectDelayMs: 300 }).reconnectDelayMs, 300, 'sub-second for tests');
  t.like(validateClientOptions({ ctrlLossTmo: -1, fastIoFailTmo: 86400 }), { ctrlLossTmo: -1, fastIoFailTmo: 86400 });
  t.like(validateClientOptions({ ctrlLossTmo: 0 }), { ctrlLossTmo: 0, fastIoFailTmo: -1 });
  t.like(validateClientOptions({ ctrlLossTmo: 30, fastIoFailTmo: 30 }), { ctrlLossTmo: 30, fastIoFailTmo: 30 });
  const bad: Array<[Parameters<typeof validateClientOptions>[0], RegExp]> = [
    [{ reconnectDelay: 2, reconnectDelayMs: 500 }, /^--reconnect-delay and --reconnect-delay-ms /],
    [{ reconnectDelay: 0 }, /^--reconnect-delay: 0 /],
    [{ reconnectDelay: 3601 }, /^--reconnect-delay: 3601 /],
    [{ ioTimeout: -1 }, /^--io-timeout: -1 /],
    [{ ioTimeout: 3601 }, /^--io-timeout: 3601 /],
    [{ ioTimeout: 2.5 }, /^--io-timeout: 2\.5 /],
    [{ adminTimeout: 0 }, /^--admin-timeout: 0 is not a number of seconds from 1 to 3600/],
    [{ adminTimeout: 3601 }, /^--admin-timeout: 3601 /],
    [{ adminTimeout: 1.5 }, /^--admin-timeout: 1\.5 /],
    [{ ctrlLossTmo: -2 }, /^--ctrl-loss-tmo: -2 /],
    [{ ctrlLossTmo: 86401 }, /^--ctrl-loss-tmo: 86401 /],
    [{ fastIoFailTmo: 1.5 }, /^--fast-io-fail-tmo: 1\.5 /],
    [{ ctrlLossTmo: 10, fastIoFailTmo: 20 }, /^--fast-io-fail-tmo: 20 s is longer than ctrl_loss_tmo \(10 s\).*--ctrl-loss-tmo/],
  ];
  for (const [opts, message] of bad) {
    const err = t.throws(() => validateClientOptions(opts), { instanceOf: IbnbdError }, JSON.stringify(opts));
    t.is(err!.code, 'EINVAL');
    t.regex(err!.message, message);
  }
});

test('ibnbd client: bad reconnect policy flags are EINVAL of the CLI, and --help names the defaults', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-cli-'));
  dirs.push(dir);
  const args = ['client', '--control', join(dir, 'c.sock'), '--run-dir', join(dir, 'run')];
  const cases: Array<[string[], RegExp]> = [
    [['--reconnect-delay', '2', '--reconnect-delay-ms', '500'], /^ibnbd: EINVAL: --reconnect-delay and --reconnect-delay-ms /],
    [['--reconnect-delay', 'soon'], /^ibnbd: EINVAL: --reconnect-delay: 'soon' /],
    [['--io-timeout', '-1'], /^ibnbd: EINVAL: --io-timeout: '-1' /],
    [['--io-timeout', '3601'], /^ibnbd: EINVAL: --io-timeout: 3601 /],
    [['--admin-timeout', '0'], /^ibnbd: EINVAL: --admin-timeout: 0 is not a number of seconds from 1 to 3600/],
    [['--admin-timeout', 'soon'], /^ibnbd: EINVAL: --admin-timeout: 'soon' /],
    [['--ctrl-loss-tmo', '-2'], /^ibnbd: EINVAL: --ctrl-loss-tmo: '-2' /],
    [['--ctrl-loss-tmo', '90000'], /^ibnbd: EINVAL: --ctrl-loss-tmo: 90000 /],
    [['--fast-io-fail-tmo', '700'], /^ibnbd: EINVAL: --fast-io-fail-tmo: 700 s is longer than ctrl_loss_tmo \(600 s\)/],
  ];
  for (const [extra, stderr] of cases) {
    const r = await ibnbd([...args, ...extra]);
    t.is(r.code, 22, extra.join(' '));
    t.regex(r.stderr, stderr);
  }
  t.false(existsSync(join(dir, 'c.sock')), 'no daemon was started');
  const help = await ibnbd(['client', '--help']);
  t.is(help.code, 0);
  t.regex(help.stdout, /--reconnect-delay <s>[\s\S]*default:\s+2\)/);
  t.regex(help.stdout, /--reconnect-delay-ms <ms>/);
  t.regex(help.stdout, /--io-timeout <s>[\s\S]*default:\s+30\)/);
  t.regex(help.stdout, /--admin-timeout <s>[\s\S]*ETIMEDOUT[\s\S]*default:\s+30\)/);
  t.regex(help.stdout, /--ctrl-loss-tmo <s>[\s\S]*default:\s+600\)/);
  t.regex(help.stdout, /--fast-io-fail-tmo <s>[\s\S]*default:\s+-1\)/);
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

test('--version: the project, the Node it runs on and the native libraries the addon was built against', async (t) => {
  const { version } = JSON.parse((await import('node:fs')).readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V']) {
    const r = await ibnbd([flag]);
    t.is(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    t.is(lines[0], `ibnbd-vhost ${version}`);
    t.is(lines[1], `node ${process.version} (N-API ${process.versions.napi})`);
    t.regex(lines[2]!, /^libvhost-user qemu \d/);
    t.regex(lines[3]!, /^libibverbs \d+\.\d+.*, librdmacm \d+\.\d+.*, liburing \d+\.\d+/);
  }
});
