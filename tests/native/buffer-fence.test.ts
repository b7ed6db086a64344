// The RDMA server's BufferFence (native/transport/rdma/buffer_fence.h): a request failed over to another
// path keeps its buffer id, and must not run beside the copy the dead path is still executing.
// In the guest the overlap needs a failover under load; here four threads contend for a few
// buffer ids, so both hand-over orders (waiter queued first, Release first) happen every run.
import test from 'ava';
import { loadTestAddon } from '../../harness/test-addon.js';

const { bufferFenceCheck } = loadTestAddon<{
  bufferFenceCheck(threads: number, buffers: number, iterations: number): { ran: number; overlaps: number; waited: number };
}>();

test('every request runs once and never beside another of its buffer id', (t) => {
  for (const buffers of [1, 3, 64]) {
    const r = bufferFenceCheck(4, buffers, 50_000);
    t.is(r.ran, 4 * 50_000, `${buffers} buffer ids: every request ran, none left waiting`);
    t.is(r.overlaps, 0, `${buffers} buffer ids: two requests of one buffer id never ran at once`);
    if (buffers === 1) t.true(r.waited > 0, `requests did wait for their buffer id: ${JSON.stringify(r)}`);
  }
});

test('bad arguments are a RangeError, not a crash', (t) => {
  t.throws(() => bufferFenceCheck(0, 1, 1), { instanceOf: RangeError });
  t.throws(() => bufferFenceCheck(1, 0, 1), { instanceOf: RangeError });
});
