// The native log facility (native/common/log.h): lines from a native thread reach a registered
// sink with their level and fields, a burst past the ring is dropped and counted (never blocking
// the thread that logs), the threshold skips lower levels, and without a sink the lines go to
// stderr as text. A process that exits with a sink registered neither hangs nor crashes.
import test from 'ava';
import { execFile } from 'node:child_process';
import { loadNative, nativeAddonPath } from '../../src/backend/native.js';
import { testAddonPath, loadTestAddon } from '../../harness/test-addon.js';
import type { NativeLogLine } from '../../src/backend/native-log.js';

interface LogExports {
  setLogSink(fn: ((line: NativeLogLine) => void) | null): void;
  setLogLevel(level: number): void;
}
const addon = () => loadNative<LogExports>();
const logBurst = (n: number, level: number) => loadTestAddon<{ logBurst(n: number, level: number): void }>().logBurst(n, level);

/** The ring's size (native/common/log.cc, kRingSize). */
const RING = 256;

async function until(cond: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return cond();
}

/** A child node that loads both addons and runs `body`; its exit code and stderr. */
function child(body: string): Promise<{ code: number | null; stderr: string }> {
  const script = `const n = require(${JSON.stringify(nativeAddonPath())}); const t = require(${JSON.stringify(testAddonPath())}); ${body}`;
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stderr });
    });
  });
}

test.serial('a sink gets each line with its level and fields; a burst past the ring is counted in the next line', async (t) => {
  const lines: NativeLogLine[] = [];
  addon().setLogLevel(30);
  addon().setLogSink((l) => lines.push(l));
  t.teardown(() => addon().setLogSink(null));

  logBurst(3, 40);
  t.true(await until(() => lines.length === 3), `3 lines delivered (${lines.length})`);
  t.deepEqual(lines[0], {
    level: 40,
    component: 'test',
    msg: 'burst line 0 of 3, with "quotes"',
    session: 's1',
    device: 'ibnbd7',
    path: 'ip:127.0.0.1:1',
  });

  // the JS thread waits in logBurst: nothing drains the ring while 300 lines are logged
  lines.length = 0;
  logBurst(RING + 44, 30);
  t.true(await until(() => lines.length === RING), `the ring's ${RING} lines delivered (${lines.length})`);
  t.false(lines.some((l) => l.dropped !== undefined), 'no line in the ring dropped anything before it');
  t.is(lines[RING - 1]!.msg, `burst line ${RING - 1} of ${RING + 44}, with "quotes"`, 'the first lines are kept, the last dropped');
  logBurst(1, 50);
  t.true(await until(() => lines.length === RING + 1));
  t.is(lines[RING]!.dropped, 44, 'the next line says how many were dropped');
  t.is(lines[RING]!.level, 50);
});

test.serial('the threshold: lines below the level are not delivered', async (t) => {
  const lines: NativeLogLine[] = [];
  addon().setLogSink((l) => lines.push(l));
  t.teardown(() => {
    addon().setLogSink(null);
    addon().setLogLevel(30);
  });
  addon().setLogLevel(40);
  logBurst(5, 30);
  logBurst(1, 40);
  t.true(await until(() => lines.length >= 1));
  await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(lines.map((l) => l.level), [40]);
  addon().setLogLevel(20);
  logBurst(1, 20);
  t.true(await until(() => lines.length === 2), 'debug once the level is debug');
});

test('without a sink the lines go to stderr as text, the fields named', async (t) => {
  const r = await child('t.logBurst(2, 40);');
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /^ibnbd warn test session=s1 device=ibnbd7 path=ip:127\.0\.0\.1:1: burst line 0 of 2, with "quotes"$/m);
  t.is(r.stderr.trim().split('\n').length, 2);
});

test('a sink does not keep a process alive; unregistering it at exit hands it what is still queued', async (t) => {
  // as the daemons do (src/backend/native-log.ts): the sink goes in the 'exit' handler
  const r = await child(
    'const got = []; n.setLogSink((l) => got.push(l.msg)); t.logBurst(3, 30);' +
      'process.on("exit", () => { n.setLogSink(null); process.stderr.write(`got ${got.length}\\n`); });',
  );
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, 'got 3\n', 'every line reached the sink, none went to stderr as text');
  // left registered, with lines queued: the process still ends on its own, cleanly, and the lines
  // JS could not take any more are written as text
  const left = await child('n.setLogSink(() => {}); t.logBurst(5, 30);');
  t.is(left.code, 0, left.stderr);
  t.is((left.stderr.match(/^ibnbd info test .*burst line \d of 5/gm) ?? []).length, 5, left.stderr);
  const exited = await child('n.setLogSink(() => {}); t.logBurst(5, 30); process.exit(0);');
  t.is(exited.code, 0, exited.stderr);
});
