// What an `ibnbd` command loads. Every command is a node start-up, and in the TCG test guests one
// costs seconds, so the control commands (map, list, show, ...) must not load the daemons, their
// logger (pino) or the TOML reader; `ibnbd client` and `ibnbd server` load those when they run.
// A module hook in the child process records every module it loads.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../../bin/ibnbd.js', import.meta.url));
const HOOK = `data:text/javascript,${encodeURIComponent(`
import { registerHooks } from 'node:module';
import { appendFileSync } from 'node:fs';
registerHooks({ load(url, context, next) { appendFileSync(process.env.IBNBD_LOADED_LOG, url + '\\n'); return next(url, context); } });
`)}`;
const DAEMON_ONLY = ['/node_modules/pino/', '/node_modules/smol-toml/', '/dist/src/client/daemon.js', '/dist/src/server/daemon.js', '/dist/src/logger.js'];

const dir = mkdtempSync(join(tmpdir(), 'ibnbd-cli-startup-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** The modules `ibnbd args` loaded, whatever its exit status. */
function loadedBy(name: string, args: string[]): Promise<string[]> {
  const log = join(dir, `${name}.log`);
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', HOOK, BIN, ...args], { timeout: 20_000, env: { ...process.env, IBNBD_LOADED_LOG: log } }, () => {
      resolve(readFileSync(log, 'utf8').trim().split('\n'));
    });
  });
}

const daemonModules = (urls: string[]) => urls.filter((u) => DAEMON_ONLY.some((d) => u.includes(d)));

for (const [name, title, args] of [
  ['list', 'ibnbd list', ['list', '--control', join(dir, 'none.sock')]],
  ['map', 'ibnbd map "<map string>"', ['map', 'sessname=s path=ip:127.0.0.1 device_path=d', '--control', join(dir, 'none.sock')]],
  ['client-help', 'ibnbd client --help', ['client', '--help']],
  ['server-devices', 'ibnbd server devices', ['server', 'devices', '--control', join(dir, 'none.sock')]],
] as const) {
  test(`${title} loads no daemon module, no pino, no TOML reader`, async (t) => {
    const urls = await loadedBy(name, [...args]);
    t.true(urls.some((u) => u.endsWith('/dist/src/cli/main.js')), 'the hook saw the CLI load');
    t.deepEqual(daemonModules(urls), []);
  });
}

test('ibnbd client loads the daemon and its config reader when it runs', async (t) => {
  // a config file that is not there: the daemon command loads its modules, then fails on the file
  const urls = await loadedBy('client-run', ['client', '--config', join(dir, 'missing.toml'), '--control', join(dir, 'c.sock')]);
  const loaded = daemonModules(urls);
  t.true(loaded.some((u) => u.includes('/dist/src/client/daemon.js')), loaded.join('\n'));
  t.true(loaded.some((u) => u.includes('/node_modules/smol-toml/')), loaded.join('\n'));
});
