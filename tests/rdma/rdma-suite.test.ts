// The shared server/client suite (shared-suite.ts) over RDMA: the same test files that run over
// TCP on this host run unchanged in one soft-RoCE guest (rdma_rxe on eth0 = 10.0.2.15), told by
// IBNBD_TEST_TRANSPORT=rdma / IBNBD_TEST_HOST (transport-under-test.ts) to listen and dial there.
// The host runs the files over TCP first: the guest must pass exactly the tests that run declares
// (same titles, same count), with no failure, skip or todo. docs/rdma-transport.md, "The shared
// suite over RDMA".
import test from 'ava';
import { execFile } from 'node:child_process';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/backend/native.js';
import { guestSanitizerEnv } from '../../harness/qemu/sanitizer-env.js';
import { runGuest } from '../../harness/qemu/harness.js';
import { GUEST_IP, RXE_MODULES } from '../../harness/qemu/rnbd-kernel.js';
import { sharedSuiteFiles } from '../support/shared-suite.js';
import { parseTap, parseTapLine, passedTests, type TapTest } from '../support/tap-results.js';

const sanitizerEnv = guestSanitizerEnv();
// ava's CLI as its package names it (the file moved between majors)
const AVA_CLI = join('node_modules', 'ava', JSON.parse(readFileSync(join(projectRoot, 'node_modules', 'ava', 'package.json'), 'utf8')).bin.ava as string);
// one file at a time, one test at a time: the TCG guest has 2 vCPUs, and a server, a client
// daemon and libblkio already share them within one test
const AVA_ARGS = ['--tap', '--serial', '--concurrency', '1'];
/** node under TCG runs 10–17× slower: the tests' hang guards grow by this much (not asserted timings) */
const GUEST_TIME_SCALE = 15;

/** The shared files over TCP on this host, as `npm test` runs them: the tests they declare. */
function hostTcpRun(): Promise<{ code: number; tests: TapTest[]; ms: number; output: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, FORCE_COLOR: '0' };
  for (const k of ['IBNBD_TEST_TRANSPORT', 'IBNBD_TEST_HOST', 'IBNBD_TEST_TIME_SCALE']) delete env[k];
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [AVA_CLI, ...AVA_ARGS, ...sharedSuiteFiles()], { cwd: projectRoot, env, encoding: 'utf8', timeout: 300_000, killSignal: 'SIGKILL', maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, tests: parseTap(stdout), ms: Date.now() - started, output: `${stdout.slice(-6000)}\n--- stderr ---\n${stderr.slice(-2000)}` });
    });
  });
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

test.serial('the shared server/client suite passes over RDMA in a soft-RoCE guest: every test the TCP run declares, nothing skipped', async (t) => {
  t.timeout(1_920_000);
  // the TCP run on the host and the guest side by side: the run is short next to the guest's
  const hostRun = hostTcpRun();
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
  const host = await hostRun;
  t.log(`TCP on the host: ${passedTests(host.tests).length} tests in ${(host.ms / 1000).toFixed(1)} s`);
  logTimings(t, lines);
  t.log(`guest: boot ${((r.bootMs ?? 0) / 1000).toFixed(1)} s, whole run ${(r.durationMs / 1000).toFixed(1)} s`);
  // The host run is here for the titles the files declare; whether they pass over TCP is the main
  // run's job (the same files run there), so a TCP failure is logged, not asserted a second time.
  if (host.code !== 0) t.log(`the TCP reference run on the host did not pass (the main run asserts it):\n${host.output}`);
  const expected = host.tests.map((x) => `${x.file} › ${x.title}`);
  t.true(expected.length > 0 && /^1\.\.\d+$/m.test(host.output), `TCP run: ${expected.length} tests declared, ava finished`);
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
