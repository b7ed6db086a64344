// Migration's dirty log on the vhost-user-blk device: what QEMU does to a back-end while it
// migrates a VM (SET_LOG_BASE with a shared-memory log, SET_VRING_ADDR with the log flag,
// SET_FEATURES with VHOST_F_LOG_ALL), done by a hand-written front-end (ibnbd-vhost-raw
// dirty-log) at QD32 over a real session to a real server. Every request puts its read data and
// its status byte in random pages, so the log can be held against the pages the device wrote.
import test from 'ava';
import { join } from 'node:path';
import { MiB, blkio, mapDevice, optionsFromRsp, raw, serveFile, startDevice } from '../support/vhost-helpers.js';

test.serial('the dirty log covers every page the device wrote while logging was on, and nothing after it was turned off', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'log.sock')));
  t.false(dev.vhost.stats().dirtyLog, 'no logging before a front-end asks');
  const r = await raw(['--path', dev.socket, '--timeout-ms', '10000', 'dirty-log']);
  t.is(r.code, 0, r.stderr);
  const j = r.json;
  t.log(JSON.stringify(j));
  t.true(j.ok, JSON.stringify(j));
  t.deepEqual(j.offered, { logAll: true, logShmfd: true });
  t.is(j.errors, 0, 'every request succeeded');
  // 512 requests with logging on, about half reads: hundreds of distinct pages to hold
  t.true(j.pagesExpected > 300, JSON.stringify(j));
  t.is(j.missing, 0, 'no page the device wrote is missing from the log');
  t.true(j.usedRingLogged, 'the used ring is logged');
  t.true(j.logKicks > 0, 'the log call eventfd was kicked');
  t.true(j.pagesMarked >= j.pagesExpected);
  t.is(j.markedAfterOff, 0, 'nothing is marked once VHOST_F_LOG_ALL is off');
  t.true(dev.vhost.stats().dirtyPages >= j.pagesExpected, 'marked pages are counted');
  // the device serves the next front-end normally
  const v = await blkio(['--path', dev.socket, '--count', '16', 'verify']);
  t.is(v.code, 0, JSON.stringify(v.json));
  t.false(dev.vhost.stats().dirtyLog, 'logging ends with its front-end');
});

test.serial('a log too small for the guest memory ends the connection instead of writing past it', async (t) => {
  const srv = serveFile(t, 16 * MiB);
  const m = await mapDevice(t, srv.port, 'disk.img');
  const dev = startDevice(t, optionsFromRsp(m, join(srv.dir, 'small.sock')));
  const r = await raw(['--path', dev.socket, '--timeout-ms', '10000', 'dirty-log-small']);
  t.is(r.code, 0, r.stderr);
  t.deepEqual(r.json, { acked: true, closed: true });
  t.true(dev.vhost.stats().protocolErrors >= 1);
  const v = await blkio(['--path', dev.socket, '--count', '16', 'verify']);
  t.is(v.code, 0, 'the device serves the next front-end');
});
