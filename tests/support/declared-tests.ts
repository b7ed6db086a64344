// The tests a set of ava files declares, found without running any of them: a child node imports
// each compiled file with 'ava' resolved to a recorder (module.registerHooks), which keeps the
// titles that test(), test.serial() and the rest register, named as `ava --tap` names them when
// it runs several files ("daemons › server-io › <title>"). rdma-suite.test.ts compares the guest's
// run with them; it used to run the files over TCP on the host for their titles, which cost
// 90 s of the 2 cores the guest needs beside it.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SELF = fileURLToPath(import.meta.url);

/** files: compiled test files, relative to cwd (the project root), imported with env (this
 *  process's by default). Rejects when a file cannot be imported. */
export function declaredTests(files: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [SELF, ...files], { cwd, env, encoding: 'utf8', timeout: 60_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`listing the tests of ${files.join(' ')} failed: ${stderr || String(err)}`));
      resolve(JSON.parse(stdout) as string[]);
    });
  });
}

// ---- the child ---------------------------------------------------------------------------

/** "dist/tests/daemons/server-io.test.js" → "daemons › server-io", as ava prefixes its titles. */
export function avaFilePrefix(file: string): string {
  return file
    .replace(/\\/g, '/')
    .replace(/^(\.\/)?dist\/tests\//, '')
    .replace(/\.test\.js$/, '')
    .split('/')
    .join(' › ');
}

interface Recorder {
  prefix: string;
  titles: string[];
}

// The stand-in for ava: every way to declare a test records its title, skip and todo included
// (the caller wants every one of them passed); hooks declare none.
const RECORDER_SOURCE = `
const rec = globalThis.__ibnbdDeclared;
const record = (title) => { if (typeof title === 'string') rec.titles.push(rec.prefix + ' › ' + title); };
const hook = () => {};
hook.always = hook;
const make = () => {
  const t = (title) => record(title);
  t.serial = (title) => record(title);
  t.only = t.serial.only = t.failing = t.serial.failing = (title) => record(title);
  t.skip = t.serial.skip = t.todo = t.serial.todo = (title) => record(title);
  for (const name of ['before', 'after', 'beforeEach', 'afterEach']) t[name] = t.serial[name] = hook;
  t.macro = (m) => m;
  t.meta = { file: '', snapshotDirectory: '' };
  return t;
};
export default make();
`;

async function main(files: string[]): Promise<void> {
  const { registerHooks } = await import('node:module');
  const { pathToFileURL } = await import('node:url');
  const { resolve: resolvePath } = await import('node:path');
  const rec: Recorder = { prefix: '', titles: [] };
  (globalThis as { __ibnbdDeclared?: Recorder }).__ibnbdDeclared = rec;
  const recorderUrl = `data:text/javascript,${encodeURIComponent(RECORDER_SOURCE)}`;
  registerHooks({
    resolve(specifier, context, next) {
      if (specifier === 'ava') return { url: recorderUrl, format: 'module', shortCircuit: true };
      return next(specifier, context);
    },
  });
  for (const file of files) {
    rec.prefix = avaFilePrefix(file);
    await import(pathToFileURL(resolvePath(file)).href);
  }
  process.stdout.write(JSON.stringify(rec.titles));
}

if (process.argv[1] === SELF) {
  main(process.argv.slice(2)).then(
    // a file may leave a timer or a handle behind at import: the list is written, we are done
    () => process.exit(0),
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exit(1);
    },
  );
}
