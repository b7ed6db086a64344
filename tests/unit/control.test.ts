// The control socket over real unix sockets in a temp dir: framing, hostile input, errors carried
// to the client, socket file life cycle, concurrency.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { IbnbdError } from '../../src/errors.js';
import { ControlServer, controlRequest, MAX_LINE_BYTES, type ControlHandler } from '../../src/control/index.js';

const dirs: string[] = [];
const servers: ControlServer[] = [];
test.after.always(async () => {
  for (const s of servers) await s.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempSocketPath(name = 'ctl.sock'): string {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-ctl-'));
  dirs.push(dir);
  return join(dir, name);
}

const echoHandlers: Record<string, ControlHandler> = {
  echo: async (args) => ({ args }),
  map: async (args) => ({ mapped: args.map }),
  slow: async (args) => {
    await sleep(Number(args.ms ?? 20));
    return { id: args.id };
  },
};

async function startServer(handlers = echoHandlers, path = tempSocketPath()): Promise<ControlServer> {
  const server = new ControlServer(path, handlers);
  await server.listen();
  servers.push(server);
  return server;
}

/**
 * Raw client: sends the pieces (with a pause between them so they are separate reads), collects
 * reply lines until `expect` lines arrived or the daemon closed; reports whether it closed.
 */
async function rawExchange(
  path: string,
  pieces: Array<string | Buffer>,
  expect: number,
  { endAfterWrite = false, timeoutMs = 5000 } = {},
): Promise<{ replies: any[]; closed: boolean }> {
  const sock = net.createConnection(path);
  sock.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  let text = '';
  let closed = false;
  const done = new Promise<void>((resolve) => {
    sock.on('data', (d) => {
      text += d.toString('utf8');
      if (text.split('\n').length - 1 >= expect) resolve();
    });
    sock.on('close', () => {
      closed = true;
      resolve();
    });
  });
  for (const p of pieces) {
    sock.write(p);
    await sleep(5);
  }
  if (endAfterWrite) sock.end();
  const timer = sleep(timeoutMs).then(() => 'timeout');
  const r = await Promise.race([done, timer]);
  if (expect >= 0 && r === 'timeout') {
    sock.destroy();
    throw new Error(`timeout: got ${JSON.stringify(text)}`);
  }
  // a closing daemon: wait briefly to observe the close
  await Promise.race([new Promise((res) => sock.once('close', res)), sleep(100)]);
  sock.destroy();
  const replies = text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
  return { replies, closed };
}

test('a request split across many writes, even inside a UTF-8 character', async (t) => {
  const server = await startServer();
  const line = Buffer.from('{"cmd":"echo","name":"dévice ✓"}\n');
  const pieces = Array.from(line, (_, i) => line.subarray(i, i + 1));
  // one byte per write: every boundary is crossed, including the middle of é and ✓
  const { replies } = await rawExchange(server.path, pieces, 1);
  t.deepEqual(replies, [{ ok: true, args: { name: 'dévice ✓' } }]);
});

test('several requests in one write are answered in order, one line each', async (t) => {
  const server = await startServer();
  const batch =
    '{"cmd":"slow","id":1,"ms":30}\n{"cmd":"slow","id":2,"ms":1}\r\n\n{"cmd":"echo","x":3}\n{"cmd":"slow","id":4,"ms":10}\n';
  const { replies, closed } = await rawExchange(server.path, [batch], 4);
  t.deepEqual(replies, [
    { ok: true, id: 1 },
    { ok: true, id: 2 },
    { ok: true, args: { x: 3 } },
    { ok: true, id: 4 },
  ]);
  t.false(closed, 'the connection stays open for more requests');
});

test('the seed\'s map string as a bare line is a map command', async (t) => {
  const server = await startServer();
  const { replies } = await rawExchange(server.path, ['sessname=blya path=ip:10.50.100.66 device_path=/dev/ram0\n'], 1);
  t.deepEqual(replies, [{ ok: true, mapped: 'sessname=blya path=ip:10.50.100.66 device_path=/dev/ram0' }]);
});

test('a request and a half-closed connection still gets its reply', async (t) => {
  const server = await startServer();
  const { replies, closed } = await rawExchange(server.path, ['{"cmd":"echo","a":1}\n'], 1, { endAfterWrite: true });
  t.deepEqual(replies, [{ ok: true, args: { a: 1 } }]);
  t.true(closed, 'the daemon ends its side after the last reply');
});

test('an oversize line: EINVAL, connection closed, daemon unharmed', async (t) => {
  const server = await startServer();
  const big = Buffer.alloc(MAX_LINE_BYTES + 10, 'a'.charCodeAt(0));
  // a valid request first: it is still answered before the oversize one
  const { replies, closed } = await rawExchange(server.path, ['{"cmd":"echo","n":1}\n', big, '\n{"cmd":"echo"}\n'], 2);
  t.is(replies.length, 2);
  t.deepEqual(replies[0], { ok: true, args: { n: 1 } });
  t.is(replies[1].ok, false);
  t.is(replies[1].error.code, 'EINVAL');
  t.regex(replies[1].error.message, /longer than 65536 bytes/);
  t.true(closed);
  // a line of exactly the limit is fine
  const fill = 'b'.repeat(MAX_LINE_BYTES - '{"cmd":"echo","p":""}'.length);
  const exact = `{"cmd":"echo","p":"${fill}"}`;
  t.is(Buffer.byteLength(exact), MAX_LINE_BYTES);
  t.deepEqual(await controlRequest(server.path, JSON.parse(exact)), { args: { p: fill } });
});

test('bad JSON, non-objects and a missing cmd: EINVAL, and the connection goes on', async (t) => {
  const server = await startServer();
  const { replies, closed } = await rawExchange(
    server.path,
    ['{"cmd":"echo"\n', '[1,2]\n', 'null\n', '42\n', 'hello world\n', '{"x":1}\n', '{"cmd":7}\n', '{"cmd":"echo","ok":"yes"}\n'],
    8,
  );
  const codes = replies.slice(0, 7).map((r) => r.error?.code);
  t.deepEqual(codes, Array(7).fill('EINVAL'));
  t.regex(replies[0].error.message, /^request: bad JSON/);
  t.regex(replies[1].error.message, /not a JSON object/);
  t.regex(replies[5].error.message, /^cmd: missing/);
  t.regex(replies[6].error.message, /^cmd: /);
  // an "ok" among the arguments is just an argument; the envelope's ok is the daemon's
  t.deepEqual(replies[7], { ok: true, args: { ok: 'yes' } });
  t.false(closed);
});

test('an unknown command: EOPNOTSUPP naming it and the known ones', async (t) => {
  const server = await startServer();
  const err = await t.throwsAsync(controlRequest(server.path, { cmd: 'frobnicate' }), { instanceOf: IbnbdError });
  t.is(err!.code, 'EOPNOTSUPP');
  t.regex(err!.message, /unknown command 'frobnicate'.*echo, map, slow/);
  // inherited object properties are no commands
  const err2 = await t.throwsAsync(controlRequest(server.path, { cmd: 'constructor' }), { instanceOf: IbnbdError });
  t.is(err2!.code, 'EOPNOTSUPP');
});

test('handler failures become error replies with their errno; the daemon keeps serving', async (t) => {
  const unexpected: string[] = [];
  const path = tempSocketPath();
  const server = new ControlServer(
    path,
    {
      exists: async () => {
        throw new IbnbdError('EEXIST', 'device sda is already mapped');
      },
      fsfail: async () => {
        readFileSync(join(path, 'nope', 'nothing'));
        return {};
      },
      bug: () => {
        throw new TypeError('x is undefined');
      },
      bigint: async () => ({ n: 1n }),
      fine: async () => ({ still: 'alive' }),
    },
    { onUnexpectedError: (cmd) => unexpected.push(cmd) },
  );
  await server.listen();
  servers.push(server);
  const codeOf = async (cmd: string) =>
    (await t.throwsAsync(controlRequest(path, { cmd }), { instanceOf: IbnbdError }))!;
  const e1 = await codeOf('exists');
  t.is(e1.code, 'EEXIST');
  t.is(e1.message, 'device sda is already mapped');
  t.is((await codeOf('fsfail')).code, 'ENOTDIR');
  const e3 = await codeOf('bug');
  t.is(e3.code, 'EIO');
  t.regex(e3.message, /x is undefined/);
  t.is((await codeOf('bigint')).code, 'EIO');
  t.deepEqual(unexpected, ['bug', 'bigint']);
  t.deepEqual(await controlRequest(path, { cmd: 'fine' }), { still: 'alive' });
});

test('socket file: parent dir created, mode 0600, removed on close', async (t) => {
  const path = resolve(tempSocketPath('unused'), '..', 'run', 'ibnbd', 'd.sock');
  const oldMask = process.umask(0o000); // a permissive umask must not leak into the socket's mode
  try {
    const server = await startServer(echoHandlers, path);
    const st = statSync(path);
    t.true(st.isSocket());
    t.is(st.mode & 0o777, 0o600);
    t.is(process.umask(0o000), 0o000, 'umask restored after listen');
    await server.close();
    t.false(existsSync(path));
  } finally {
    process.umask(oldMask);
  }
});

test('a stale socket (its daemon was killed) is replaced', async (t) => {
  const path = tempSocketPath();
  // a real stale socket: a process binds it and dies by SIGKILL, leaving the file
  const r = spawnSync(
    process.execPath,
    ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`],
    { timeout: 10_000 },
  );
  t.is(r.signal, 'SIGKILL');
  t.true(statSync(path).isSocket());
  const refused = await t.throwsAsync(controlRequest(path, { cmd: 'echo' }), { instanceOf: IbnbdError });
  t.is(refused!.code, 'ECONNREFUSED');
  t.is(refused!.message, `no daemon listening on ${path}`);
  await startServer(echoHandlers, path);
  t.deepEqual(await controlRequest(path, { cmd: 'echo', v: 1 }), { args: { v: 1 } });
});

test('a live daemon\'s socket is refused with EADDRINUSE and left working', async (t) => {
  const first = await startServer();
  const second = new ControlServer(first.path, echoHandlers);
  const err = await t.throwsAsync(second.listen(), { instanceOf: IbnbdError });
  t.is(err!.code, 'EADDRINUSE');
  t.regex(err!.message, /already listening/);
  t.deepEqual(await controlRequest(first.path, { cmd: 'echo' }), { args: {} });
  await second.close(); // never listened: a no-op that must not remove the first one's socket
  t.true(existsSync(first.path));
});

test('a file that is not a socket is left alone: EEXIST', async (t) => {
  const path = tempSocketPath();
  writeFileSync(path, 'precious');
  const err = await t.throwsAsync(new ControlServer(path, echoHandlers).listen(), { instanceOf: IbnbdError });
  t.is(err!.code, 'EEXIST');
  t.is(readFileSync(path, 'utf8'), 'precious');
});

test('concurrent clients each get their own replies', async (t) => {
  let inFlight = 0;
  let maxInFlight = 0;
  const server = await startServer({
    work: async (args) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await sleep(10 + (Number(args.id) % 5) * 5);
      inFlight--;
      return { id: args.id };
    },
  });
  const ids = Array.from({ length: 40 }, (_, i) => i);
  const results = await Promise.all(ids.map((id) => controlRequest(server.path, { cmd: 'work', id })));
  t.deepEqual(results, ids.map((id) => ({ id })));
  t.true(maxInFlight > 1, 'connections are served in parallel');
  t.true(server.connectionsAccepted >= 40);
});

test('controlRequest: no daemon, and a daemon that never answers', async (t) => {
  const missing = tempSocketPath();
  const err = await t.throwsAsync(controlRequest(missing, { cmd: 'list' }), { instanceOf: IbnbdError });
  t.is(err!.code, 'ENOENT');
  t.is(err!.message, `no daemon listening on ${missing}`);

  const mute = net.createServer(() => {});
  const mutePath = tempSocketPath();
  await new Promise<void>((r) => mute.listen(mutePath, r));
  try {
    const started = Date.now();
    const e2 = await t.throwsAsync(controlRequest(mutePath, { cmd: 'list' }, { timeoutMs: 200 }), { instanceOf: IbnbdError });
    t.is(e2!.code, 'ETIMEDOUT');
    t.true(Date.now() - started < 2000);
  } finally {
    mute.close();
  }

  // a peer that hangs up without replying, and one that answers garbage
  const rude = net.createServer((s) => s.end());
  const rudePath = tempSocketPath();
  await new Promise<void>((r) => rude.listen(rudePath, r));
  const garbage = net.createServer((s) => s.end('this is not json\n'));
  const garbagePath = tempSocketPath();
  await new Promise<void>((r) => garbage.listen(garbagePath, r));
  try {
    t.is((await t.throwsAsync(controlRequest(rudePath, { cmd: 'list' }), { instanceOf: IbnbdError }))!.code, 'EPROTO');
    t.is((await t.throwsAsync(controlRequest(garbagePath, { cmd: 'list' }), { instanceOf: IbnbdError }))!.code, 'EPROTO');
  } finally {
    rude.close();
    garbage.close();
  }
});
