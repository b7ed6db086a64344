// The client daemon's metrics (ibnbd_client_…): per mapped device its IO by operation (the
// vhost device's native counters, one set per virtqueue summed at the scrape) and its state;
// per session its state; per path of a session its state and counters (the transport's); the IO
// threads' polling (--poll-us).
// docs/operations.md, "Metrics", lists every family.
import type { Registry } from 'prom-client';
import type { MetricsAddress } from './address.js';
import { newRegistry, serveMetrics, type MetricsServer } from './http.js';
import type { IbnbdClient } from '../client/client.js';
import { ioFamilies, labelPaths, pathFamilies, perScrape, pollFamilies, stateFamilies } from './families.js';
import { ioThreadStats } from '../backend/transport.js';

export function registerClientMetrics(registry: Registry, client: IbnbdClient): void {
  // one pass over the devices and sessions per scrape, native counters copied once each
  const snapshot = perScrape(() => {
    const now = Date.now();
    const { devices, sessions } = client.metricsSources();
    return {
      devices: devices.map((d) => {
        const stats = d.vhost.stats(true);
        return {
          labels: { device: d.name },
          inflight: stats.inflight,
          io: stats.io,
          state: d.state,
          seconds: (now - d.since.getTime()) / 1000,
        };
      }),
      sessions: sessions.map((s) => ({
        labels: { session: s.sessname },
        state: s.state,
        seconds: (now - s.stateSince) / 1000,
        paths: s.native.paths(),
      })),
    };
  });
  ioFamilies(registry, 'ibnbd_client', ['device'], () => snapshot().devices);
  stateFamilies(registry, 'ibnbd_client_device', 'device', ['device'], ['open', 'reconnecting', 'closed'], () => snapshot().devices);
  stateFamilies(registry, 'ibnbd_client_session', 'session', ['session'], ['open', 'closed'], () => snapshot().sessions);
  pathFamilies(
    registry,
    'ibnbd_client',
    () => labelPaths(snapshot().sessions.map((s) => ({ session: s.labels.session, paths: s.paths })), (p) => p.dst),
    { failovers: true, requestsHelp: 'Requests completed on the path, any result, over its reconnects' },
  );
  pollFamilies(registry, 'ibnbd_client', perScrape(ioThreadStats));
}

/** The client daemon's /metrics endpoint: its families and the process metrics. */
export function startClientMetrics(addr: MetricsAddress, client: IbnbdClient, warn: (line: string) => void): Promise<MetricsServer> {
  const registry = newRegistry();
  registerClientMetrics(registry, client);
  return serveMetrics(addr, registry, warn);
}
