// The addon loads on a machine without RDMA and is really linked with libvhost-user, rdma-core
// and liburing: the binary is bound with -z now (a missing symbol fails the load) and each
// library answers one real call.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { buildInfo, linkProbe, loadNative, nativeAddonPath } from '../../src/backend/native.js';

test('reports the versions it was built against', (t) => {
  const info = buildInfo();
  t.regex(info.libvhostUser, /^qemu 7\.2\+dfsg/);
  t.regex(info.libibverbs, /^\d+\.\d+/);
  t.regex(info.librdmacm, /^\d+\.\d+/);
  t.regex(info.liburing, /^2\.\d+/);
  t.is(info.sanitize, process.env.IBNBD_SANITIZE === '1');
  // the product addon carries the product only; test and benchmark bindings are in ibnbd_test.node
  t.deepEqual(Object.keys(loadNative()).sort(), [
    'NativeClientSession', 'NativeServer', 'NativeVhostBlk', 'buildInfo', 'configureIoThreads', 'ioThreadCount', 'ioThreadStats', 'linkProbe', 'probeDevice',
    'sdNotify', 'setLogLevel', 'setLogSink', 'setPollUs',
  ]);
});

test('links libibverbs, librdmacm and liburing, bound at load', (t) => {
  const dyn = execFileSync('readelf', ['-d', nativeAddonPath()], { encoding: 'utf8' });
  for (const lib of ['libibverbs.so.1', 'librdmacm.so.1', 'liburing.so.2']) {
    t.true(dyn.includes(`Shared library: [${lib}]`), `NEEDED ${lib}`);
  }
  t.regex(dyn, /FLAGS_1\)\s+Flags: NOW/);
  // libvhost-user is compiled in: its symbols are defined in the addon itself
  const syms = execFileSync('nm', ['-D', '--defined-only', nativeAddonPath()], { encoding: 'utf8' });
  for (const s of ['vu_init', 'vu_dispatch', 'vu_queue_pop', 'vu_queue_push']) {
    t.regex(syms, new RegExp(`\\bT ${s}$`, 'm'), `defines ${s}`);
  }
});

test('each library answers a real call', (t) => {
  const p = linkProbe();
  t.is(p.uringInit, 0, 'io_uring_queue_init works');
  t.true(p.vuInit, 'vu_init works on a socket pair');
  // no RDMA device here, but the verbs and rdma_cm calls ran and reported it
  t.true(p.ibvDevices >= 0);
  t.true(p.rdmaCmChannel || p.rdmaCmErrno > 0);
});
