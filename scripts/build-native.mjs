#!/usr/bin/env node
// Builds native/ with node-gyp against the system's Node headers (no header download here).
// Release always; the sanitizer configuration (Debug: ASan + UBSan) too when IBNBD_SANITIZE=1.
// Re-running only recompiles what changed (node-gyp's make), so `npm test` stays cheap.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = join(root, 'native');
const gyp = join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const env = { ...process.env, npm_config_nodedir: process.env.npm_config_nodedir || '/usr' };
const jobs = String(Math.max(1, (await import('node:os')).availableParallelism()));

function run(args) {
  const r = spawnSync(process.execPath, [gyp, ...args, '--nodedir=/usr', `--jobs=${jobs}`], {
    cwd: nativeDir, env, stdio: 'inherit',
  });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

// configure again whenever the list of sources may have changed: gyp expands it at configure time
const sourcesStamp = join(nativeDir, 'build', 'sources.txt');
const list = spawnSync('bash', ['-c', 'find . -name "*.cc" -not -path "./build*" -not -path "./third_party/*" | sort; cat binding.gyp | sha256sum'], { cwd: nativeDir, encoding: 'utf8' }).stdout;
const { readFileSync, writeFileSync } = await import('node:fs');
const stale = !existsSync(join(nativeDir, 'build', 'Makefile')) || !existsSync(sourcesStamp) || readFileSync(sourcesStamp, 'utf8') !== list;
if (stale) {
  run(['configure']);
  writeFileSync(sourcesStamp, list);
}
run(['build']);
if (process.env.IBNBD_SANITIZE === '1') run(['build', '--debug']);
