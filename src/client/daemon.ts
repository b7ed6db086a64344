// `ibnbd client`: the client daemon. Foreground, logs to stderr, driven through its control socket
// (docs/control-socket.md). At start it restores the mappings of its state file before the
// control socket answers; SIGTERM/SIGINT disconnect the front-ends, close the sessions and
// remove every socket it made, and keep the mappings in the state file for the next start
// (`ibnbd unmap` is what removes one for good).
import { loadKeysFile, type AuthKeys } from '../auth/keys-file.js';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { errorText, IbnbdError } from '../errors.js';
import { configureIoThreads, POLL_US_MAX, setPollUs } from '../backend/transport.js';
import { ControlServer } from '../control/index.js';
import { takeDaemonSignals } from '../service/signals.js';
import { serviceNotifier } from '../service/systemd.js';
import { ADMIN_TIMEOUT_MAX, CLIENT_DEFAULTS } from './defaults.js';
import { IO_TIMEOUT_MAX, RECONNECT_DELAY_MAX, TMO_MAX, parseMapString, policyConflict } from '../proto/map-string.js';
import { IbnbdClient } from './client.js';
import { parseMetricsAddress } from '../metrics/address.js';
import type { MetricsServer } from '../metrics/http.js';
import { StateFile } from './state-file.js';
import { daemonLogger, type DaemonLogger, type Logger } from '../logger.js';
import { parseLogLevel, type LogLevel } from '../log-levels.js';
import { applyReload } from '../config/reload.js';
import { routeNativeLogs } from '../backend/native-log.js';

export interface ClientDaemonOptions {
  control: string;
  runDir: string;
  /** Where the mappings are kept across restarts (mappings.json). */
  stateDir: string;
  ioThreads: number;
  /** --poll-us: after work, each IO thread polls up to this many µs before it sleeps; 0 off
   *  (the default); SIGHUP changes it live. */
  pollUs?: number;
  heartbeatMs?: number;
  heartbeatMissedMax?: number;
  /** Default reconnect_delay in seconds (--reconnect-delay); resolved into reconnectDelayMs. */
  reconnectDelay?: number;
  /** The same default in ms (--reconnect-delay-ms, sub-second for tests): the longest pause
   *  between attempts to dial a lost path (the first at once, then 100 ms doubling); RNBD: 30 s flat. */
  reconnectDelayMs?: number;
  /** Attempts per lost path, -1 = forever (RNBD). */
  maxReconnectAttempts?: number;
  /** Default ctrl_loss_tmo (s): how long guest IO waits for a lost server; -1 for ever, 0 RNBD's. */
  ctrlLossTmo?: number;
  /** Default fast_io_fail_tmo (s): waiting IO fails after it; -1 off. */
  fastIoFailTmo?: number;
  /** Default io_timeout (s) of new sessions: a path with requests outstanding that completes
   *  none for this long is declared dead (failover, reconnect); 0 off. */
  ioTimeout?: number;
  /** How long an admin request (SESS_INFO, OPEN, CLOSE) waits for the server's answer (s),
   *  then fails with ETIMEDOUT; also bounds a forced unmap's and the shutdown's wait for a session. */
  adminTimeout?: number;
  /** --auth-keys: the file of session secrets; a session whose name has one authenticates (TCP). */
  authKeys?: string;
  /** --metrics ADDR:PORT: where GET /metrics is served (Prometheus); undefined: no endpoint. */
  metrics?: string;
  /** --log-level: lines below it (the native addon's too) are not written; SIGHUP moves it. */
  logLevel?: LogLevel;
}

/** -1 or an integer 0..max; EINVAL naming the option. */
function checkTmo(flag: string, v: number): number {
  if (!Number.isInteger(v) || v < -1 || v > TMO_MAX) {
    throw new IbnbdError('EINVAL', `${flag}: ${v} is not -1 or a number of seconds from 0 to ${TMO_MAX}`);
  }
  return v;
}

