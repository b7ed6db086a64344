// declared-tests.ts: the titles a test file declares, found without running it, named as
// `ava --tap` names them; the RDMA suite's guest run is compared with them.
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { avaFilePrefix, declaredTests } from '../support/declared-tests.js';

const root = mkdtempSync(join(tmpdir(), 'ibnbd-declared-'));
test.after.always(() => rmSync(root, { recursive: true, force: true }));

// A file using every form of declaration, and one that never runs its bodies: a body that ran
// would leave a marker file behind.
const SAMPLE = `
import test from 'ava';
import { writeFileSync } from 'node:fs';
const ran = () => writeFileSync(new URL('./ran', import.meta.url), 'x');
test.before(ran);
test.after.always(ran);
test.beforeEach(ran);
test('plain', ran);
test.serial('serial', ran);
test.skip('skipped', ran);
test.todo('to do');
test.serial.failing('failing', ran);
for (const n of [1, 2]) test(\`loop \${n}\`, ran);
if (process.env.IBNBD_TEST_TRANSPORT === 'rdma') test('rdma only', ran);
`;

test('every declared title, prefixed by the file as ava names it; no test body runs', async (t) => {
  mkdirSync(join(root, 'dist', 'tests', 'group'), { recursive: true });
  writeFileSync(join(root, 'dist', 'tests', 'group', 'sample.test.js'), SAMPLE);
  writeFileSync(join(root, 'dist', 'tests', 'top.test.js'), "import test from 'ava';\ntest.serial('one', () => {});\n");
  const env = { ...process.env };
  delete env.IBNBD_TEST_TRANSPORT;
  const titles = await declaredTests(['dist/tests/group/sample.test.js', 'dist/tests/top.test.js'], root, env);
  t.deepEqual(titles, [
    'group › sample › plain',
    'group › sample › serial',
    'group › sample › skipped',
    'group › sample › to do',
    'group › sample › failing',
    'group › sample › loop 1',
    'group › sample › loop 2',
    'top › one',
  ]);
  t.throws(() => rmSync(join(root, 'dist', 'tests', 'group', 'ran')), { code: 'ENOENT' }, 'no hook or test body ran');
  // the environment given is the one the files see
  const rdma = await declaredTests(['dist/tests/group/sample.test.js'], root, { ...env, IBNBD_TEST_TRANSPORT: 'rdma' });
  t.true(rdma.includes('group › sample › rdma only'));
});

test('a file that cannot be imported is an error naming it', async (t) => {
  mkdirSync(join(root, 'dist', 'tests'), { recursive: true });
  writeFileSync(join(root, 'dist', 'tests', 'broken.test.js'), "import test from 'ava';\nthrow new Error('boom at import');\n");
  const e = await t.throwsAsync(declaredTests(['dist/tests/broken.test.js'], root));
  t.regex(e!.message, /broken\.test\.js[\s\S]*boom at import/);
});

test('avaFilePrefix: the path under dist/tests, without .test.js, joined with ›', (t) => {
  t.is(avaFilePrefix('dist/tests/daemons/server-io.test.js'), 'daemons › server-io');
  t.is(avaFilePrefix('./dist/tests/native/server-stop.test.js'), 'native › server-stop');
});
