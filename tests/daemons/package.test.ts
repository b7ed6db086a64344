// The npm package as an operator installs it (docs/operations.md, "Install"): `npm pack`, then
// `npm install -g --prefix` into an empty prefix, which compiles the native addon there
// (scripts/install.sh). Then the installed `ibnbd` on that prefix's PATH: its versions, the
// units and example configs beside it, and its two daemons mapping a file export on loopback.
// The install's native build takes a minute or two of this test's time; it runs at low priority
// (nice) so the daemon tests beside it keep their timing.
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { projectRoot } from '../../src/backend/native.js';
import { sparseFile, tempDir } from '../../harness/fixtures.js';
import { ibnbd, ibnbdJson, startClientDaemon, startServerDaemon, useCli } from '../support/daemons.js';
import { scaled, testMapTarget } from '../support/transport-under-test.js';

const run = promisify(execFile);
const version = (JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8')) as { version: string }).version;

/** This process's environment without what an `npm test` around it set for its own package. */
function npmEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^npm_(package_|lifecycle_|config_(global_|local_)?prefix$)/.test(k)) env[k] = v;
  }
  return { ...env, ...extra };
}

test('npm pack installs on a clean prefix, builds the addon there, and its daemons map a device', async (t) => {
  t.timeout(scaled(600_000));
  const dir = tempDir(t, 'pack');
  const opts = { cwd: dir, env: npmEnv(), maxBuffer: 16 << 20 };

  // dist/ is built already (this test runs from it), so prepack's tsc is not run again here
  const packed = await run('npm', ['pack', projectRoot, '--ignore-scripts', '--pack-destination', dir, '--json'], opts);
  const tgz = join(dir, (JSON.parse(packed.stdout) as Array<{ filename: string }>)[0]!.filename);
  const listing = (await run('tar', ['tzf', tgz], opts)).stdout.split('\n').filter(Boolean);
  for (const f of ['bin/ibnbd.js', 'dist/src/cli/main.js', 'native/binding.gyp', 'scripts/install.sh', 'scripts/libvhost-user.sh',
    'packaging/systemd/ibnbd-server.service', 'packaging/systemd/ibnbd-client.service',
    'packaging/config/server.toml', 'packaging/config/client.toml', 'LICENSE', 'CHANGELOG.md']) {
    t.true(listing.includes(`package/${f}`), `${f} in the tarball`);
  }
  const unwanted = listing.filter((f) => /\.(node|so|a|o|map)$|\/(build|third_party|testing|tools|tests|node_modules)\/|libvhost-user\.c/.test(f));
  t.deepEqual(unwanted, [], 'no binary, no fetched source, no test code');
  t.log(`tarball: ${listing.length} files, ${Math.round(statSync(tgz).size / 1024)} KiB`);

  const prefix = join(dir, 'prefix');
  const t0 = Date.now();
  await run('nice', ['-n', '10', 'npm', 'install', '-g', '--prefix', prefix, tgz, '--no-audit', '--no-fund', '--prefer-offline'], opts);
  t.log(`npm install -g (native build included): ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  const pkg = join(prefix, 'lib', 'node_modules', 'ibnbd-vhost');
  const addon = join(pkg, 'native', 'build', 'Release', 'ibnbd.node');
  t.true(existsSync(addon), 'the addon was compiled at install');
  t.true(statSync(addon).mtimeMs >= t0, 'during this install');
  t.false(existsSync(join(pkg, 'native', 'build', 'Release', 'ibnbd_test.node')), 'the product addon alone');
  for (const f of ['packaging/systemd/ibnbd-server.service', 'packaging/systemd/ibnbd-client.service', 'packaging/config/server.toml', 'packaging/config/client.toml', 'LICENSE']) {
    t.true(existsSync(join(pkg, f)), `${f} installed`);
  }

  // `ibnbd` as the PATH finds it
  const path = `${join(prefix, 'bin')}:${process.env.PATH}`;
  const v = await run('ibnbd', ['--version'], { ...opts, env: npmEnv({ PATH: path }) });
  t.regex(v.stdout, new RegExp(`^ibnbd-vhost ${version.replace(/\./g, '\\.')}\n`));
  t.regex(v.stdout, /^libvhost-user qemu 7\.2\+dfsg/m);
  t.regex(v.stdout, /^libibverbs \d[\d.]*, librdmacm \d[\d.]*, liburing \d[\d.]*$/m);

  // a host without a library the build needs: every missing piece named with its Debian package
  const broken = await run('bash', [join(pkg, 'scripts', 'install.sh')], { ...opts, env: npmEnv({ PKG_CONFIG_LIBDIR: join(dir, 'none'), PKG_CONFIG_PATH: '' }) })
    .then(() => ({ code: 0, stderr: '' }), (e: { code: number; stderr: string }) => e);
  t.is(broken.code, 1);
  for (const dev of ['libibverbs-dev', 'librdmacm-dev', 'liburing-dev']) t.true(broken.stderr.includes(dev), broken.stderr);

  // the installed daemons: a file export mapped over loopback through the installed CLI
  useCli(join(prefix, 'bin', 'ibnbd'));
  const exportsDir = join(dir, 'exports');
  await import('node:fs/promises').then((fs) => fs.mkdir(exportsDir));
  sparseFile(join(exportsDir, 'disk0.img'), 8 << 20);
  const server = await startServerDaemon(t, dir, exportsDir);
  const client = await startClientDaemon(t, dir);
  const { device } = await ibnbdJson<{ device: Record<string, any> }>(['map', `sessname=pkg ${testMapTarget(server.port)} device_path=disk0.img`, '--control', client.control]);
  t.like(device, { name: 'ibnbd0', state: 'open', size: 8 << 20 });
  t.true(existsSync(device.socket), 'the vhost-user socket is there for QEMU');
  const shown = await ibnbdJson<{ device: Record<string, any> }>(['show', 'ibnbd0', '--control', client.control]);
  t.like(shown.device, { session: 'pkg', mapping_path: 'disk0.img', access_mode: 'rw' });
  t.is((await ibnbd(['unmap', 'ibnbd0', '--control', client.control])).code, 0);
  t.is(await client.stop(), 0);
  t.is(await server.stop(), 0);
});
