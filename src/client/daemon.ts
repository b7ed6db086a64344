// `ibnbd client`: the client daemon. Foreground, logs to stderr, driven through its control socket
// (docs/control-socket.md); SIGTERM/SIGINT disconnect the front-ends, close the sessions and
// remove every socket it made.
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { IbnbdError } from '../errors.js';
import { configureIoThreads } from '../backend/transport.js';
import { ControlServer } from '../control/index.js';
import { parseMapString } from '../proto/map-string.js';
import { IbnbdClient } from './client.js';

export interface ClientDaemonOptions {
  control: string;
  runDir: string;
  ioThreads: number;
  heartbeatMs?: number;
  heartbeatMissedMax?: number;
  /** Delay before a lost path is dialled again; RNBD: 30 s. */
  reconnectDelayMs?: number;
  /** Attempts per lost path, -1 = forever (RNBD). */
  maxReconnectAttempts?: number;
}

export const CLIENT_DEFAULTS = {
  control: '/run/ibnbd/client.sock',
  runDir: '/run/ibnbd',
  ioThreads: 1,
  reconnectDelayMs: 30_000,
  maxReconnectAttempts: -1,
} as const;

export function validateClientOptions(o: Partial<ClientDaemonOptions>): ClientDaemonOptions {
  const control = o.control ?? CLIENT_DEFAULTS.control;
  const runDir = o.runDir ?? CLIENT_DEFAULTS.runDir;
  const ioThreads = o.ioThreads ?? CLIENT_DEFAULTS.ioThreads;
  if (!control.startsWith('/')) throw new IbnbdError('EINVAL', `--control: '${control}' is not an absolute path`);
  if (!runDir.startsWith('/')) throw new IbnbdError('EINVAL', `--run-dir: '${runDir}' is not an absolute path`);
  if (!Number.isInteger(ioThreads) || ioThreads < 1 || ioThreads > 64) {
    throw new IbnbdError('EINVAL', `--io-threads: ${ioThreads} is not an integer from 1 to 64`);
  }
  for (const [k, v] of [['heartbeat-ms', o.heartbeatMs], ['heartbeat-missed-max', o.heartbeatMissedMax]] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new IbnbdError('EINVAL', `--${k}: ${v} is not a positive integer`);
  }
  const reconnectDelayMs = o.reconnectDelayMs ?? CLIENT_DEFAULTS.reconnectDelayMs;
  if (!Number.isInteger(reconnectDelayMs) || reconnectDelayMs < 0 || reconnectDelayMs > 86_400_000) {
    throw new IbnbdError('EINVAL', `--reconnect-delay-ms: ${reconnectDelayMs} is not an integer from 0 to 86400000`);
  }
  const maxReconnectAttempts = o.maxReconnectAttempts ?? CLIENT_DEFAULTS.maxReconnectAttempts;
  if (!Number.isInteger(maxReconnectAttempts) || maxReconnectAttempts < -1 || maxReconnectAttempts > 1 << 30) {
    throw new IbnbdError('EINVAL', `--max-reconnect-attempts: ${maxReconnectAttempts} is not -1 (forever) or an integer from 0 to ${1 << 30}`);
  }
  return {
    control,
    runDir,
    ioThreads,
    heartbeatMs: o.heartbeatMs,
    heartbeatMissedMax: o.heartbeatMissedMax,
    reconnectDelayMs,
    maxReconnectAttempts,
  };
}

function stringArg(args: Record<string, unknown>, key: string): string {
  const v = args[key];
  if (typeof v !== 'string' || v === '') throw new IbnbdError('EINVAL', `${key}: a non-empty string is required`);
  return v;
}

export class ClientDaemon {
  readonly client: IbnbdClient;
  private readonly control: ControlServer;
  private stopping: Promise<void> | undefined;

  constructor(readonly opts: ClientDaemonOptions, private readonly log: (line: string) => void) {
    this.client = new IbnbdClient({
      runDir: opts.runDir,
      log,
      heartbeatMs: opts.heartbeatMs,
      heartbeatMissedMax: opts.heartbeatMissedMax,
      reconnectDelayMs: opts.reconnectDelayMs,
      maxReconnectAttempts: opts.maxReconnectAttempts,
    });
    this.control = new ControlServer(opts.control, {
      map: async (args) => ({ device: await this.client.map(parseMapString(stringArg(args, 'map'))) }),
      unmap: async (args) => ({ device: await this.client.unmap(stringArg(args, 'device'), args.force === true) }),
      list: () => ({ devices: this.client.list() }),
      show: (args) => ({ device: this.client.show(stringArg(args, 'device')) }),
    });
  }

  async start(): Promise<void> {
    configureIoThreads(this.opts.ioThreads);
    await this.control.listen();
    const attempts = this.opts.maxReconnectAttempts ?? CLIENT_DEFAULTS.maxReconnectAttempts;
    this.log(
      `client daemon: control socket ${this.opts.control}, run dir ${this.opts.runDir}, ` +
        `lost paths redialled every ${this.opts.reconnectDelayMs ?? CLIENT_DEFAULTS.reconnectDelayMs} ms ` +
        (attempts < 0 ? 'forever' : `at most ${attempts} times`),
    );
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.control.close().catch(() => undefined);
      await this.client.shutdown();
      await rm(join(this.opts.runDir, 'vhost'), { recursive: true, force: true }).catch(() => undefined);
      await rm(join(this.opts.runDir, 'devices'), { recursive: true, force: true }).catch(() => undefined);
      this.log('client daemon: stopped');
    })();
    return this.stopping;
  }
}

/** Runs until SIGTERM/SIGINT; resolves with the exit status. */
export async function runClientDaemon(options: Partial<ClientDaemonOptions>): Promise<number> {
  const log = (line: string) => process.stderr.write(`ibnbd client: ${line}\n`);
  const daemon = new ClientDaemon(validateClientOptions(options), log);
  await daemon.start();
  return new Promise<number>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      log(`${sig}: shutting down`);
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      daemon.stop().then(
        () => resolve(0),
        (e) => {
          log(`shutdown failed: ${String(e)}`);
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
