#!/usr/bin/env node
// `npm test`: set-up and build already ran (pretest). Runs the suite tier by tier, fastest first,
// and stops at the first tier that fails, so a broken codec is reported in seconds, not after
// the guests:
//
//   layout     scripts/check-layout.mjs: the house rules (no import cycle, no file over 800 lines, ...)
//   unit       tests/unit/     pure TypeScript, no addon, no daemon
//   native     tests/native/   the addons on this host: codecs, transport, server IO, vhost devices
//   daemons    tests/daemons/  whole daemons and the CLI over loopback TCP
//   guests     tests/vm/, tests/rdma/, tests/bench/: QEMU guests under TCG (soft-RoCE for rdma/),
//              one ava process per file, GUEST_JOBS at once (cores / 2: a guest has 2 vCPUs), longest first; each
//              file's wall time is printed as it ends
//   sanitizer  tests/sanitizer-suite.txt again on the ASan + UBSan build of both addons (built at
//              SCHED_IDLE while the guests run)
//
//   npm test                         every tier (IBNBD_SKIP_SANITIZER=1 leaves out the last)
//   npm test -- --tier native        one tier; repeat --tier (or give a comma list) for several;
//                                    vm, rdma and bench name the guest tier's folders one by one
//   npm test -- dist/tests/x.test.js ava on exactly these files, as before
//
// The last line sums every ava run: "tests: N passed, N failed".
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// ava's CLI as its package names it (the file moved between majors)
const AVA = join(root, 'node_modules', 'ava', JSON.parse(readFileSync(join(root, 'node_modules', 'ava', 'package.json'), 'utf8')).bin.ava);
const GUEST_FOLDERS = ['vm', 'rdma', 'bench'];
const TIERS = ['layout', 'unit', 'native', 'daemons', 'guests', 'sanitizer'];
// Longest first, so the two long guests never end up last and alone (measured wall times in
// ARCHITECTURE.md); files not named here follow in name order.
const GUEST_ORDER = ['rdma/rdma-suite', 'rdma/rdma-daemons', 'vm/vm', 'bench/bench-interop', 'rdma/rdma', 'rdma/rnbd-kernel'];
// Guests at once: as many as the cores hold whole, a 2-vCPU guest needing two. Two 2-vCPU TCG
// guests on a 2-core host starve each other far worse than in half: rdma-daemons reached its
// scenario G after 783 s beside rdma-suite against 135 s alone, and both ran out of their bounds.
const GUEST_VCPUS = 2;
const GUEST_JOBS = Math.max(1, Math.min(2, Number(process.env.IBNBD_GUEST_JOBS ?? Math.floor(availableParallelism() / GUEST_VCPUS))));

const totals = { passed: 0, failed: 0, skipped: 0 };

// Which Node runs the suite (npm puts the pinned one from node_modules/.bin first on the PATH),
// refused when older than the supported lines so a wrong PATH cannot pass for a green run.
const nodeMajor = Number(process.versions.node.split('.')[0]);
console.log(`node ${process.version} (${process.execPath})`);
if (nodeMajor < 24) {
  console.error(`npm test: Node ${process.version} is older than the supported 24 LTS; run it through npm (npm test) so the pinned Node is used`);
  process.exit(1);
}

// tests/sanitizer-suite.txt: files that run in their own tier and again on the sanitizer build
const sanitizerSuite = readFileSync(join(root, 'tests', 'sanitizer-suite.txt'), 'utf8').split('\n')
  .map((l) => l.trim()).filter((l) => l && !l.startsWith('#'))
  .map((l) => join('dist', 'tests', l.replace(/\.ts$/, '.js')));

function testFiles(folder) {
  const dir = join(root, 'dist', 'tests', folder);
  return readdirSync(dir).filter((f) => f.endsWith('.test.js')).sort().map((f) => relative(root, join(dir, f)));
}

