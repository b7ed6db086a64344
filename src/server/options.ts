// `ibnbd server` options: validated here, with an error that names the option and the value,
// before anything native is created.
import { isIP } from 'node:net';
import { IbnbdError } from '../errors.js';
import { SESSNAME_TOKEN } from './device-path.js';
import { loadKeysFile, type AuthKeys } from '../auth/keys-file.js';
import { parseMetricsAddress, type MetricsAddress } from '../metrics/address.js';
import { parseLogLevel, type LogLevel } from '../log-levels.js';
import { parseExportList, type ExportList } from './export-list.js';
import { POLL_US_MAX } from '../backend/transport.js';

export const DEFAULT_PORT = 1234;
export const DEFAULT_CONTROL_SOCKET = '/run/ibnbd/server.sock';
export const DEFAULT_QUEUE_DEPTH = 512;
export const DEFAULT_MAX_IO_SIZE = 128 * 1024;
export const DEFAULT_IO_THREADS = 1;
/** --poll-us: off unless asked for (docs/operations.md, "Adaptive polling") */
export const DEFAULT_POLL_US = 0;

export interface ListenAddr {
  host: string;
  port: number;
}

/** auto: TCP always, plus RDMA (same addresses and port) when the host has an RDMA device. */
export type ServerTransport = 'tcp' | 'rdma' | 'auto';

export interface ServerOptions {
  /** tcp (our framing), rdma (RTRS on the wire, docs/rdma-transport.md) or auto (default) */
  transport?: ServerTransport;
  listen: ListenAddr[];
  /** --dev-search-path: device_path is a path under it; undefined when only named exports are served */
  devSearchPath?: string;
  /** --export / [export]: device_path names one of these (taken before the search path) */
  exports: ExportList;
  control: string;
  queueDepth: number;
  maxIoSize: number;
  ioThreads: number;
  /** --poll-us: after work, each IO thread polls up to this many µs before it sleeps; 0 off */
  pollUs: number;
  /** --auth-keys: the file, loaded (null: sessions are not authenticated) */
  authKeys: AuthKeys | null;
  /** --allow: the peer networks that may connect at all ("ADDR/PREFIX"); empty: any */
  allow: string[];
  limits: ServerLimits;
  /** --metrics: where GET /metrics is served (Prometheus); undefined: no endpoint */
  metrics?: MetricsAddress;
  /** --log-level: the daemon's logs (and the native addon's) below it are not written */
  logLevel: LogLevel;
}

/** The bounds a flood of connections, handshakes or sessions cannot pass (docs/security.md). */
export interface ServerLimits {
  maxSessions: number;
  maxConnsPerSession: number;
  maxPendingHandshakes: number;
  handshakeTimeoutMs: number;
  /** queue depth × max IO size summed over sessions (TCP) or paths (RDMA) */
  maxBufferBytes: number;
  maxDevicesPerSession: number;
  /** an OPEN whose path does not answer off the event loop within this fails (ETIMEDOUT) */
  openTimeoutMs: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxSessions: 1024,
  maxConnsPerSession: 256,
  maxPendingHandshakes: 512,
  handshakeTimeoutMs: 5000,
  maxBufferBytes: 8 * 1024 ** 3,
  maxDevicesPerSession: 256,
  openTimeoutMs: 10_000,
};

/** BYTES with an optional k/M/G/T suffix (powers of 1024). */
export function parseBytes(option: string, v: string | number): number {
  const m = typeof v === 'number' ? [String(v), String(v), ''] : /^(\d+)([kKmMgGtT]?)$/.exec(v.trim());
  const n = m ? Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase()) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw invalid(option, v, 'must be a number of bytes, optionally with k, M, G or T');
  return n;
}

