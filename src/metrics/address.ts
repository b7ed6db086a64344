// --metrics ADDR:PORT, parsed apart from the endpoint itself so that checking options (and the
// config file's keys) does not load prom-client.
import { isIP } from 'node:net';
import { IbnbdError } from '../errors.js';

export interface MetricsAddress {
  host: string;
  port: number;
}

/** "ADDR:PORT" or "[V6]:PORT", the port required (0: any free one, for tests). */
export function parseMetricsAddress(s: string): MetricsAddress {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(s) ?? /^([^:[\]]+):(\d{1,5})$/.exec(s);
  if (!m || isIP(m[1]!) === 0 || Number(m[2]) > 65535) {
    throw new IbnbdError('EINVAL', `--metrics ${JSON.stringify(s)}: not ADDR:PORT or [V6]:PORT with an IPv4 or IPv6 address`);
  }
  return { host: m[1]!, port: Number(m[2]) };
}
