// --poll-us without daemons: both daemons' option checks and config keys, the transport face's own
// check (before the addon is asked), the server's text rendering of io_threads, and the bench's
// target p (ours with --poll-us), which runs only when asked for.
import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../harness/fixtures.js';
import { validateClientOptions } from '../../src/client/daemon.js';
import { readClientConfig } from '../../src/client/config.js';
import { readServerConfig } from '../../src/server/config.js';
import { validateServerOptions } from '../../src/server/options.js';
import { renderSessions } from '../../src/server/introspection.js';
import { POLL_US_MAX, setPollUs } from '../../src/backend/transport.js';
import { parseOptions } from '../../bench/options.js';

test('client: --poll-us is 0 (off) unless given, 0..1000 µs, else EINVAL naming it', (t) => {
  t.is(POLL_US_MAX, 1000);
  t.is(validateClientOptions({}).pollUs, 0);
  t.is(validateClientOptions({ pollUs: 50 }).pollUs, 50);
  t.is(validateClientOptions({ pollUs: 1000 }).pollUs, 1000);
  for (const bad of [1001, -1, 2.5]) {
    t.throws(() => validateClientOptions({ pollUs: bad }), {
      code: 'EINVAL',
      message: `--poll-us: ${bad} is not an integer from 0 (off) to 1000 microseconds`,
    });
  }
});

test('server: --poll-us is 0 (off) unless given, 0..1000 µs as typed or from the file, else EINVAL naming it', (t) => {
  t.is(validateServerOptions({ devSearchPath: '/' }).pollUs, 0);
  t.is(validateServerOptions({ devSearchPath: '/', pollUs: '50' }).pollUs, 50);
  t.is(validateServerOptions({ devSearchPath: '/', pollUs: 0 }).pollUs, 0);
  for (const bad of ['2000', '-1', 'fast', 1001]) {
    t.throws(() => validateServerOptions({ devSearchPath: '/', pollUs: bad }), {
      code: 'EINVAL',
      message: `--poll-us ${JSON.stringify(bad)}: must be an integer in 0..1000`,
    });
  }
});

test('poll-us is a key of both config files, held to the same checks', (t) => {
  const dir = tempDir(t, 'poll-cfg');
  const write = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  t.is(readClientConfig(write('c.toml', 'poll-us = 20\n'))!.values.pollUs, 20);
  t.is(readServerConfig(write('s.toml', 'poll-us = 20\n'))!.values.pollUs, 20);
  const c = write('c2.toml', 'poll-us = 5000\n');
  t.throws(() => readClientConfig(c), { code: 'EINVAL', message: new RegExp(`${c}:1: key 'poll-us': --poll-us: 5000 is not an integer`) });
  const s = write('s2.toml', 'poll-us = 5000\n');
  t.throws(() => readServerConfig(s), { code: 'EINVAL', message: new RegExp(`${s}:1: key 'poll-us': --poll-us 5000: must be an integer in 0\\.\\.1000`) });
});

test('setPollUs checks its argument before the addon sees it', (t) => {
  for (const bad of [-1, 1001, 0.5, Number.NaN]) {
    t.throws(() => setPollUs(bad), { code: 'EINVAL', message: /^--poll-us: .* is not an integer from 0 \(off\) to 1000 microseconds$/ });
  }
});

test('server sessions in text: io_threads lines after the sessions, none when the answer has none', (t) => {
  t.is(renderSessions([], { poll_us: 50, polls: 7, poll_hits: 3 }), 'io_threads/poll_us: 50\nio_threads/polls: 7\nio_threads/poll_hits: 3');
  t.is(renderSessions([]), '');
});

test('bench: p (ours with --poll-us, 50 unless --poll-us says) runs only when asked for', (t) => {
  t.false(parseOptions([]).targets.includes('p'));
  const o = parseOptions(['--targets', 'a,p', '--workloads', 'randread-4k-qd1']);
  t.deepEqual(o.targets, ['a', 'p']);
  t.is(o.pollUs, 50);
  t.is(parseOptions(['--targets', 'p', '--poll-us', '20']).pollUs, 20);
  t.throws(() => parseOptions(['--poll-us', '2000']), { message: /--poll-us: at most 1000/ });
  t.throws(() => parseOptions(['--poll-us', '0']), { message: /--poll-us: expected an integer >= 1/ });
});
