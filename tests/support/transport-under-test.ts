// Which transport and address the shared server/client suite (SHARED_SUITE_FILES) runs over. The
// same test files run over TCP on this host (the default) and over RDMA inside a soft-RoCE guest
// (tests/rdma/rdma-suite.test.ts sets the environment), so nothing in them names a transport or an
// address: they take both from here.
//   IBNBD_TEST_TRANSPORT   tcp (default) | rdma
//   IBNBD_TEST_HOST        the IPv4/IPv6 address servers listen on and clients dial (default
//                          127.0.0.1; over RDMA an address with an RDMA device, e.g. 10.0.2.15)
//   IBNBD_TEST_TIME_SCALE  factor for the tests' own waiting bounds (default 1): node in a TCG guest
//                          runs 10–17× slower, so a bound that only guards against a hang grows
//                          with it. Timings the tests assert as behaviour do not use it.
import { isIP } from 'node:net';
import type { TransportKind } from '../../src/transport/paths.js';

function fromEnv(): { transport: TransportKind; host: string; timeScale: number } {
  const transport = process.env.IBNBD_TEST_TRANSPORT ?? 'tcp';
  if (transport !== 'tcp' && transport !== 'rdma') {
    throw new Error(`IBNBD_TEST_TRANSPORT=${transport}: must be tcp or rdma`);
  }
  const host = process.env.IBNBD_TEST_HOST ?? '127.0.0.1';
  if (isIP(host) === 0) throw new Error(`IBNBD_TEST_HOST=${host}: must be an IPv4 or IPv6 address`);
  const scaleText = process.env.IBNBD_TEST_TIME_SCALE ?? '1';
  const timeScale = Number(scaleText);
  if (!/^\d+(\.\d+)?$/.test(scaleText) || !(timeScale >= 1 && timeScale <= 100)) {
    throw new Error(`IBNBD_TEST_TIME_SCALE=${scaleText}: must be a number in 1..100`);
  }
  return { transport, host, timeScale };
}

const env = fromEnv();

/** The transport every session and server of the shared suite uses. */
export const TEST_TRANSPORT: TransportKind = env.transport;
/** The address servers listen on and clients dial. */
export const TEST_HOST = env.host;

/** A native listen/dial endpoint on TEST_HOST (port 0: the server picks one and reports it). */
export function testEndpoint(port = 0): { kind: 'ip'; addr: string; port: number } {
  return { kind: 'ip', addr: TEST_HOST, port };
}

/** "ADDR:PORT" as the server's --listen and validateServerOptions take it. */
export function testListen(port: number): string {
  return TEST_HOST.includes(':') ? `[${TEST_HOST}]:${port}` : `${TEST_HOST}:${port}`;
}

/** The map string's path value for a server on `port` (also what the client reports as dst). */
export function testMapPath(port: number): string {
  return `ip:${testListen(port)}`;
}

/** The map-string words that reach a server on `port` over the transport under test. */
export function testMapTarget(port: number): string {
  return `path=${testMapPath(port)} transport=${TEST_TRANSPORT}`;
}

/** A waiting bound that only guards against a hang, scaled for slow (emulated) machines. */
export function scaled(ms: number): number {
  return Math.round(ms * env.timeScale);
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * How the transport reports a path's address on TEST_HOST (a client's path_states dst, a server
 * session's path src/dst). TCP: ip:ADDR:PORT. RDMA: as RTRS's sysfs files do, ip:ADDR without the
 * port (tests/rdma/rdma.test.ts and rdma-daemons.test.ts hold that form). port undefined: any port.
 */
export function reportedAddress(port?: number): RegExp {
  const at = TEST_TRANSPORT === 'rdma' ? `ip:${TEST_HOST}` : testMapPath(0).replace(/:0$/, ':PORT');
  return new RegExp(`^${escapeRe(at).replace('PORT', port === undefined ? '\\d+' : String(port))}$`);
}
