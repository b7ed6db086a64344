// `ibnbd client`: runs the client daemon in the foreground (vhost-user-blk sockets for mapped
// devices, driven by `ibnbd map/unmap/list/show` through its control socket).
import type { Command } from 'commander';
import { IbnbdError } from '../../errors.js';
import { CLIENT_DEFAULTS, runClientDaemon } from '../../client/daemon.js';

/** -1 or a non-negative integer (-1: forever). */
function attemptsInt(flag: string) {
  return (v: string): number => {
    if (!/^(-1|\d+)$/.test(v)) throw new IbnbdError('EINVAL', `${flag}: '${v}' is not -1 (forever) or a non-negative integer`);
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
    .option('--control <sock>', 'control socket', CLIENT_DEFAULTS.control)
    .option('--run-dir <dir>', 'where the vhost-user sockets and devices/ links are made', CLIENT_DEFAULTS.runDir)
    .option('--io-threads <n>', 'native IO threads (virtqueues and transport connections)', positiveInt('--io-threads'), CLIENT_DEFAULTS.ioThreads)
    .option('--heartbeat-ms <ms>', 'transport heartbeat interval (default 5000)', positiveInt('--heartbeat-ms'))
    .option('--heartbeat-missed-max <n>', 'missed heartbeats before a path is dead (default 5)', positiveInt('--heartbeat-missed-max'))
    .option(
      '--reconnect-delay-ms <ms>',
      'after every path to a server is lost: wait this long before each reconnect attempt, then SESS_INFO and re-OPEN the devices',
      positiveInt('--reconnect-delay-ms'),
      CLIENT_DEFAULTS.reconnectDelayMs,
    )
    .option(
      '--max-reconnect-attempts <n>',
      'reconnect attempts per lost path before giving up, -1 = forever',
      attemptsInt('--max-reconnect-attempts'),
      CLIENT_DEFAULTS.maxReconnectAttempts,
    )
    .action(async (o: {
      control: string;
      runDir: string;
      ioThreads: number;
      heartbeatMs?: number;
      heartbeatMissedMax?: number;
      reconnectDelayMs: number;
      maxReconnectAttempts: number;
    }) => {
      process.exitCode = await runClientDaemon(o);
    });
}