export function validateClientOptions(o: Partial<ClientDaemonOptions>): ClientDaemonOptions {
  const control = o.control ?? CLIENT_DEFAULTS.control;
  const runDir = o.runDir ?? CLIENT_DEFAULTS.runDir;
  const stateDir = o.stateDir ?? CLIENT_DEFAULTS.stateDir;
  if (!stateDir.startsWith('/')) throw new IbnbdError('EINVAL', `--state-dir: '${stateDir}' is not an absolute path`);
  const ioThreads = o.ioThreads ?? CLIENT_DEFAULTS.ioThreads;
  if (!control.startsWith('/')) throw new IbnbdError('EINVAL', `--control: '${control}' is not an absolute path`);
  if (!runDir.startsWith('/')) throw new IbnbdError('EINVAL', `--run-dir: '${runDir}' is not an absolute path`);
  if (!Number.isInteger(ioThreads) || ioThreads < 1 || ioThreads > 64) {
    throw new IbnbdError('EINVAL', `--io-threads: ${ioThreads} is not an integer from 1 to 64`);
  }
  const pollUs = o.pollUs ?? CLIENT_DEFAULTS.pollUs;
  if (!Number.isInteger(pollUs) || pollUs < 0 || pollUs > POLL_US_MAX) {
    throw new IbnbdError('EINVAL', `--poll-us: ${pollUs} is not an integer from 0 (off) to ${POLL_US_MAX} microseconds`);
  }
  for (const [k, v] of [['heartbeat-ms', o.heartbeatMs], ['heartbeat-missed-max', o.heartbeatMissedMax]] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new IbnbdError('EINVAL', `--${k}: ${v} is not a positive integer`);
  }
  if (o.reconnectDelay !== undefined && o.reconnectDelayMs !== undefined) {
    throw new IbnbdError('EINVAL', '--reconnect-delay and --reconnect-delay-ms set the same default: give one of them');
  }
  if (o.reconnectDelay !== undefined && (!Number.isInteger(o.reconnectDelay) || o.reconnectDelay < 1 || o.reconnectDelay > RECONNECT_DELAY_MAX)) {
    throw new IbnbdError('EINVAL', `--reconnect-delay: ${o.reconnectDelay} is not a number of seconds from 1 to ${RECONNECT_DELAY_MAX}`);
  }
  const reconnectDelayMs = o.reconnectDelayMs ?? (o.reconnectDelay !== undefined ? o.reconnectDelay * 1000 : CLIENT_DEFAULTS.reconnectDelayMs);
  if (!Number.isInteger(reconnectDelayMs) || reconnectDelayMs < 0 || reconnectDelayMs > 86_400_000) {
    throw new IbnbdError('EINVAL', `--reconnect-delay-ms: ${reconnectDelayMs} is not an integer from 0 to 86400000`);
  }
  const ctrlLossTmo = checkTmo('--ctrl-loss-tmo', o.ctrlLossTmo ?? CLIENT_DEFAULTS.ctrlLossTmo);
  const fastIoFailTmo = checkTmo('--fast-io-fail-tmo', o.fastIoFailTmo ?? CLIENT_DEFAULTS.fastIoFailTmo);
  const conflict = policyConflict(fastIoFailTmo, ctrlLossTmo);
  if (conflict) throw new IbnbdError('EINVAL', `--fast-io-fail-tmo: ${conflict} (--ctrl-loss-tmo); give at most --ctrl-loss-tmo, or -1`);
  const ioTimeout = o.ioTimeout ?? CLIENT_DEFAULTS.ioTimeout;
  if (!Number.isInteger(ioTimeout) || ioTimeout < 0 || ioTimeout > IO_TIMEOUT_MAX) {
    throw new IbnbdError('EINVAL', `--io-timeout: ${ioTimeout} is not 0 (off) or a number of seconds from 1 to ${IO_TIMEOUT_MAX}`);
  }
  const adminTimeout = o.adminTimeout ?? CLIENT_DEFAULTS.adminTimeout;
  if (!Number.isInteger(adminTimeout) || adminTimeout < 1 || adminTimeout > ADMIN_TIMEOUT_MAX) {
    throw new IbnbdError('EINVAL', `--admin-timeout: ${adminTimeout} is not a number of seconds from 1 to ${ADMIN_TIMEOUT_MAX}`);
  }
  const maxReconnectAttempts = o.maxReconnectAttempts ?? CLIENT_DEFAULTS.maxReconnectAttempts;
  if (!Number.isInteger(maxReconnectAttempts) || maxReconnectAttempts < -1 || maxReconnectAttempts > 1 << 30) {
    throw new IbnbdError('EINVAL', `--max-reconnect-attempts: ${maxReconnectAttempts} is not -1 (forever) or an integer from 0 to ${1 << 30}`);
  }
  const logLevel = parseLogLevel(o.logLevel ?? 'info');
  // read now: an unreadable or world-readable file stops the start, with the reason
  if (o.authKeys !== undefined) loadKeysFile(o.authKeys, false);
  if (o.metrics !== undefined) parseMetricsAddress(o.metrics);
  return {
    control,
    runDir,
    stateDir,
    ioThreads,
    pollUs,
    heartbeatMs: o.heartbeatMs,
    heartbeatMissedMax: o.heartbeatMissedMax,
    reconnectDelayMs,
    maxReconnectAttempts,
    ctrlLossTmo,
    fastIoFailTmo,
    ioTimeout,
    adminTimeout,
    authKeys: o.authKeys,
    metrics: o.metrics,
    logLevel,
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
  private metrics: MetricsServer | undefined;

  #keys: AuthKeys | null;

  constructor(readonly opts: ClientDaemonOptions, private readonly log: Logger) {
    this.#keys = opts.authKeys !== undefined ? loadKeysFile(opts.authKeys, false) : null;
    this.client = new IbnbdClient({
      secretOf: (sessname) => this.#keys?.secrets.get(sessname),
      runDir: opts.runDir,
      state: new StateFile(opts.stateDir),
      log,
      heartbeatMs: opts.heartbeatMs,
      heartbeatMissedMax: opts.heartbeatMissedMax,
      reconnectDelayMs: opts.reconnectDelayMs,
      ioTimeoutMs: (opts.ioTimeout ?? CLIENT_DEFAULTS.ioTimeout) * 1000,
      maxReconnectAttempts: opts.maxReconnectAttempts,
      ctrlLossTmo: opts.ctrlLossTmo,
      fastIoFailTmo: opts.fastIoFailTmo,
      adminTimeoutMs: (opts.adminTimeout ?? CLIENT_DEFAULTS.adminTimeout) * 1000,
    });
    this.control = new ControlServer(opts.control, {
      map: async (args) => ({ device: await this.client.map(parseMapString(stringArg(args, 'map'))) }),
      unmap: async (args) => ({ device: await this.client.unmap(stringArg(args, 'device'), args.force === true) }),
      resize: async (args) => ({
        device: await this.client.resize(stringArg(args, 'device'), {
          ...(args.size !== undefined ? { sizeBytes: Number(args.size) } : {}),
          force: args.force === true,
        }),
      }),
      list: () => ({ devices: this.client.list() }),
      show: (args) => ({ device: this.client.show(stringArg(args, 'device')) }),
    });
  }

  async start(): Promise<void> {
    configureIoThreads(this.opts.ioThreads);
    setPollUs(this.opts.pollUs ?? CLIENT_DEFAULTS.pollUs);
    // the mappings first: a VM reconnecting to its socket finds its own disk there, and no map
    // can take a name a persisted mapping holds
    if (this.opts.metrics !== undefined) {
      // bound before anything is restored, so a port in use stops the start with nothing to undo;
      // loaded only when asked for: a daemon without --metrics never loads prom-client
      const { startClientMetrics } = await import('../metrics/client-metrics.js');
      this.metrics = await startClientMetrics(parseMetricsAddress(this.opts.metrics), this.client, (m) => this.log.warn(m));
      this.log.info(`metrics at http://${this.metrics.address}/metrics`);
    }
    await this.client.restore();
    await this.control.listen();
    const attempts = this.opts.maxReconnectAttempts ?? CLIENT_DEFAULTS.maxReconnectAttempts;
    const ctrl = this.opts.ctrlLossTmo ?? CLIENT_DEFAULTS.ctrlLossTmo;
    const fast = this.opts.fastIoFailTmo ?? CLIENT_DEFAULTS.fastIoFailTmo;
    const ioTimeout = this.opts.ioTimeout ?? CLIENT_DEFAULTS.ioTimeout;
    const adminTimeout = this.opts.adminTimeout ?? CLIENT_DEFAULTS.adminTimeout;
    this.log.info(
      `client daemon: control socket ${this.opts.control}, run dir ${this.opts.runDir}, state dir ${this.opts.stateDir}, ` +
        `lost paths redialled at most ${this.opts.reconnectDelayMs ?? CLIENT_DEFAULTS.reconnectDelayMs} ms apart ` +
        `${attempts < 0 ? 'forever' : `at most ${attempts} times`}; ` +
        (ioTimeout > 0 ? `a path completing no request for ${ioTimeout} s is dead (io_timeout); ` : 'no io_timeout; ') +
        `admin requests (SESS_INFO, OPEN, CLOSE) time out after ${adminTimeout} s; ` +
        'by default guest IO ' +
        (ctrl === 0 ? 'fails at once when every path is lost (ctrl_loss_tmo 0)' : `waits ${ctrl < 0 ? 'for ever' : `${ctrl} s`} for a lost server`) +
        (fast >= 0 && ctrl !== 0 ? `, failing after ${fast} s (fast_io_fail_tmo)` : ''),
    );
  }

  /** How many devices are mapped now (restored ones included). */
  mappings(): number {
    return this.client.list().length;
  }

  /** SIGHUP: a new --poll-us (validated), applied to every IO thread at once. */
  setPollUs(us: number): void {
    const was = this.opts.pollUs ?? CLIENT_DEFAULTS.pollUs;
    if (us === was) return;
    setPollUs(us);
    this.opts.pollUs = us;
    this.log.info(`SIGHUP: poll-us now ${us} (was ${was})`);
  }

  /** The keys file SIGHUP reads from now on (a config file named another). */
  useKeysFile(path: string): void {
    this.opts.authKeys = path;
  }

  /** SIGHUP: the keys file again, for sessions created from now on; on an error the old keys stay. */
  reloadKeys(): void {
    if (this.opts.authKeys === undefined) return this.log.info('SIGHUP: no --auth-keys file to reload');
    try {
      this.#keys = loadKeysFile(this.opts.authKeys, false);
      this.log.info(`SIGHUP: ${this.#keys.secrets.size} session secret(s) reloaded from ${this.opts.authKeys}; sessions already up keep theirs`);
    } catch (e) {
      this.log.warn(`SIGHUP: keys file not reloaded, the previous keys stay: ${errorText(e)}`);
    }
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.control.close().catch(() => undefined);
      await this.metrics?.close();
      await this.client.shutdown();
      await rm(join(this.opts.runDir, 'vhost'), { recursive: true, force: true }).catch(() => undefined);
      await rm(join(this.opts.runDir, 'devices'), { recursive: true, force: true }).catch(() => undefined);
      this.log.info('client daemon: stopped');
    })();
    return this.stopping;
  }
}

