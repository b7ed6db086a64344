// Child processes of the bench: daemons that live for the whole run (killed on exit, whatever
// happens), tools that run once with a hard time limit, readiness waits with deadlines, and the
// CPU time of a process from /proc/<pid>/stat.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

export class Daemon {
  readonly child: ChildProcess;
  private readonly exited: Promise<void>;
  constructor(readonly name: string, command: string, args: string[], logFile: string, env: NodeJS.ProcessEnv = process.env) {
    const log = openSync(logFile, 'a');
    this.child = spawn(command, args, { stdio: ['ignore', log, log], env });
    closeSync(log);
    live.add(this.child);
    this.exited = new Promise((resolve) => this.child.once('exit', () => { live.delete(this.child); resolve(); }));
    this.child.once('error', () => undefined);
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name}: did not start`);
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** SIGTERM, then SIGKILL if it has not gone within graceMs. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

export async function waitFor(what: string, timeoutMs: number, ready: () => boolean | Promise<boolean>, alive?: Daemon[]): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await ready()) return;
    const dead = alive?.find((d) => !d.running);
    if (dead) throw new Error(`${what}: ${dead.name} exited (code ${dead.child.exitCode ?? dead.child.signalCode})`);
    if (Date.now() > deadline) throw new Error(`${what}: not ready within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const fileExists = (path: string) => () => existsSync(path);

export function tcpAccepts(host: string, port: number) {
  return () =>
    new Promise<boolean>((resolve) => {
      const s = connect({ host, port });
      const done = (ok: boolean) => { s.destroy(); resolve(ok); };
      s.setTimeout(500, () => done(false));
      s.once('connect', () => done(true));
      s.once('error', () => done(false));
    });
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** utime + stime of a whole process (every thread, living and gone), in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // the command name may hold spaces and parentheses: fields start after the last ')'
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

export interface ToolResult {
  ok: boolean;
  error?: string;
  [key: string]: unknown;
}

/** Runs a tool that prints one JSON object; killed after timeoutMs. */
export function runTool(command: string, args: string[], timeoutMs: number, env: NodeJS.ProcessEnv = process.env): Promise<ToolResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    live.add(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (e) => { clearTimeout(timer); live.delete(child); resolve({ ok: false, error: `${command}: ${e.message}` }); });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      const line = out.trim().split('\n').pop() ?? '';
      try {
        const parsed = JSON.parse(line) as ToolResult;
        resolve(parsed);
      } catch {
        resolve({ ok: false, error: `${command} exited ${code ?? signal}${signal === 'SIGKILL' ? ' (killed after the time limit)' : ''}: ${(err || out).trim().slice(0, 300)}` });
      }
    });
  });
}
