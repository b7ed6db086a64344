// The server daemon's metrics (ibnbd_server_…): per device × session its IO by operation (the
// native device table's counters), per session its state and time up, per path its state and
// counters; the IO threads' polling (--poll-us). docs/operations.md, "Metrics", lists every family.
import type { Registry } from 'prom-client';
import type { MetricsAddress } from './address.js';
import { newRegistry, serveMetrics, type MetricsServer } from './http.js';
import type { NativeServerStats } from '../backend/server-native.js';
import type { ExportServer } from '../server/server.js';
import { ioFamilies, labelPaths, pathFamilies, perScrape, pollFamilies, stateFamilies } from './families.js';
import { ioThreadStats } from '../backend/transport.js';

/**
 * One session per name: a client that lost its last path and came back has a new session while
 * the old one may still be going down here, and two series with the same labels would make the
 * whole scrape invalid. The newest is the one its client uses.
 */
function newestByName(sessions: NativeServerStats['sessions']): NativeServerStats['sessions'] {
  const newest = new Map<string, NativeServerStats['sessions'][number]>();
  for (const s of sessions) {
    const had = newest.get(s.sessname);
    if (!had || s.upSeconds < had.upSeconds) newest.set(s.sessname, s);
  }
  return [...newest.values()];
}

export function registerServerMetrics(registry: Registry, server: ExportServer, ioStats: () => NativeServerStats['sessions']): void {
  const snapshot = perScrape(() =>
    newestByName(ioStats()).map((s) => {
      // the device's name is the JS side's (the export it opened); a device the native table
      // still has but JS has just released is left out until it is gone
      const session = server.sessions.get(s.sessionId);
      const devices = s.devices.flatMap((d) => {
        const dev = session?.devices.get(d.deviceId);
        return dev ? [{ labels: { session: s.sessname, device: dev.exp.name }, inflight: d.inflight, io: d.io }] : [];
      });
      return { ...s, devices };
    }),
  );
  ioFamilies(registry, 'ibnbd_server', ['session', 'device'], () => snapshot().flatMap((s) => s.devices));
  // a session exists natively from its first path up to its last path gone: "connected" while
  // it is listed, and its series go away with it
  stateFamilies(registry, 'ibnbd_server_session', 'session', ['session'], ['connected'],
    () => snapshot().map((s) => ({ labels: { session: s.sessname }, state: 'connected', seconds: s.upSeconds })));
  pathFamilies(
    registry,
    'ibnbd_server',
    // the client's address without its port (a reconnect dials from another one), and ours
    () => labelPaths(snapshot().map((s) => ({ session: s.sessname, paths: s.paths })), (p) => `${p.src.replace(/:\d+$/, '')},${p.dst}`),
    { failovers: false, requestsHelp: 'Requests received on the path over its life' },
  );
  pollFamilies(registry, 'ibnbd_server', perScrape(ioThreadStats));
}

/** The server's /metrics endpoint: its families and the process metrics. */
export function startServerMetrics(
  addr: MetricsAddress,
  server: ExportServer,
  ioStats: () => NativeServerStats['sessions'],
  warn: (line: string) => void,
): Promise<MetricsServer> {
  const registry = newRegistry();
  registerServerMetrics(registry, server, ioStats);
  return serveMetrics(addr, registry, warn);
}
