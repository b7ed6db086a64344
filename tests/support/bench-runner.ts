// Runs the bench runner (dist/bench/run.js) as a child process with a hard time limit, for the
// bench tests: exit code, stdout (the table) and stderr (progress, errors).
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..', '..', '..');

export interface BenchRun { code: number | null; stdout: string; stderr: string }

/**
 * Ends the runner after timeoutMs: SIGTERM first (a guest bench kills its QEMU guest on it, which
 * lives in a process group of its own), SIGKILL 15 s later if it is still there.
 */
export function runBench(args: string[], timeoutMs: number): Promise<BenchRun> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [join(root, 'dist', 'bench', 'run.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let kill: NodeJS.Timeout | undefined;
    const term = setTimeout(() => {
      child.kill('SIGTERM');
      kill = setTimeout(() => child.kill('SIGKILL'), 15_000);
    }, timeoutMs);
    child.on('close', (code) => {
      clearTimeout(term);
      clearTimeout(kill);
      res({ code, stdout, stderr });
    });
  });
}
