/**
 * The metrics endpoint of one mount: GET /metrics in Prometheus' text format
 * (prom-client's registry, which also brings the Node process's own figures:
 * CPU, memory, event-loop delay, GC pauses). It listens before the device
 * is opened, so that an address in use fails the mount before it takes
 * anything; the mount's figures are registered once it serves.
 */
import http from 'node:http';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { UserError } from '../util/errors';
import { MetricsAddress, formatMetricsAddress } from './address';

const METRICS_PATH = '/metrics';

export interface MetricsServer {
  readonly registry: Registry;
  close(): Promise<void>;
}

export async function startMetricsServer(address: MetricsAddress): Promise<MetricsServer> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'lsnfs_' });
  const server = http.createServer((request, response) => {
    if (request.method !== 'GET' || (request.url ?? '').split('?')[0] !== METRICS_PATH) {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end(`lsnfs: the metrics are at GET ${METRICS_PATH}\n`);
      return;
    }
    registry.metrics().then(
      (text) => response.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
      (error: Error) => response.writeHead(500, { 'Content-Type': 'text/plain' }).end(`lsnfs: collecting the metrics failed: ${error.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(new UserError(`--metrics ${formatMetricsAddress(address)}: cannot listen there (${error.code ?? error.message})`));
    });
    server.listen(address.port, address.host, () => resolve());
  });
  // Scrapes must not keep a daemon that is unmounting alive.
  server.unref();
  return {
    registry,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      // A scraper's kept-alive connection would hold close() open.
      server.closeAllConnections();
    }),
  };
}
