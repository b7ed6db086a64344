// The export server daemon: validated options → native transport server → ExportServer →
// control socket; runs in the foreground, logs to stderr, and on SIGTERM/SIGINT closes every
// session (devices released, descriptors closed), removes the control socket and returns 0.
import { errorText, IbnbdError, toIbnbdError } from '../errors.js';
import { loadKeysFile, type AuthKeys } from '../auth/keys-file.js';
import { ControlServer } from '../control/server.js';
import { serverCommands } from './control-commands.js';
import { startNativeServer } from './native-port.js';
import type { NativeServerStats } from '../backend/server-native.js';
import type { MetricsServer } from '../metrics/http.js';
import { LIMIT_OPTION, LIVE_LIMIT_OPTIONS, parseLimits, parsePollUs, validateServerOptions, type RawServerOptions, type ServerLimits, type ServerOptions } from './options.js';
import { probe } from './probe.js';
import { ExportServer, type ServerEvent } from './server.js';
import { daemonLogger, type DaemonLogger, type Logger } from '../logger.js';
import { parseLogLevel } from '../log-levels.js';
import { applyReload } from '../config/reload.js';
import { routeNativeLogs } from '../backend/native-log.js';
import { takeDaemonSignals } from '../service/signals.js';
import { serviceNotifier } from '../service/systemd.js';
import { setPollUs } from '../backend/transport.js';

export interface RunningServer {
  server: ExportServer;
  /** "ADDR:PORT" actually bound (port 0 → the ephemeral port) */
  bound: string[];
  /** new session secrets for handshakes from now on (null: none required) */
  setAuthKeys(keys: AuthKeys | null): void;
  /** new bounds: the transports' from the next accept or handshake on, the OPEN policy's from the next OPEN */
  setLimits(limits: ServerLimits): void;
  /** closes every session (devices released) and the transport; idempotent */
  stop(): Promise<void>;
  /** the native sessions, paths and device metrics, for a /metrics scrape */
  ioStats(): NativeServerStats['sessions'];
}

/** The transport server and the IBNBD control path over it, without control socket or signals. */
export function startServer(opts: ServerOptions, log: Logger): RunningServer {
  let server: ExportServer | undefined;
  const early: ServerEvent[] = [];
  const native = startNativeServer(opts, (ev) => (server ? server.handleEvent(ev) : early.push(ev)), (m) => log.warn(m));
  server = new ExportServer(native.port, { ...(opts.devSearchPath !== undefined ? { devSearchPath: opts.devSearchPath } : {}), exports: opts.exports, probe, log, maxDevicesPerSession: opts.limits.maxDevicesPerSession, openTimeoutMs: opts.limits.openTimeoutMs });
  for (const ev of early.splice(0)) server.handleEvent(ev);
  let stopping: Promise<void> | null = null;
  const s = server;
  return {
    server: s,
    bound: native.bound(),
    setAuthKeys: (keys) => native.setAuthKeys(keys),
    setLimits: (limits) => {
      native.setLimits(limits);
      s.setLimits(limits);
    },
    ioStats: () => native.ioStats(),
    stop: () =>
      (stopping ??= (async () => {
        try {
          await native.stop(); // every session closed natively (their devices detached there)
        } finally {
          s.closeAll(); // released here too: access counts, descriptors, the tree
        }
      })()),
  };
}

/**
 * Runs until SIGTERM/SIGINT, then stops cleanly and resolves. Invalid options or a failed start
 * (address in use, control socket taken...) throw an IbnbdError before anything keeps running.
 */
