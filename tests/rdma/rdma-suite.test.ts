// The shared server/client suite (shared-suite.ts) over RDMA: the same test files that run over
// TCP on this host run unchanged in one soft-RoCE guest (rdma_rxe on eth0 = 10.0.2.15), told by
// IBNBD_TEST_TRANSPORT=rdma / IBNBD_TEST_HOST (transport-under-test.ts) to listen and dial there.
// The guest must pass exactly the tests the files declare on this host, over TCP (same titles,
// same count; declared-tests.ts lists them without running them), with no failure, skip or todo.
// docs/rdma-transport.md, "The shared suite over RDMA".
import test from 'ava';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/backend/native.js';
import { guestSanitizerEnv } from '../../harness/qemu/sanitizer-env.js';
import { runGuest } from '../../harness/qemu/harness.js';
import { GUEST_IP, RXE_MODULES } from '../../harness/qemu/rnbd-kernel.js';
import { declaredTests } from '../support/declared-tests.js';
import { SHARED_SUITE, sharedSuiteFiles } from '../support/shared-suite.js';
import { parseTap, parseTapLine, passedTests, type TapTest } from '../support/tap-results.js';

const sanitizerEnv = guestSanitizerEnv();
// ava's CLI as its package names it (the file moved between majors)
const AVA_CLI = join('node_modules', 'ava', JSON.parse(readFileSync(join(projectRoot, 'node_modules', 'ava', 'package.json'), 'utf8')).bin.ava as string);
// one file at a time, one test at a time: the TCG guest has 2 vCPUs, and a server, a client
// daemon and libblkio already share them within one test
const AVA_ARGS = ['--tap', '--serial', '--concurrency', '1'];
/** node under TCG runs 10–17× slower: the tests' hang guards grow by this much (not asserted timings) */
const GUEST_TIME_SCALE = 15;

/** The tests the shared files declare as the host's TCP run sees them (none of them run here). */
function declaredOverTcp(): Promise<string[]> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['IBNBD_TEST_TRANSPORT', 'IBNBD_TEST_HOST', 'IBNBD_TEST_TIME_SCALE']) delete env[k];
  return declaredTests(sharedSuiteFiles(), projectRoot, env);
}

function guestScript(): string {
  const env = `env IBNBD_TEST_TRANSPORT=rdma IBNBD_TEST_HOST=${GUEST_IP} IBNBD_TEST_TIME_SCALE=${GUEST_TIME_SCALE} FORCE_COLOR=0`;
  // The guest's /tmp is tmpfs, which on this 6.1 kernel has no O_DIRECT and no zero-range: the
  // tests' temp files need a real file system, as on the host, so TMPDIR points at an ext4 mount
  // (a loop device over a file in /run). Not mounted over /tmp: a checkout under /tmp (a fresh
  // clone in CI) is shared into the guest there. ava keeps its cache under the project root,
  // read-only here: the host created the directory, so ava finds it and its cache write fails quietly.
  // ava's --timeout is the longest wait between two results: in CI, next to other guests, the
  // first test of a file (ava's worker start-up included) took 196 s in the guest.
  return `set -u
rdma link add rxe0 type rxe netdev eth0 || exit 20
mkdir -p /run/scratch && truncate -s 1200M /run/scratch.img && mkfs.ext4 -q -F /run/scratch.img && mount -o loop /run/scratch.img /run/scratch && chmod 1777 /run/scratch || exit 21
cd ${projectRoot} || exit 22
echo SUITE-START
${sanitizerEnv}${env} TMPDIR=/run/scratch ${process.execPath} ${AVA_CLI} ${AVA_ARGS.join(' ')} --timeout 10m ${sharedSuiteFiles().join(' ')}
echo "SUITE-EXIT $?"`;
}

/** Each result with the time since the previous result (or ava's start): the test's own time, plus
 * its file's worker start-up for a file's first test. */
function resultTimes(lines: Array<{ at: number; line: string }>): Array<{ test: TapTest; ms: number }> {
  let prev = lines.find((l) => l.line.startsWith('SUITE-START'))?.at ?? lines[0]?.at ?? 0;
  return lines.flatMap(({ at, line }) => {
    const test = parseTapLine(line);
    if (!test) return [];
    const ms = at - prev;
    prev = at;
    return [{ test, ms }];
  });
}

function logTimings(t: import('ava').ExecutionContext, lines: Array<{ at: number; line: string }>): void {
  const times = resultTimes(lines);
  const perFile = new Map<string, number>();
  for (const { test, ms } of times) perFile.set(test.file, (perFile.get(test.file) ?? 0) + ms);
  for (const [file, ms] of perFile) t.log(`${file}: ${(ms / 1000).toFixed(1)} s in the guest`);
  for (const { test, ms } of times.filter((x) => x.ms >= 30_000)) t.log(`  slow: ${test.file} › ${test.title}: ${(ms / 1000).toFixed(1)} s`);
}

test.serial('the shared server/client suite passes over RDMA in a soft-RoCE guest: every test the files declare over TCP, nothing skipped', async (t) => {
  t.timeout(1_920_000);
  const expected = await declaredOverTcp();
  mkdirSync(join(projectRoot, 'node_modules', '.cache', 'ava'), { recursive: true });
  const followLog = process.env.IBNBD_GUEST_LOG;
  const lines: Array<{ at: number; line: string }> = [];
  const r = await runGuest({
    mode: 'hostroot',
    netdev: true,
    cpus: 2,
    memMiB: 3072,
    modules: [...RXE_MODULES, 'loop', 'crc32c_generic', 'ext4'],
    timeoutMs: 1_800_000, // 30 min: 18.7 min in CI on 2026-12-06 morning, over 24 in the evening's runs beside rdma-daemons; bounded well under CI's 90 minutes
    onSerialLine: (line) => {
      lines.push({ at: Date.now(), line });
      if (followLog) appendFileSync(followLog, `${line}\n`); // IBNBD_GUEST_LOG=/tmp/x.log to follow a run
    },
    script: guestScript(),
  });
  logTimings(t, lines);
  t.log(`guest: boot ${((r.bootMs ?? 0) / 1000).toFixed(1)} s, whole run ${(r.durationMs / 1000).toFixed(1)} s`);
  // whether the files pass over TCP is the main run's job (they run there, on this host)
  t.true(expected.length >= SHARED_SUITE.length, `the shared files declare ${expected.length} tests`);
  const got = parseTap(r.output);
  const failed = got.filter((x) => !x.ok || x.directive !== '');
  if (failed.length > 0 || r.exitCode !== 0) t.log(r.output.slice(-8000));
  t.is(r.exitCode, 0, 'guest script');
  t.regex(r.output, /^SUITE-EXIT 0$/m, 'ava exited 0 in the guest');
  t.deepEqual(failed.map((x) => `${x.file} › ${x.title} ${x.directive}`), [], 'no failure, skip or todo over RDMA');
  const passed = passedTests(got).map((x) => `${x.file} › ${x.title}`);
  t.is(passed.length, expected.length, 'as many tests passed over RDMA as the files declare');
  t.deepEqual([...passed].sort(), [...expected].sort(), 'the same tests');
  t.regex(r.output, /^# fail 0$/m);
  t.notRegex(r.output, /^# skip [1-9]/m);
});
