// The shared suite's transport selection (transport-under-test.ts): defaults, and environment
// values it refuses with the variable's name before any test runs.
import test from 'ava';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const MODULE = fileURLToPath(new URL('../support/transport-under-test.js', import.meta.url));
const PROBE = `const m = await import(${JSON.stringify(MODULE)}); console.log(JSON.stringify({ transport: m.TEST_TRANSPORT, host: m.TEST_HOST, listen: m.testListen(7), target: m.testMapTarget(7), scaled: m.scaled(1000), any: String(m.reportedAddress()), seven: m.reportedAddress(7).test(process.argv[1]) }))`;

function probe(env: Record<string, string>, sample = ''): Promise<{ code: number; out: any; stderr: string }> {
  const clean: NodeJS.ProcessEnv = { ...process.env, ...env };
  for (const k of ['IBNBD_TEST_TRANSPORT', 'IBNBD_TEST_HOST', 'IBNBD_TEST_TIME_SCALE']) if (!(k in env)) delete clean[k];
  return new Promise((resolve) => {
    execFile(process.execPath, ['--input-type=module', '-e', PROBE, sample], { env: clean, encoding: 'utf8', timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? 1 : 0, out: err ? null : JSON.parse(stdout), stderr });
    });
  });
}

test('defaults: tcp on 127.0.0.1, no time scaling; TCP reports ADDR:PORT', async (t) => {
  const r = await probe({}, 'ip:127.0.0.1:7');
  t.is(r.code, 0, r.stderr);
  t.like(r.out, { transport: 'tcp', host: '127.0.0.1', listen: '127.0.0.1:7', target: 'path=ip:127.0.0.1:7 transport=tcp', scaled: 1000, seven: true });
});

test('rdma on an IPv6 address, scaled bounds; RDMA reports ip:ADDR without the port', async (t) => {
  const r = await probe({ IBNBD_TEST_TRANSPORT: 'rdma', IBNBD_TEST_HOST: 'fd00::5', IBNBD_TEST_TIME_SCALE: '15' }, 'ip:fd00::5');
  t.is(r.code, 0, r.stderr);
  t.like(r.out, { transport: 'rdma', host: 'fd00::5', listen: '[fd00::5]:7', target: 'path=ip:[fd00::5]:7 transport=rdma', scaled: 15000, seven: true });
});

for (const [name, value, want] of [
  ['IBNBD_TEST_TRANSPORT', 'roce', /IBNBD_TEST_TRANSPORT=roce: must be tcp or rdma/],
  ['IBNBD_TEST_HOST', 'localhost', /IBNBD_TEST_HOST=localhost: must be an IPv4 or IPv6 address/],
  ['IBNBD_TEST_TIME_SCALE', '0.5', /IBNBD_TEST_TIME_SCALE=0.5: must be a number in 1..100/],
  ['IBNBD_TEST_TIME_SCALE', '10x', /IBNBD_TEST_TIME_SCALE=10x/],
] as const) {
  test(`${name}=${value} is refused with the variable's name`, async (t) => {
    const r = await probe({ [name]: value });
    t.is(r.code, 1);
    t.regex(r.stderr, want);
  });
}
