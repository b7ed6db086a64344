// The Prometheus endpoint of both daemons (--metrics ADDR:PORT, off unless given): GET /metrics
// answers the registry in the text exposition format; any other path is 404. A scrape is the
// only time the metrics code runs: the counts themselves are kept natively by the IO threads.
import { createServer, type Server } from 'node:http';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { IbnbdError, errorText, isErrnoName } from '../errors.js';
import type { MetricsAddress } from './address.js';

/** A registry with the process metrics (CPU, memory, descriptors, event loop lag, GC) under
 *  their usual names, process_* and nodejs_*, which dashboards already know. */
export function newRegistry(): Registry {
  const defaults = new Registry();
  collectDefaultMetrics({ register: defaults });
  const registry = new Registry();
  // nodejs_active_{handles,requests,resources}_total are gauges named like counters, which
  // `promtool check metrics` refuses; the same counts by type stay (nodejs_active_handles, …)
  for (const m of defaults.getMetricsAsArray()) {
    if (!/^nodejs_active_\w+_total$/.test(m.name)) registry.registerMetric(m as unknown as Parameters<Registry['registerMetric']>[0]);
  }
  return registry;
}

export interface MetricsServer {
  /** "ADDR:PORT" actually bound */
  readonly address: string;
  close(): Promise<void>;
}

/** Listens on addr and serves registry; rejects (EADDRINUSE, EADDRNOTAVAIL…) when it cannot bind. */
export async function serveMetrics(addr: MetricsAddress, registry: Registry, warn: (line: string) => void): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'Content-Type': 'text/plain', Allow: 'GET, HEAD' }).end();
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'Content-Type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
      (e: unknown) => {
        warn(`metrics: scrape failed: ${errorText(e)}`);
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end('scrape failed\n');
      },
    );
  });
  // a scraper that keeps its connection open must not hold up the daemon's exit
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(new IbnbdError(isErrnoName(e.code) ? e.code : 'EIO', `--metrics ${addr.host}:${addr.port}: ${e.message}`)));
    server.listen(addr.port, addr.host, () => resolve());
  });
  server.on('error', (e) => warn(`metrics: ${errorText(e)}`));
  const bound = server.address();
  const port = typeof bound === 'object' && bound ? bound.port : addr.port;
  return {
    address: addr.host.includes(':') ? `[${addr.host}]:${port}` : `${addr.host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
