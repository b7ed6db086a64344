// The access-mode counter alone (the two-session matrix over the network is in server-io.test.ts).
import test from 'ava';
import { WriterCount, accessModeFromWire } from '../../src/server/access.js';
import type { AccessMode } from '../../src/proto/ibnbd.js';

function tryAcquire(c: WriterCount, m: AccessMode): string {
  try {
    c.acquire(m);
    return 'ok';
  } catch (e) {
    return (e as { code: string }).code;
  }
}

test('ro is always allowed and never counts', (t) => {
  const c = new WriterCount();
  for (let i = 0; i < 5; i++) t.is(tryAcquire(c, 'ro'), 'ok');
  t.is(c.writers, 0);
  t.is(tryAcquire(c, 'rw'), 'ok');
  t.is(tryAcquire(c, 'ro'), 'ok');
});

test('rw only without a writer; migration while fewer than two', (t) => {
  const matrix: Array<[AccessMode, AccessMode, string]> = [
    ['rw', 'rw', 'EPERM'],
    ['rw', 'migration', 'ok'],
    ['migration', 'rw', 'EPERM'],
    ['migration', 'migration', 'ok'],
    ['ro', 'rw', 'ok'],
  ];
  for (const [first, second, want] of matrix) {
    const c = new WriterCount();
    c.acquire(first);
    t.is(tryAcquire(c, second), want, `${first} then ${second}`);
  }
  const c = new WriterCount();
  c.acquire('rw');
  c.acquire('migration');
  t.is(tryAcquire(c, 'migration'), 'EPERM', 'third writer');
  t.is(tryAcquire(c, 'rw'), 'EPERM');
  c.release('rw');
  t.is(tryAcquire(c, 'rw'), 'EPERM', 'migration writer still holds it');
  t.is(tryAcquire(c, 'migration'), 'ok');
  c.release('migration');
  c.release('migration');
  t.is(c.writers, 0);
  t.is(tryAcquire(c, 'rw'), 'ok');
});

test('release without a writer is a bug, wire values map, unknown is EINVAL', (t) => {
  t.throws(() => new WriterCount().release('rw'));
  t.is(accessModeFromWire(0), 'ro');
  t.is(accessModeFromWire(1), 'rw');
  t.is(accessModeFromWire(2), 'migration');
  t.is((t.throws(() => accessModeFromWire(3)) as unknown as { code: string }).code, 'EINVAL');
});