/** Adds what one ava run's summary says to the totals. */
function count(output) {
  const n = (re) => Number(re.exec(output)?.[1] ?? 0);
  // ava prints "N tests passed" only when none failed; its one line per passed test is always there
  totals.passed += (output.match(/^\s*✔ /gm) ?? []).length;
  totals.failed += n(/^\s*(\d+) tests? failed/m) + n(/^\s*(\d+) uncaught exceptions?/m) + n(/^\s*(\d+) unhandled rejections?/m);
  totals.skipped += n(/^\s*(\d+) tests? skipped/m);
}

/** ava in the foreground, output passed through and counted. Resolves to its exit code. */
function ava(files, env = process.env, label = '') {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [AVA, ...files], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const relay = (stream, sink) => stream.on('data', (d) => { out += d; if (!label) sink.write(d); });
    relay(child.stdout, process.stdout);
    relay(child.stderr, process.stderr);
    child.on('close', (code, signal) => {
      count(out);
      resolve({ code: code ?? (signal ? 1 : 0), out });
    });
  });
}

function stamp(t0) {
  const s = Math.round((Date.now() - t0) / 1000);
  return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
}

async function hostTier(name) {
  const t0 = Date.now();
  console.log(`\n=== tier ${name} (tests/${name}/)`);
  const { code } = await ava(testFiles(name));
  console.log(`=== tier ${name}: ${code === 0 ? 'passed' : 'FAILED'} in ${stamp(t0)}`);
  return code === 0;
}