export async function runServerDaemon(
  raw: RawServerOptions,
  /** the config file and how to read the options again (file under command line), for SIGHUP */
  config?: { file: string; reread: () => RawServerOptions },
  /** default: JSON lines on stderr at --log-level, the native addon's among them */
  log: DaemonLogger = daemonLogger({ daemon: 'server', level: parseLogLevel(raw.logLevel ?? 'info') }),
): Promise<void> {
  const opts = validateServerOptions(raw);
  routeNativeLogs(log);
  // before anything listens: a stop or reload during the start waits for it (signals.ts)
  const signals = takeDaemonSignals();
  let running: ReturnType<typeof startServer>;
  try {
    running = startServer(opts, log);
  } catch (e) {
    signals.dispose();
    throw e;
  }
  if (opts.allow.length) log.info(`connections accepted only from ${opts.allow.join(', ')} (--allow)`);
  if (opts.authKeys) {
    log.info(`sessions authenticate: ${opts.authKeys.secrets.size} secret(s) from ${opts.authKeys.file}` +
      (opts.authKeys.openOverRdma.size ? `; let in over RDMA without a proof: ${[...opts.authKeys.openOverRdma].join(', ')}` : ''));
  } else {
    log.warn('sessions are not authenticated (no --auth-keys): any host that reaches the listening ports can map what the search path holds');
  }
  const { server } = running;
  const control = new ControlServer(opts.control, serverCommands(server), {
    onUnexpectedError: (cmd, err) => log.warn(`control ${cmd}: ${String((err as Error)?.stack ?? err)}`),
  });
  try {
    await control.listen();
  } catch (e) {
    signals.dispose();
    await running.stop();
    const err = toIbnbdError(e);
    throw new IbnbdError(err.code, `control socket ${opts.control}: ${err.message}`);
  }
  let metrics: MetricsServer | undefined;
  if (opts.metrics) {
    // loaded only when asked for: a daemon without --metrics never loads prom-client
    const { startServerMetrics } = await import('../metrics/server-metrics.js');
    try {
      metrics = await startServerMetrics(opts.metrics, server, running.ioStats, (m) => log.warn(m));
    } catch (e) {
      signals.dispose();
      await control.close();
      await running.stop();
      throw e;
    }
    log.info(`metrics at http://${metrics.address}/metrics`);
  }
  log.info(
    `listening on ${running.bound.join(' ')}; dev_search_path ${opts.devSearchPath ?? '(none)'}; ` +
      `${opts.exports.size} named export(s)${opts.exports.size ? ` (${[...opts.exports.values()].map((e) => `${e.name}${e.readOnly ? ' ro' : ''}`).join(', ')})` : ''}; control ${opts.control}; ` +
      `queue_depth ${opts.queueDepth}, max_io_size ${opts.maxIoSize}, io_threads ${opts.ioThreads}, poll_us ${opts.pollUs}`,
  );
  // SIGHUP: the config file and the keys file again. The keys change live (sessions already up
  // stay: they authenticated when they connected), so do the log level, the bounds and poll-us;
  // anything else that changed needs a restart.
  let current = raw;
  let limits = opts.limits;
  // the bounds (docs/security.md) change live: the native ones from the next accept or
  // handshake on, the OPEN policy's from the next OPEN; what was admitted stays
  const applyLimits = (next: RawServerOptions) => {
    const fresh = parseLimits(next);
    const changed = (Object.keys(fresh) as Array<keyof ServerLimits>).filter((k) => fresh[k] !== limits[k]);
    if (!changed.length) return;
    running.setLimits(fresh);
    log.info(`SIGHUP: bounds now ${changed.map((k) => `${LIMIT_OPTION[k]} ${fresh[k]}`).join(', ')} (was ${changed.map((k) => limits[k]).join(', ')})`);
    limits = fresh;
  };
  // poll-us: every IO thread reads it before its next wait
  let pollUs = opts.pollUs;
  const applyPollUs = (next: RawServerOptions) => {
    const fresh = parsePollUs(next);
    if (fresh === pollUs) return;
    setPollUs(fresh);
    log.info(`SIGHUP: poll-us now ${fresh} (was ${pollUs})`);
    pollUs = fresh;
  };
  const onHup = () => {
    let next = current;
    if (config) {
      try {
        next = config.reread();
      } catch (e) {
        return log.warn(`SIGHUP: ${errorText(e)}; nothing changed`);
      }
      applyReload(log, config.file, current, next, [...LIVE_LIMIT_OPTIONS, 'pollUs']);
      applyLimits(next);
      applyPollUs(next);
    }
    if (!next.authKeys) {
      current = { ...next, authKeys: current.authKeys };
      return log.info(current.authKeys ? 'SIGHUP: auth-keys cannot be turned off without a restart; the keys stay' : 'SIGHUP: no --auth-keys file to reload');
    }
    try {
      const keys = loadKeysFile(next.authKeys, true);
      running.setAuthKeys(keys);
      current = next;
      log.info(`SIGHUP: ${keys.secrets.size} secret(s) reloaded from ${keys.file}; sessions already up are kept`);
    } catch (e) {
      log.warn(`SIGHUP: keys file not reloaded, the previous keys stay: ${errorText(e)}`);
    }
  };
  signals.onReload(onHup);
  // systemd (Type=notify): ready now that the listeners and the control socket are up
  const service = serviceNotifier(log);
  service.ready(`listening on ${running.bound.join(' ')}; control socket ${opts.control}`);

  const signal = await signals.stop;
  signals.dispose();
  log.info(`${signal}: stopping`);
  service.stopping();
  await control.close();
  await metrics?.close();
  const sessions = server.sessions.size;
  await running.stop();
  log.info(`stopped (${sessions} session(s) closed, ${server.exports.size} device(s) open)`);
}