/** Runs until SIGTERM/SIGINT; resolves with the exit status. */
export async function runClientDaemon(
  options: Partial<ClientDaemonOptions>,
  /** the config file and how to read the options again (file under command line), for SIGHUP */
  config?: { file: string; reread: () => Partial<ClientDaemonOptions> },
): Promise<number> {
  const opts = validateClientOptions(options);
  const log: DaemonLogger = daemonLogger({ daemon: 'client', level: opts.logLevel });
  routeNativeLogs(log);
  const daemon = new ClientDaemon(opts, log);
  // before anything listens: a stop or reload during the start waits for it (signals.ts)
  const signals = takeDaemonSignals();
  try {
    await daemon.start();
  } catch (e) {
    signals.dispose();
    throw e;
  }
  // systemd (Type=notify): ready once the restored mappings are served and the control socket answers
  const service = serviceNotifier(log);
  service.ready(`${daemon.mappings()} device(s) mapped; control socket ${opts.control}`);
  // SIGHUP: the config file and the keys file again; the keys change for sessions created from
  // now on, the log level and poll-us at once, anything else that changed needs a restart
  let current = options;
  signals.onReload(() => {
    if (config) {
      try {
        const next = config.reread();
        applyReload(log, config.file, current, next, ['pollUs']);
        daemon.setPollUs(next.pollUs ?? CLIENT_DEFAULTS.pollUs);
        current = next;
        if (next.authKeys !== undefined) daemon.useKeysFile(next.authKeys);
      } catch (e) {
        return log.warn(`SIGHUP: ${errorText(e)}; nothing changed`);
      }
    }
    daemon.reloadKeys();
  });
  const sig = await signals.stop;
  signals.dispose();
  log.info(`${sig}: shutting down`);
  service.stopping();
  try {
    await daemon.stop();
    return 0;
  } catch (e) {
    log.error(`shutdown failed: ${String(e)}`);
    return 1;
  }
}