/** Guest files, one ava process each, GUEST_JOBS at a time; output printed whole per file. */
async function guestTier(folders) {
  const t0 = Date.now();
  const files = folders.flatMap(testFiles);
  const rank = (f) => { const i = GUEST_ORDER.indexOf(f.replace(/^dist\/tests\//, '').replace(/\.test\.js$/, '')); return i < 0 ? GUEST_ORDER.length : i; };
  files.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  console.log(`\n=== tier guests (tests/${folders.join(', tests/')}/): ${files.length} files, ${GUEST_JOBS} at a time`);
  let ok = true;
  const queue = [...files];
  const worker = async () => {
    for (let f = queue.shift(); f; f = queue.shift()) {
      const t1 = Date.now();
      const { code, out } = await ava([f], process.env, f);
      process.stdout.write(out);
      console.log(`--- guest file ${f}: ${code === 0 ? 'passed' : 'FAILED'} in ${stamp(t1)}`);
      if (code !== 0) ok = false;
    }
  };
  await Promise.all(Array.from({ length: GUEST_JOBS }, worker));
  console.log(`=== tier guests: ${ok ? 'passed' : 'FAILED'} in ${stamp(t0)}`);
  return ok;
}

/**
 * The ASan + UBSan build (native/build/Debug; the Release addon the other tiers load is not
 * touched). Started under SCHED_IDLE when the guest tier begins: guests leave cores idle while
 * they wait (and a 1-vCPU guest leaves one whole), and the build takes only that slack, so its
 * minutes come off the suite's wall time instead of being added after the guests. Not nice 19:
 * at nice 19 the build still delayed the guests' vCPU threads (rdma-suite took 13:06 beside it
 * against 10:44 alone); a SCHED_IDLE thread is preempted as soon as any other wakes. Resolves to
 * success.
 */
function sanitizerBuild(background) {
  const argv = [process.execPath, join(root, 'scripts', 'build-native.mjs')];
  const child = spawn(background ? 'chrt' : argv[0], background ? ['--idle', '0', ...argv] : argv.slice(1), {
    cwd: root, env: { ...process.env, IBNBD_SANITIZE: '1' }, stdio: ['ignore', 'ignore', 'pipe'], detached: true,
  });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  // a run that stops at a failed guest tier must not leave the compiler running
  const stop = () => { try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ } };
  process.on('exit', stop);
  child.on('close', () => process.off('exit', stop));
  const t0 = Date.now();
  return new Promise((resolve) => child.on('close', (code) => {
    if (code !== 0) process.stderr.write(err);
    console.log(`(sanitizer build ${code === 0 ? 'done' : 'FAILED'} in ${stamp(t0)}${background ? ', at SCHED_IDLE beside the guests' : ''})`);
    resolve(code === 0);
  }));
}
let sanitizerBuilt;  // the build's promise, once started

async function sanitizerTier() {
  const t0 = Date.now();
  console.log('\n=== tier sanitizer: ASan + UBSan build of both addons');
  if (!(await (sanitizerBuilt ??= sanitizerBuild(false)))) return false;
  const lib = (name) => spawnSync('gcc', [`-print-file-name=${name}`], { encoding: 'utf8' }).stdout.trim();
  const env = {
    ...process.env,
    IBNBD_SANITIZE: '1',
    LD_PRELOAD: `${lib('libasan.so')}:${lib('libubsan.so')}`,
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1',
    UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
  };
  // Guest files one at a time, as in the guest tier: run beside each other (ava runs two files at
  // once) the ASan guests starved each other and the host files' timing tests (a run of 8c1fc5e
  // failed fault-unmap and migration while rdma-daemons' guest ran beside them).
  const isGuest = (f) => GUEST_FOLDERS.some((g) => f.startsWith(join('dist', 'tests', g) + '/'));
  const files = sanitizerSuite;
  let { code } = await ava(files.filter((f) => !isGuest(f)), env);
  for (const f of files.filter(isGuest)) {
    const r = await ava([f], env);
    if (r.code !== 0) code = r.code;
  }
  console.log(`=== tier sanitizer: ${code === 0 ? 'passed' : 'FAILED'} in ${stamp(t0)}`);
  return code === 0;
}

function layoutTier() {
  console.log('=== tier layout');
  return spawnSync(process.execPath, [join(root, 'scripts', 'check-layout.mjs')], { cwd: root, stdio: 'inherit' }).status === 0;
}

// --- arguments -------------------------------------------------------------------------------------
const args = process.argv.slice(2);
const wanted = [];
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--tier') wanted.push(...(args[++i] ?? '').split(','));
  else if (args[i].startsWith('--tier=')) wanted.push(...args[i].slice(7).split(','));
  else files.push(args[i]);
}
for (const t of wanted) {
  if (![...TIERS, ...GUEST_FOLDERS].includes(t)) {
    console.error(`test: unknown tier '${t}' (one of ${[...TIERS, ...GUEST_FOLDERS].join(', ')})`);
    process.exit(2);
  }
}

const t0 = Date.now();
let ok = true;
if (files.length) {
  ok = (await ava(files)).code === 0;
} else {
  const all = wanted.length === 0;
  const runs = all ? TIERS.filter((t) => t !== 'sanitizer' || process.env.IBNBD_SKIP_SANITIZER !== '1') : wanted;
  const sanitizerRuns = runs.includes('sanitizer');
  const guestFolders = runs.includes('guests') ? GUEST_FOLDERS : GUEST_FOLDERS.filter((g) => runs.includes(g));
  let guestsDone = false;
  for (const t of runs) {
    if (t === 'layout') ok = layoutTier();
    else if (t === 'sanitizer') ok = await sanitizerTier();
    else if (t === 'guests' || GUEST_FOLDERS.includes(t)) {
      if (guestsDone) continue;
      guestsDone = true;
      if (sanitizerRuns) sanitizerBuilt = sanitizerBuild(true);
      ok = await guestTier(guestFolders);
    } else ok = await hostTier(t);
    if (!ok) break;
  }
}
console.log(`\nwhole run: ${stamp(t0)}`);
console.log(`tests: ${totals.passed} passed, ${totals.failed} failed${totals.skipped ? `, ${totals.skipped} skipped` : ''}`);
process.exit(ok && totals.failed === 0 ? 0 : 1);
