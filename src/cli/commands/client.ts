// `ibnbd client`: runs the client daemon in the foreground (vhost-user-blk sockets for mapped
// devices, driven by `ibnbd map/unmap/list/show` through its control socket).
import type { Command } from 'commander';
import { IbnbdError } from '../../errors.js';
import type { ClientDaemonOptions } from '../../client/daemon.js';
import { ADMIN_TIMEOUT_MAX, CLIENT_DEFAULTS } from '../../client/defaults.js';
import { DEFAULT_CLIENT_CONFIG } from '../../config/default-files.js';
import { commandLineValues, LOG_LEVEL_OPTION, mergeOptions, POLL_US_OPTION } from '../config-options.js';

/** -1 or a non-negative integer (-1: forever). */
function attemptsInt(flag: string) {
  return (v: string): number => {
    if (!/^(-1|\d+)$/.test(v)) throw new IbnbdError('EINVAL', `${flag}: '${v}' is not -1 (forever) or a non-negative integer`);
    return Number(v);
  };
}

/** -1 or a non-negative integer (-1: for ever / off); the range is the daemon's to check. */
function tmoInt(flag: string, minusOne: string) {
  return (v: string): number => {
    if (!/^(-1|\d+)$/.test(v)) throw new IbnbdError('EINVAL', `${flag}: '${v}' is not -1 (${minusOne}) or a number of seconds`);
    return Number(v);
  };
}

/** A non-negative integer of seconds (0: off); the range is the daemon's to check. */
function secondsInt(flag: string, zero: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new IbnbdError('EINVAL', `${flag}: '${v}' is not 0 (${zero}) or a number of seconds`);
    return Number(v);
  };
}

/** A non-negative integer of microseconds (0: off); the range is the daemon's to check. */
function microsecondsInt(flag: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new IbnbdError('EINVAL', `${flag}: '${v}' is not 0 (off) or a number of microseconds`);
    return Number(v);
  };
}

function positiveInt(flag: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new IbnbdError('EINVAL', `${flag}: '${v}' is not a positive integer`);
    return Number(v);
  };
}

export function register(program: Command): void {
  program
    .command('client')
    .summary('run the client daemon')
    .description('Run the client daemon in the foreground: each mapped device becomes a vhost-user-blk socket <run-dir>/vhost/ibnbd<N>.sock.')
    .option('--config <file>', `TOML config file, a key per option (default ${DEFAULT_CLIENT_CONFIG} when it exists); the command line wins`)
    .option('--control <sock>', 'control socket', CLIENT_DEFAULTS.control)
    .option('--run-dir <dir>', 'where the vhost-user sockets and devices/ links are made', CLIENT_DEFAULTS.runDir)
    .option('--state-dir <dir>', 'where the mappings are kept (mappings.json), so a restarted daemon serves each on the same socket again', CLIENT_DEFAULTS.stateDir)
    .option('--io-threads <n>', 'native IO threads (virtqueues and transport connections)', positiveInt('--io-threads'), CLIENT_DEFAULTS.ioThreads)
    .option(...POLL_US_OPTION, microsecondsInt('--poll-us'))
    .option('--heartbeat-ms <ms>', 'transport heartbeat interval (default 5000)', positiveInt('--heartbeat-ms'))
    .option('--heartbeat-missed-max <n>', 'missed heartbeats before a path is dead (default 5)', positiveInt('--heartbeat-missed-max'))
    // No commander default for the two spellings of one default: giving both must be seen (EINVAL)
    .option(
      '--reconnect-delay <s>',
      `default reconnect_delay of new sessions: once every path to a server is lost, the longest pause between reconnect attempts (the first is at once, then 0.1 s doubling up to it); after reconnecting, SESS_INFO and re-OPEN of the devices (default: ${CLIENT_DEFAULTS.reconnectDelayMs / 1000})`,
      positiveInt('--reconnect-delay'),
    )
    .option('--reconnect-delay-ms <ms>', 'the same in milliseconds (instead of --reconnect-delay)', positiveInt('--reconnect-delay-ms'))
    .option(
      '--max-reconnect-attempts <n>',
      'reconnect attempts per lost path before giving up, -1 = forever',
      attemptsInt('--max-reconnect-attempts'),
      CLIENT_DEFAULTS.maxReconnectAttempts,
    )
    .option(
      '--ctrl-loss-tmo <s>',
      'default ctrl_loss_tmo: once every path is lost, guest IO waits this long for the server, then the device is closed and IO fails; -1 = wait for ever, 0 = fail at once (RNBD)',
      tmoInt('--ctrl-loss-tmo', 'for ever'),
      CLIENT_DEFAULTS.ctrlLossTmo,
    )
    .option(
      '--fast-io-fail-tmo <s>',
      'default fast_io_fail_tmo: waiting guest IO fails after this long while reconnecting goes on; -1 = off',
      tmoInt('--fast-io-fail-tmo', 'off'),
      CLIENT_DEFAULTS.fastIoFailTmo,
    )
    .option(
      '--io-timeout <s>',
      'default io_timeout of new sessions: a path with requests outstanding that completes none of them for this long is declared dead (failover to another path, reconnect); found on the heartbeat tick, so within this plus one --heartbeat-ms; 0 = off (heartbeats alone decide)',
      secondsInt('--io-timeout', 'off'),
      CLIENT_DEFAULTS.ioTimeout,
    )
    .option(
      '--admin-timeout <s>',
      `how long an admin request (SESS_INFO, OPEN, CLOSE) waits for the server's answer before it fails with ETIMEDOUT (1..${ADMIN_TIMEOUT_MAX}); a forced unmap and the shutdown wait for a session's earlier requests at most this long`,
      positiveInt('--admin-timeout'),
      CLIENT_DEFAULTS.adminTimeout,
    )
    .option('--metrics <addr:port>', 'serve Prometheus metrics at http://ADDR:PORT/metrics (default: off)')
    .option(...LOG_LEVEL_OPTION)
    .option('--auth-keys <file>', 'session secrets ("<sessname> <secret>" lines, mode 600): a session whose name is listed authenticates itself and the server (TCP); SIGHUP reloads it')
    .action(async (o: { config?: string }, cmd: Command) => {
      // loaded only here: the other commands need neither the daemon nor the TOML reader
      const { CLIENT_CONFIG_KEYS, readClientConfig } = await import('../../client/config.js');
      const { runClientDaemon } = await import('../../client/daemon.js');
      const cli = commandLineValues(cmd, CLIENT_CONFIG_KEYS);
      const options = () => mergeOptions(readClientConfig(o.config), cli) as Partial<ClientDaemonOptions>;
      process.exitCode = await runClientDaemon(options(), { file: o.config ?? DEFAULT_CLIENT_CONFIG, reread: options });
    });
}