export interface RawServerOptions {
  transport?: string;
  listen?: string[];
  devSearchPath?: string;
  control?: string;
  queueDepth?: string | number;
  maxIoSize?: string | number;
  ioThreads?: string | number;
  pollUs?: string | number;
  authKeys?: string;
  allow?: string[];
  maxSessions?: string | number;
  maxConnsPerSession?: string | number;
  maxPendingHandshakes?: string | number;
  handshakeTimeoutMs?: string | number;
  maxBufferMemory?: string | number;
  maxDevicesPerSession?: string | number;
  openTimeoutMs?: string | number;
  metrics?: string;
  logLevel?: string;
  /** --export NAME=PATH[,ro] (repeatable), or the config file's [export] table */
  export?: string[] | Record<string, unknown>;
}

function invalid(option: string, value: unknown, why: string): IbnbdError {
  return new IbnbdError('EINVAL', `--${option} ${JSON.stringify(value)}: ${why}`);
}

/** "ADDR/PREFIX" or "ADDR" (one host), IPv4 or IPv6; the canonical "ADDR/PREFIX". */
export function parseCidr(s: string): string {
  const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(s);
  const family = m ? isIP(m[1]!) : 0;
  if (!m || family === 0) throw invalid('allow', s, 'not ADDR or ADDR/PREFIX (IPv4 or IPv6)');
  const max = family === 4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) throw invalid('allow', s, `the prefix of an IPv${family} network is 0..${max}`);
  return `${m[1]}/${prefix}`;
}

/** "ADDR:PORT", "[V6]:PORT", "ADDR" (port 1234) or "ip:ADDR[:PORT]". */
export function parseListen(s: string): ListenAddr {
  let rest = s.startsWith('ip:') ? s.slice(3) : s;
  let host: string;
  let portStr: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(.*))?$/.exec(rest);
  if (v6) {
    host = v6[1]!;
    portStr = v6[2];
  } else if (isIP(rest) === 6) {
    host = rest;
  } else {
    const i = rest.lastIndexOf(':');
    if (i >= 0) {
      host = rest.slice(0, i);
      portStr = rest.slice(i + 1);
    } else host = rest;
  }
  rest = host;
  if (isIP(host) === 0) throw invalid('listen', s, 'not an IPv4 or IPv6 address (ADDR:PORT or [V6]:PORT)');
  let port = DEFAULT_PORT;
  if (portStr !== undefined) {
    if (!/^\d{1,5}$/.test(portStr) || Number(portStr) > 65535) throw invalid('listen', s, 'port must be 0..65535');
    port = Number(portStr);
  }
  return { host, port };
}

function intOption(name: string, v: string | number | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = typeof v === 'number' ? v : /^\d+$/.test(v.trim()) ? Number(v.trim()) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw invalid(name, v, `must be an integer in ${min}..${max}`);
  return n;
}

function checkSearchPath(devSearchPath: string): void {
  if (!devSearchPath.startsWith('/')) throw invalid('dev-search-path', devSearchPath, 'must be an absolute path');
  if (devSearchPath.includes('\0')) throw invalid('dev-search-path', devSearchPath, 'contains a NUL byte');
  if (devSearchPath.split('/').includes('..')) throw invalid('dev-search-path', devSearchPath, 'has a ".." component');
  if (Buffer.byteLength(devSearchPath.split(SESSNAME_TOKEN).join('x'.repeat(256))) >= 4096 - 256) {
    throw invalid('dev-search-path', devSearchPath, 'too long');
  }
}

/** The bounds (docs/security.md), also read again by SIGHUP: they change live. */
export function parseLimits(raw: RawServerOptions): ServerLimits {
  return {
    maxSessions: intOption('max-sessions', raw.maxSessions, DEFAULT_LIMITS.maxSessions, 1, 1 << 20),
    maxConnsPerSession: intOption('max-conns-per-session', raw.maxConnsPerSession, DEFAULT_LIMITS.maxConnsPerSession, 2, 1 << 20),
    maxPendingHandshakes: intOption('max-pending-handshakes', raw.maxPendingHandshakes, DEFAULT_LIMITS.maxPendingHandshakes, 1, 1 << 20),
    handshakeTimeoutMs: intOption('handshake-timeout-ms', raw.handshakeTimeoutMs, DEFAULT_LIMITS.handshakeTimeoutMs, 100, 600_000),
    maxBufferBytes: raw.maxBufferMemory === undefined ? DEFAULT_LIMITS.maxBufferBytes : parseBytes('max-buffer-memory', raw.maxBufferMemory),
    maxDevicesPerSession: intOption('max-devices-per-session', raw.maxDevicesPerSession, DEFAULT_LIMITS.maxDevicesPerSession, 1, 1 << 20),
    openTimeoutMs: intOption('open-timeout-ms', raw.openTimeoutMs, DEFAULT_LIMITS.openTimeoutMs, 100, 600_000),
  };
}

