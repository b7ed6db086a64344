// dev_search_path rules: the textual join (as RNBD: device_path always relative to the search
// path), %SESSNAME%, and the real-path containment check on a real directory tree with symlinks.
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isInside, joinDevicePath, resolveDevicePath, searchDirFor } from '../../src/server/device-path.js';

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code;
  }
}

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

test('seed example: %SESSNAME% + sda for session blya', (t) => {
  const dir = searchDirFor('/run/ibnbd-devs/%SESSNAME%', 'blya');
  t.is(dir, '/run/ibnbd-devs/blya');
  t.is(joinDevicePath(dir, 'sda'), '/run/ibnbd-devs/blya/sda');
});

test('device_path is relative to the search path, a leading slash included', (t) => {
  t.is(joinDevicePath('/', '/dev/ram0'), '/dev/ram0');
  t.is(joinDevicePath('/srv/devs', '/dev/ram0'), '/srv/devs/dev/ram0');
  t.is(joinDevicePath('/srv/devs/', '//a//b/'), '/srv/devs/a/b');
  t.is(joinDevicePath('/srv/devs', './a/./b'), '/srv/devs/a/b');
});

test('refusals of the name itself are EINVAL', (t) => {
  t.is(code(() => joinDevicePath('/srv', '../etc/passwd')), 'EINVAL');
  t.is(code(() => joinDevicePath('/srv', 'a/../../etc')), 'EINVAL');
  t.is(code(() => joinDevicePath('/srv', 'a/..')), 'EINVAL');
  t.is(code(() => joinDevicePath('/srv', '..')), 'EINVAL');
  t.is(code(() => joinDevicePath('/srv', 'a\0b')), 'EINVAL');
  t.is(code(() => joinDevicePath('/srv', '')), 'EINVAL');
  t.is(code(() => joinDevicePath('/srv', '/')), 'EINVAL');
  t.is(code(() => joinDevicePath('/srv', 'x'.repeat(255))), 'EINVAL');
  t.is(code(() => joinDevicePath('/' + 'd'.repeat(4000), 'x'.repeat(200))), 'EINVAL');
  // ".." only as a whole component
  t.is(joinDevicePath('/srv', 'a..b/..c'), '/srv/a..b/..c');
});

test('a session name must be one path component when the search path uses it', (t) => {
  for (const bad of ['', '.', '..', 'a/b', 'a\0']) t.is(code(() => searchDirFor('/r/%SESSNAME%', bad)), 'EINVAL', bad);
  t.is(searchDirFor('/r/plain', '..'), '/r/plain', 'no %SESSNAME%: the name is not used');
  t.is(searchDirFor('/r/%SESSNAME%/devs', 's1'), '/r/s1/devs');
});

test('isInside', (t) => {
  t.true(isInside('/', '/etc'));
  t.true(isInside('/srv', '/srv/a'));
  t.true(isInside('/srv', '/srv'));
  t.false(isInside('/srv', '/srv2/a'));
  t.false(isInside('/srv', '/etc'));
});

test('real paths: ENOENT, symlinks inside allowed, symlinks out EPERM', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ibnbd-devpath-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const search = join(root, 'exports');
  mkdirSync(join(search, 's1', 'dev'), { recursive: true });
  writeFileSync(join(search, 's1', 'disk'), 'x');
  writeFileSync(join(search, 's1', 'dev', 'ram0'), 'x');
  writeFileSync(join(root, 'secret'), 'x');
  symlinkSync(join(search, 's1', 'disk'), join(search, 's1', 'alias'));
  symlinkSync(join(root, 'secret'), join(search, 's1', 'escape'));
  symlinkSync('../../secret', join(search, 's1', 'relescape'));
  symlinkSync(root, join(search, 's1', 'updir'));
  const tpl = join(search, '%SESSNAME%');

  const r = await resolveDevicePath(tpl, 's1', 'disk');
  t.is(r.realPath, join(search, 's1', 'disk'));
  t.is((await resolveDevicePath(tpl, 's1', '/dev/ram0')).realPath, join(search, 's1', 'dev', 'ram0'), 'absolute stays inside');
  t.is((await resolveDevicePath(tpl, 's1', 'alias')).realPath, join(search, 's1', 'disk'), 'symlink inside is fine');
  t.is(await codeOf(resolveDevicePath(tpl, 's1', 'escape')), 'EPERM');
  t.is(await codeOf(resolveDevicePath(tpl, 's1', 'relescape')), 'EPERM');
  t.is(await codeOf(resolveDevicePath(tpl, 's1', 'updir/secret')), 'EPERM');
  t.is(await codeOf(resolveDevicePath(tpl, 's1', 'missing')), 'ENOENT');
  t.is(await codeOf(resolveDevicePath(tpl, 's2', 'disk')), 'ENOENT', 'other session: other namespace');
  t.is(await codeOf(resolveDevicePath(tpl, 's1', '../s1/disk')), 'EINVAL');

  // the search directory itself behind a symlink is resolved before comparing
  symlinkSync(search, join(root, 'link-to-exports'));
  t.is((await resolveDevicePath(join(root, 'link-to-exports', '%SESSNAME%'), 's1', 'disk')).realPath, join(search, 's1', 'disk'));
});
