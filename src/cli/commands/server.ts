// `ibnbd server`: runs the export server daemon in the foreground, or asks a running one
// (`ibnbd server devices|sessions|force-close`) through its control socket.
import type { Command } from 'commander';
import { DEFAULT_SERVER_SOCKET } from '../../control/paths.js';
import type { ControlResult } from '../../control/protocol.js';
import {
  renderDevices,
  renderSessions,
  type DeviceEntry,
  type SessionEntry,
} from '../../server/introspection.js';
import { addControlOptions, printResult, sendRequest, type ControlOptions } from '../util.js';
import { OPEN_POOL_THREADS } from '../../server/device-fds.js';
import { DEFAULT_SERVER_CONFIG } from '../../config/default-files.js';
import type { RawServerOptions } from '../../server/options.js';
import { commandLineValues, LOG_LEVEL_OPTION, mergeOptions, POLL_US_OPTION } from '../config-options.js';

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

export function register(program: Command): void {
  // `ibnbd server devices --control S`: --control belongs to `devices`, not to `server` (which
  // has one too). Commander hands options after a subcommand's name to it only when every
  // ancestor parses positionally; the program has no options of its own besides --help/--version.
  program.enablePositionalOptions();
  const server = program
    .command('server')
    .summary('run the export server, or ask it about its devices and sessions')
    .description(
      'Without a subcommand: run the export server in the foreground (logs to stderr; SIGTERM/SIGINT\n' +
        'close every session and exit). See docs/server.md.',
    )
    .option('--config <file>', `TOML config file, a key per option (default ${DEFAULT_SERVER_CONFIG} when it exists); the command line wins`)
    .option('--listen <addr:port>', 'address to listen on (repeatable; default 0.0.0.0:1234 and [::]:1234)', collect, [])
    .option('--dev-search-path <path>', 'directory device paths are relative to (this or --export is required; %SESSNAME% = session name)')
    .option('--export <name=path>', 'a named export clients map by NAME, ",ro" at the end for read-only (repeatable; looked up before the search path)', collect, [])
    .option('--max-sessions <n>', 'sessions at once (default 1024); more are refused with EBUSY')
    .option('--max-conns-per-session <n>', 'connections of one session over all its paths (default 256)')
    .option('--max-pending-handshakes <n>', 'connections still handshaking (default 512); past it the oldest is closed')
    .option('--handshake-timeout-ms <ms>', 'a connection that has not completed its handshake by then is closed (default 5000)')
    .option('--max-buffer-memory <bytes>', 'request buffers all sessions may pin: queue depth × max IO size each (default 8G; k/M/G/T)')
    .option('--max-devices-per-session <n>', 'devices one session may have open (default 256); more are EMFILE')
    .option('--open-timeout-ms <ms>', 'an OPEN (resolved, opened and probed off the event loop) not done within this fails with ETIMEDOUT (default 10000)')
    .option('--allow <cidr>', 'peer network that may connect, ADDR/PREFIX or ADDR (repeatable; default: any)', collect, [])
    .option('--auth-keys <file>', 'session secrets ("<sessname> <secret>" lines, mode 600): sessions must authenticate; SIGHUP reloads it')
    .option('--control <sock>', 'control socket', DEFAULT_SERVER_SOCKET)
    .option('--queue-depth <n>', 'requests in flight per session')
    .option('--max-io-size <bytes>', 'largest IO in bytes')
    .option('--io-threads <n>', 'IO threads')
    .option(...POLL_US_OPTION)
    .option('--metrics <addr:port>', 'serve Prometheus metrics at http://ADDR:PORT/metrics (default: off)')
    .option('--transport <tcp|rdma|auto>', 'auto (default): TCP, plus RDMA on the same port when the host has an RDMA device')
    .option(...LOG_LEVEL_OPTION)
    // options after a subcommand's name belong to it (`ibnbd server devices --control S`)
    .enablePositionalOptions()
    .action(async (o: Record<string, unknown>, cmd: Command) => {
      // an OPEN's blocking calls run on libuv's pool (src/server/device-fds.ts): a few hung
      // devices must leave threads for the rest; read when the pool first starts, after this
      process.env.UV_THREADPOOL_SIZE ??= String(OPEN_POOL_THREADS);
      const configFile = o.config as string | undefined;
      // loaded only here, as the daemon below: the introspection commands need no TOML reader
      const { readServerConfig, SERVER_CONFIG_KEYS } = await import('../../server/config.js');
      const cli = commandLineValues(cmd, SERVER_CONFIG_KEYS);
      const options = () => mergeOptions(readServerConfig(configFile), cli) as RawServerOptions;
      const raw = options();
      // loaded only here: the introspection commands do not need the native addon
      const { runServerDaemon } = await import('../../server/daemon.js');
      await runServerDaemon(raw, { file: configFile ?? DEFAULT_SERVER_CONFIG, reread: options });
    });

  addControlOptions(
    server.command('devices').summary("the exported devices (the seed's devices/ tree)"),
    DEFAULT_SERVER_SOCKET,
  ).action(async (_o: unknown, cmd: Command) => {
    const opts = cmd.opts() as ControlOptions;
    const r = await sendRequest(opts, { cmd: 'devices' });
    printResult(r, opts, (x: ControlResult) => renderDevices((x as { devices: DeviceEntry[] }).devices));
  });

  addControlOptions(
    server.command('sessions').summary("the client sessions: paths, device ids, in-flight IO; the IO threads' polling"),
    DEFAULT_SERVER_SOCKET,
  ).action(async (_o: unknown, cmd: Command) => {
    const opts = cmd.opts() as ControlOptions;
    const r = await sendRequest(opts, { cmd: 'sessions' });
    printResult(r, opts, (x: ControlResult) => {
      const res = x as { sessions: SessionEntry[]; io_threads?: Record<string, number> };
      return renderSessions(res.sessions, res.io_threads);
    });
  });

  addControlOptions(
    server
      .command('force-close')
      .summary("release one session's device (RNBD's force_close)")
      .argument('<sessname>', 'session name')
      .argument('<device>', 'device name as in `ibnbd server devices`'),
    DEFAULT_SERVER_SOCKET,
  ).action(async (sessname: string, device: string, _o: unknown, cmd: Command) => {
    const opts = cmd.opts() as ControlOptions;
    const r = await sendRequest(opts, { cmd: 'force-close', sessname, device });
    printResult(r, opts);
  });
}
