// The session core both wires share (native/transport/core/): the reconnect loop's back-off and
// give-up, and the heartbeat / io_timeout verdicts, driven with a scripted dial and a scripted
// path (native/testing/session_core_check.cc). The wires' own tests (tests/daemons/fault-*,
// the soft-RoCE guests) show the same rules end to end; here every edge is hit on every run.
import test from 'ava';
import { loadTestAddon } from '../../harness/test-addon.js';

interface RunOpts {
  delayMs?: number; maxAttempts?: number; failures?: number; otherUp?: boolean;
  lossDuringDial?: boolean; runMs?: number; dialMs?: number;
}
interface RunResult { dials: number[]; gaveUp: number[]; stopMs: number; dialsAfterStop: number }
const { reconnectorRun, heartbeatTicks } = loadTestAddon<{
  reconnectorRun(o: RunOpts): RunResult;
  heartbeatTicks(script: string, missedMax: number, ioTimeoutMs: number): { verdicts: string[]; rttSeen: boolean };
}>();

const gaps = (d: number[]): number[] => d.slice(1).map((x, i) => x - d[i]!);

test('no path left: the first attempt at once, then 100 ms doubling up to reconnect_delay', (t) => {
  const r = reconnectorRun({ delayMs: 400, failures: 4, runMs: 1800 });
  t.is(r.dials.length, 5, `four failed dials and the one that succeeded, no more: ${JSON.stringify(r)}`);
  t.true(r.dials[0]! < 50, `first attempt right after the loss (${r.dials[0]} ms)`);
  const g = gaps(r.dials);
  const want = [100, 200, 400, 400];  // capped at delayMs
  want.forEach((w, i) => t.true(g[i]! >= w - 5 && g[i]! < w + 250, `gap ${i + 1}: ${g[i]} ms, want ≈${w}`));
  t.deepEqual(r.gaveUp, []);
});

test('another path up: every attempt waits reconnect_delay, the first too (RTRS)', (t) => {
  const r = reconnectorRun({ delayMs: 300, failures: 1, otherUp: true, runMs: 1000 });
  t.is(r.dials.length, 2, JSON.stringify(r));
  t.true(r.dials[0]! >= 295 && r.dials[0]! < 550, `first attempt after reconnect_delay (${r.dials[0]} ms)`);
  t.true(gaps(r.dials)[0]! >= 295, `then reconnect_delay again (${gaps(r.dials)[0]} ms)`);
});

test('max_reconnect_attempts: the path is given up after that many failed dials in a row', (t) => {
  const r = reconnectorRun({ delayMs: 100, failures: 100, maxAttempts: 3, runMs: 900 });
  t.is(r.dials.length, 3, JSON.stringify(r));
  t.deepEqual(r.gaveUp, [0]);
  const never = reconnectorRun({ delayMs: 100, failures: 100, maxAttempts: 0, runMs: 300 });
  t.is(never.dials.length, 0, 'max 0: a lost path is never dialled');
  t.deepEqual(never.gaveUp, [0]);
});

test('a loss reported while the path is being dialled is kept: the path is dialled again', (t) => {
  const r = reconnectorRun({ delayMs: 200, lossDuringDial: true, dialMs: 50, runMs: 800 });
  t.is(r.dials.length, 2, `the successful dial, then one more for the loss during it: ${JSON.stringify(r)}`);
  const once = reconnectorRun({ delayMs: 200, dialMs: 50, runMs: 600 });
  t.is(once.dials.length, 1, 'without a second loss, one successful dial and nothing more');
});

test('Stop() ends the loop at once, between attempts, and nothing is dialled after it', (t) => {
  const r = reconnectorRun({ delayMs: 5000, failures: 100, otherUp: true, runMs: 200 });
  t.is(r.dials.length, 0, 'the first attempt was still 5 s away');
  t.true(r.stopMs < 50, `Stop() took ${r.stopMs} ms`);
  t.is(r.dialsAfterStop, 0);
});

test('heartbeats: one outstanding at a time, any receive clears the misses, more than missed_max is death', (t) => {
  t.deepEqual(heartbeatTicks('tttt', 2, 0).verdicts, ['send', 'wait', 'wait', 'missed']);
  t.deepEqual(heartbeatTicks('ttrtt', 2, 0).verdicts, ['send', 'wait', 'send', 'wait'], 'a receive re-arms the send');
  const acked = heartbeatTicks('twat', 5, 0);
  t.deepEqual(acked.verdicts, ['send', 'send']);
  t.true(acked.rttSeen, 'the ack gives the round trip');
});

test('io_timeout: outstanding requests with no completion for the timeout kill the path, even with heartbeats answered', (t) => {
  t.deepEqual(heartbeatTicks('stwawat', 5, 100).verdicts, ['send', 'stalled'], 'answered heartbeats do not hide a stalled request');
  t.deepEqual(heartbeatTicks('sstwcawat', 5, 100).verdicts, ['send', 'send'], 'one completion in time keeps the busy path alive');
  t.deepEqual(heartbeatTicks('swwwt', 5, 0).verdicts, ['send'], 'io_timeout 0: off');
  t.deepEqual(heartbeatTicks('wwwt', 5, 100).verdicts, ['send'], 'an idle path never times out');
});
