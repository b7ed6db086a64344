// `ibnbd server` option validation: defaults, accepted forms, and a precise EINVAL per mistake.
import test from 'ava';
import { parseCidr, parseListen, validateServerOptions } from '../../src/server/options.js';

function err(fn: () => unknown): { code?: string; message?: string } {
  try {
    fn();
  } catch (e) {
    return e as { code?: string; message?: string };
  }
  return {};
}

test('defaults: port 1234 on every address, control socket under /run/ibnbd, no authentication; the search path has none', (t) => {
  const o = validateServerOptions({ devSearchPath: '/srv/ibnbd' });
  t.deepEqual(o.listen, [
    { host: '0.0.0.0', port: 1234 },
    { host: '::', port: 1234 },
  ]);
  t.is(o.devSearchPath, '/srv/ibnbd');
  t.is(o.authKeys, null);
  const none = err(() => validateServerOptions({}));
  t.is(none.code, 'EINVAL');
  t.regex(none.message ?? '', /^--dev-search-path or --export is required/);
  t.is(validateServerOptions({ devSearchPath: '/' }).devSearchPath, '/', 'an explicit / is allowed');
  t.is(o.control, '/run/ibnbd/server.sock');
  t.is(o.queueDepth, 512);
  t.is(o.maxIoSize, 131072);
  t.is(o.ioThreads, 1);
});

test('listen forms', (t) => {
  t.deepEqual(parseListen('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
  t.deepEqual(parseListen('127.0.0.1'), { host: '127.0.0.1', port: 1234 });
  t.deepEqual(parseListen('ip:10.0.0.1:99'), { host: '10.0.0.1', port: 99 });
  t.deepEqual(parseListen('[::1]:5000'), { host: '::1', port: 5000 });
  t.deepEqual(parseListen('::1'), { host: '::1', port: 1234 });
  for (const bad of ['host:1', '127.0.0.1:65536', '127.0.0.1:-1', '127.0.0.1:x', '', '[::1]:', '1.2.3:4']) {
    const e = err(() => parseListen(bad));
    t.is(e.code, 'EINVAL', bad);
    t.true(e.message!.startsWith('--listen'), bad);
  }
});

test('each bad option is named in its EINVAL', (t) => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ devSearchPath: 'relative' }, '--dev-search-path'],
    [{ devSearchPath: '/srv/../etc' }, '--dev-search-path'],
    [{ devSearchPath: '/srv\0' }, '--dev-search-path'],
    [{ control: '/' + 'x'.repeat(200) }, '--control'],
    [{ queueDepth: '0' }, '--queue-depth'],
    [{ queueDepth: '70000' }, '--queue-depth'],
    [{ queueDepth: '12abc' }, '--queue-depth'],
    [{ maxIoSize: '1000' }, '--max-io-size'],
    [{ maxIoSize: '5000' }, '--max-io-size'],
    [{ ioThreads: '0' }, '--io-threads'],
    [{ ioThreads: '1.5' }, '--io-threads'],
  ];
  for (const [raw, opt] of cases) {
    const e = err(() => validateServerOptions({ devSearchPath: '/srv', ...raw }));
    t.is(e.code, 'EINVAL', JSON.stringify(raw));
    t.true(e.message?.startsWith(opt), `${JSON.stringify(raw)}: ${e.message}`);
  }
  const ok = validateServerOptions({ devSearchPath: '/run/ibnbd-devs/%SESSNAME%', queueDepth: '64', maxIoSize: '65536', ioThreads: '2' });
  t.is(ok.devSearchPath, '/run/ibnbd-devs/%SESSNAME%');
  t.is(ok.queueDepth, 64);
});

test('--allow: IPv4 and IPv6 networks or hosts, a precise EINVAL for anything else', (t) => {
  t.is(parseCidr('10.0.0.0/8'), '10.0.0.0/8');
  t.is(parseCidr('192.168.1.7'), '192.168.1.7/32');
  t.is(parseCidr('fd00::/8'), 'fd00::/8');
  t.is(parseCidr('::1'), '::1/128');
  for (const bad of ['10.0.0.0/33', 'fd00::/129', 'host/8', '10.0.0.0/', '10.0.0.0/8/1', '']) {
    const e = err(() => parseCidr(bad));
    t.is(e.code, 'EINVAL', bad);
    t.true(e.message!.startsWith('--allow'), bad);
  }
  t.deepEqual(validateServerOptions({ devSearchPath: '/srv', allow: ['127.0.0.1', '::1'] }).allow, ['127.0.0.1/32', '::1/128']);
});