/** Each bound's option (and config key). */
export const LIMIT_OPTION: Readonly<Record<keyof ServerLimits, string>> = {
  maxSessions: 'max-sessions', maxConnsPerSession: 'max-conns-per-session', maxPendingHandshakes: 'max-pending-handshakes',
  handshakeTimeoutMs: 'handshake-timeout-ms', maxBufferBytes: 'max-buffer-memory', maxDevicesPerSession: 'max-devices-per-session',
  openTimeoutMs: 'open-timeout-ms',
};

/** --poll-us, also read again by SIGHUP: it changes live. */
export function parsePollUs(raw: RawServerOptions): number {
  return intOption('poll-us', raw.pollUs, DEFAULT_POLL_US, 0, POLL_US_MAX);
}

/** The bounds SIGHUP applies to a running server, by property (poll-us changes live too; the rest needs a restart). */
export const LIVE_LIMIT_OPTIONS = [
  'maxSessions', 'maxConnsPerSession', 'maxPendingHandshakes', 'handshakeTimeoutMs', 'maxBufferMemory',
  'maxDevicesPerSession', 'openTimeoutMs',
] as const;

export function validateServerOptions(raw: RawServerOptions): ServerOptions {
  const listen = (raw.listen && raw.listen.length > 0 ? raw.listen : ['0.0.0.0', '[::]']).map(parseListen);
  const exports = parseExportList(raw.export);
  // no implicit "/": which files and devices clients may open is the operator's explicit choice,
  // a directory or a list of named exports
  if (raw.devSearchPath === undefined && exports.size === 0) {
    throw new IbnbdError('EINVAL', '--dev-search-path or --export is required: the directory clients may open devices and files under (an explicit "/" is allowed), or the named exports they may map');
  }
  const devSearchPath = raw.devSearchPath;
  if (devSearchPath !== undefined) checkSearchPath(devSearchPath);
  const control = raw.control ?? DEFAULT_CONTROL_SOCKET;
  if (control.length === 0 || control.includes('\0')) throw invalid('control', control, 'not a socket path');
  if (Buffer.byteLength(control) > 107) throw invalid('control', control, 'longer than a unix socket path may be (107 bytes)');
  const queueDepth = intOption('queue-depth', raw.queueDepth, DEFAULT_QUEUE_DEPTH, 1, 65535);
  const maxIoSize = intOption('max-io-size', raw.maxIoSize, DEFAULT_MAX_IO_SIZE, 4096, 16 * 1024 * 1024);
  if (maxIoSize % 4096 !== 0) throw invalid('max-io-size', raw.maxIoSize, 'must be a multiple of 4096');
  const ioThreads = intOption('io-threads', raw.ioThreads, DEFAULT_IO_THREADS, 1, 64);
  const pollUs = parsePollUs(raw);
  const transport = raw.transport ?? 'auto';
  if (transport !== 'tcp' && transport !== 'rdma' && transport !== 'auto') {
    throw invalid('transport', transport, 'must be tcp, rdma or auto');
  }
  const allow = (raw.allow ?? []).map(parseCidr);
  const limits = parseLimits(raw);
  const logLevel = parseLogLevel(raw.logLevel ?? 'info');
  const authKeys = raw.authKeys === undefined ? null : loadKeysFile(raw.authKeys, true);
  const metrics = raw.metrics === undefined ? undefined : parseMetricsAddress(raw.metrics);
  return { transport, listen, devSearchPath, control, queueDepth, maxIoSize, ioThreads, pollUs, authKeys, allow, limits, metrics, logLevel, exports };
}
