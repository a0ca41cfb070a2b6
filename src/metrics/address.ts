/**
 * Where a mount's metrics endpoint listens (`--metrics [HOST:]PORT`). Parsed
 * on the command's side, which loads no metrics code: only the daemon of a
 * mount that asks for the endpoint loads prom-client.
 */
import { UserError } from '../util/errors';

export interface MetricsAddress { host: string; port: number }

/** Loopback unless the user names a host: the figures name devices, hosts and paths. */
const DEFAULT_HOST = '127.0.0.1';

/** `9187`, `0.0.0.0:9187` or `[::1]:9187`. */
export function parseMetricsAddress(text: string): MetricsAddress {
  const match = /^(?:(\[[0-9A-Fa-f:.]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[2]) : NaN;
  if (!match || port < 1 || port > 65535) {
    throw new UserError(`--metrics ${text}: expected PORT or HOST:PORT with a port from 1 to 65535, e.g. 9187 or 0.0.0.0:9187`);
  }
  const host = match[1]?.replace(/^\[(.*)\]$/, '$1') ?? DEFAULT_HOST;
  return { host, port };
}

export function formatMetricsAddress(address: MetricsAddress): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** The option of every command that starts a mount. */
export const METRICS_FLAGS = '--metrics <[host:]port>';
export const METRICS_HELP = 'serve the mount\'s figures for Prometheus at http://HOST:PORT/metrics (host 127.0.0.1 unless given)';
