// The two daemons as a user runs them: `ibnbd server` and `ibnbd client` child processes driven by
// the `ibnbd` CLI over their control sockets. Shared by the client-daemon, VM and server tests.
import type { ExecutionContext } from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { projectRoot } from '../../src/backend/native.js';
import { controlRequest } from '../../src/control/index.js';
import { freePort, sparseFile, tempDir } from '../../harness/fixtures.js';
import { TEST_TRANSPORT, scaled, testListen } from './transport-under-test.js';

/** The `ibnbd` these helpers run: the checkout's, unless a test of an installed package named
 *  that package's with useCli (an ava file is a process of its own, so this is per file). */
export let cliPath = join(projectRoot, 'bin', 'ibnbd.js');

export function useCli(path: string): void {
  cliPath = path;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** One `ibnbd …` command, bounded in time. */
export function ibnbd(args: string[], timeoutMs = scaled(30_000)): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cliPath, ...args], { encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `ibnbd … --json` that must succeed; its parsed result. */
export async function ibnbdJson<T = Record<string, any>>(args: string[], timeoutMs?: number): Promise<T> {
  const r = await ibnbd([...args, '--json'], timeoutMs);
  if (r.code !== 0) throw new Error(`ibnbd ${args.join(' ')} → ${r.code}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as T;
}

/** `show` of one device straight over the control socket: for polls, where an `ibnbd` start per
 *  call (1–2 s of node start-up in a TCG guest) would be most of the wait and make the polls
 *  coarse. What the CLI prints is tested where a test runs it for that. */
export async function showDevice(control: string, device: string): Promise<Record<string, any>> {
  return ((await controlRequest(control, { cmd: 'show', device })) as { device: Record<string, any> }).device;
}

/** One line of a daemon's stderr (docs/operations.md, "Logs"). */
export interface LogEntry {
  level: string;
  time: string;
  daemon: string;
  msg: string;
  session?: string;
  device?: string;
  path?: string;
  native?: boolean;
  component?: string;
  [key: string]: unknown;
}

/** A daemon's stderr, line by line: JSON lines parsed; anything else (a crash's text, a line
 *  still being written) kept as its msg, level '?'. */
export function parseLog(text: string): LogEntry[] {
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      try {
        const e = JSON.parse(l) as unknown;
        if (e !== null && typeof e === 'object' && typeof (e as LogEntry).msg === 'string') return e as LogEntry;
      } catch {
        // not JSON: below
      }
      return { level: '?', time: '', daemon: '', msg: l };
    });
}

/** The first log entry that pred accepts, waited for: a daemon is ready once its control socket
 *  answers, and what it logs after that (the server's "listening on …" line) may come later. */
export async function waitForEntry(d: Daemon, pred: (e: LogEntry) => boolean, what: string, ms = scaled(10_000)): Promise<LogEntry> {
  const end = Date.now() + ms;
  for (;;) {
    const e = d.entries().find(pred);
    if (e) return e;
    if (Date.now() > end) throw new Error(`no ${what} in the log:\n${d.raw()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface Daemon {
  proc: ChildProcess;
  control: string;
  /** The messages, one a line, as written (JSON escapes undone): what the tests' regexes read. */
  log(): string;
  /** Every line with its fields. */
  entries(): LogEntry[];
  /** stderr as the daemon wrote it. */
  raw(): string;
  /** SIGTERM (or the given signal); resolves with the exit code once it exited. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** env: added to this process's environment (e.g. a test-only fault hook, docs/server.md). */
function startDaemon(t: ExecutionContext, args: string[], control: string, env?: Record<string, string>): Promise<Daemon> {
  const proc = spawn(process.execPath, [cliPath, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: env ? { ...process.env, ...env } : process.env,
  });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
    const killer = setTimeout(() => proc.kill('SIGKILL'), scaled(15_000));
    const code = await exited;
    clearTimeout(killer);
    return code;
  };
  t.teardown(() => stop('SIGKILL').then(() => undefined));
  return new Promise((resolve, reject) => {
    const end = Date.now() + scaled(20_000);
    const poll = () => {
      if (proc.exitCode !== null || Date.now() > end) return reject(new Error(`daemon ${args[0]} did not start: ${log}`));
      if (!existsSync(control)) return void setTimeout(poll, 25);
      // the socket file appears at bind(), a moment before listen(): ready once it accepts
      const probe = net.connect(control);
      probe.once('connect', () => {
        probe.destroy();
        resolve({ proc, control, log: () => parseLog(log).map((e) => e.msg).join('\n'), entries: () => parseLog(log), raw: () => log, stop });
      });
      probe.once('error', () => {
        probe.destroy();
        setTimeout(poll, 25);
      });
    };
    poll();
  });
}

export interface ServerDaemon extends Daemon {
  port: number;
}

/** port: a given one (a restart on the same address), else a free one. Listens on the transport
 *  under test. env: added to the daemon's environment. searchPath null: no --dev-search-path (named
 *  exports only, given in extra). */
export async function startServerDaemon(
  t: ExecutionContext,
  dir: string,
  searchPath: string | null,
  extra: string[] = [],
  port?: number,
  env?: Record<string, string>,
): Promise<ServerDaemon> {
  port ??= await freePort();
  const control = join(dir, `server-${port}.sock`);
  const d = await startDaemon(t, ['server', '--listen', testListen(port), '--transport', TEST_TRANSPORT, ...(searchPath === null ? [] : ['--dev-search-path', searchPath]), '--control', control, ...extra], control, env);
  return { ...d, port };
}

export interface ClientDaemon extends Daemon {
  runDir: string;
}

/** env: added to the daemon's environment. */
export async function startClientDaemon(t: ExecutionContext, dir: string, extra: string[] = [], env?: Record<string, string>): Promise<ClientDaemon> {
  const control = join(dir, 'client.sock');
  const runDir = join(dir, 'run');
  // a state dir of the test's own unless it names one (the default is the host's /var/lib)
  const state = extra.includes('--state-dir') ? [] : ['--state-dir', join(dir, 'state')];
  const d = await startDaemon(t, ['client', '--control', control, '--run-dir', runDir, ...state, ...extra], control, env);
  return { ...d, runDir };
}

/** Resident set of a process in bytes (/proc/<pid>/status VmRSS). */
export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Polls `show` (over the control socket, a few ms a call) until cond holds; the last answer.
 *  boundMs only guards against a hang (scaled). */
export async function until(show: () => Promise<Record<string, any>>, cond: (d: Record<string, any>) => boolean, boundMs: number, what: string): Promise<Record<string, any>> {
  const end = Date.now() + scaled(boundMs);
  for (;;) {
    const d = await show();
    if (cond(d)) return d;
    if (Date.now() > end) throw new Error(`${what}: not within ${scaled(boundMs)} ms: ${JSON.stringify(d)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A search directory with these sparse files (name → bytes), a server exporting it and a client
 *  daemon: the set-up most daemon tests start from. */
export async function startDaemonsWithFiles(t: ExecutionContext, prefix: string, files: Record<string, number>) {
  const dir = tempDir(t, prefix);
  const exportsDir = join(dir, 'exports');
  mkdirSync(exportsDir);
  for (const [name, size] of Object.entries(files)) sparseFile(join(exportsDir, name), size);
  const server = await startServerDaemon(t, dir, exportsDir);
  const client = await startClientDaemon(t, dir);
  return { dir, exportsDir, server, client };
}
