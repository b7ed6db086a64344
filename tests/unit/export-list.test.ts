// Named exports as the server parses them (src/server/export-list.ts): both forms give one list,
// and every malformed entry is refused with the entry's name and the reason.
import test from 'ava';
import { parseExportList, parseExportOption } from '../../src/server/export-list.js';
import { validateServerOptions } from '../../src/server/options.js';
import { IbnbdError } from '../../src/errors.js';

test('--export NAME=PATH and NAME=PATH,ro', (t) => {
  t.deepEqual(parseExportOption('vm1=/dev/vg0/vm1'), { name: 'vm1', path: '/dev/vg0/vm1', readOnly: false });
  t.deepEqual(parseExportOption('iso=/srv/a=b.iso,ro'), { name: 'iso', path: '/srv/a=b.iso', readOnly: true }, 'the first "=" splits');
});

test('the file\'s table: a path, or { path, read-only }', (t) => {
  const list = parseExportList({ vm1: '/dev/vg0/vm1', iso: { path: '/srv/x.iso', 'read-only': true }, b: { path: '/srv/b.img' } });
  t.deepEqual([...list.values()], [
    { name: 'vm1', path: '/dev/vg0/vm1', readOnly: false },
    { name: 'iso', path: '/srv/x.iso', readOnly: true },
    { name: 'b', path: '/srv/b.img', readOnly: false },
  ]);
});

test('malformed entries are EINVAL naming the entry', (t) => {
  const cases: Array<[Parameters<typeof parseExportList>[0], RegExp]> = [
    [['x'], /export "x": expected NAME=PATH/],
    [['=/srv/a'], /expected NAME=PATH/],
    [['a/b=/srv/a'], /export "a\/b": a name is one path component/],
    [['..=/srv/a'], /export "\.\.": a name is one path component/],
    [[`${'n'.repeat(255)}=/srv/a`], /a name is 1\.\.254 bytes/],
    [['a=srv/a'], /export "a": path "srv\/a" must be absolute/],
    [['a=/srv/a', 'a=/srv/b'], /export "a": listed twice/],
    [{ a: 5 }, /export "a": expected a path or a table/],
    [{ a: { path: '/x', 'read-only': 'yes' } }, /read-only must be true or false/],
    [{ a: { path: '/x', mode: 'ro' } }, /unknown key "mode"/],
    [{ a: {} }, /export "a": path must be a string/],
  ];
  for (const [raw, re] of cases) {
    const e = t.throws(() => parseExportList(raw), { instanceOf: IbnbdError });
    t.is(e!.code, 'EINVAL');
    t.regex(e!.message, re);
  }
});

test('a server needs a search path or named exports; either alone will do', (t) => {
  t.throws(() => validateServerOptions({}), { message: /--dev-search-path or --export is required/ });
  const o = validateServerOptions({ export: ['vm1=/srv/vm1.img'] });
  t.is(o.devSearchPath, undefined);
  t.is(o.exports.get('vm1')?.path, '/srv/vm1.img');
  t.is(validateServerOptions({ devSearchPath: '/srv' }).exports.size, 0);
});
