// The client daemon at scale: 256 devices mapped on one daemon, every vhost-user socket answering,
// and what an idle mapped device costs in memory. What it measures is the client daemon's own
// (its vhost devices and mappings), so it runs on the host only, over TCP, and not again in the
// shared suite's RDMA guest, where it cost about 90 s of the longest guest run.
import test from 'ava';
import net from 'node:net';
import { controlRequest } from '../../src/control/index.js';
import { ibnbd, ibnbdJson, rssBytes, startDaemonsWithFiles } from '../support/daemons.js';
import { MiB } from '../support/vhost-helpers.js';
import { scaled } from '../support/transport-under-test.js';

async function setup(t: import('ava').ExecutionContext, files: Record<string, number>) {
  const { server, client } = await startDaemonsWithFiles(t, 'clientscale', files);
  const mapJson = (m: string) => ibnbdJson<{ device: Record<string, any> }>(['map', m, '--control', client.control]);
  return { client, mapJson, at: `path=ip:127.0.0.1:${server.port}` };
}

/** GET_FEATURES on a vhost-user socket: proves a back-end answers there. */
function vhostGetFeatures(path: string): Promise<bigint> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(path);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer on ${path}`));
    }, scaled(5_000));
    let buf = Buffer.alloc(0);
    sock.on('connect', () => {
      const hdr = Buffer.alloc(12);
      hdr.writeUInt32LE(1, 0); // VHOST_USER_GET_FEATURES
      hdr.writeUInt32LE(1, 4); // version 1
      sock.write(hdr);
    });
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 20) {
        clearTimeout(timer);
        sock.destroy();
        resolve(buf.readBigUInt64LE(12));
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

test('scale: 256 devices mapped on one client daemon, every socket answering; memory per idle device', async (t) => {
  t.timeout(scaled(240_000));
  const files: Record<string, number> = {};
  for (let i = 0; i < 256; i++) files[`d${i}.img`] = MiB;
  const s = await setup(t, files);
  // warm up: one session and device, so the baseline includes the daemon's fixed costs
  await s.mapJson(`sessname=warm ${s.at} device_path=d0.img access_mode=ro`);
  await ibnbd(['unmap', 'ibnbd0', '--control', s.client.control]);
  const before = rssBytes(s.client.proc.pid!);
  // straight to the control socket: the CLI's own start-up would be most of the test's time
  for (let i = 0; i < 256; i++) {
    await controlRequest(s.client.control, { cmd: 'map', map: `sessname=s${i % 8} ${s.at} device_path=d${i}.img` });
  }
  const after = rssBytes(s.client.proc.pid!);
  const list = await ibnbdJson<{ devices: any[] }>(['list', '--control', s.client.control]);
  t.is(list.devices.length, 256);
  const features = await Promise.all(list.devices.map((d) => vhostGetFeatures(d.socket)));
  t.true(features.every((f) => (f & (1n << 32n)) !== 0n), 'every socket answers GET_FEATURES with VERSION_1');
  const perDevice = (after - before) / 256;
  t.log(`client daemon RSS ${(before / MiB).toFixed(1)} MiB → ${(after / MiB).toFixed(1)} MiB: ${(perDevice / 1024).toFixed(1)} KiB per idle mapped device`);
  t.true(perDevice <= MiB, `at most 1 MiB per idle device (measured ${(perDevice / 1024).toFixed(1)} KiB)`);
});

