// The server's control socket commands. Requests come from anyone who can reach the socket:
// arguments are checked, errors are IbnbdErrors (the control layer sends them as {code,message}).
import { IbnbdError } from '../errors.js';
import type { ControlHandler } from '../control/server.js';
import type { ExportServer } from './server.js';
import { ioThreadsEntry } from '../backend/transport.js';

export function serverCommands(server: ExportServer): Record<string, ControlHandler> {
  return {
    devices: () => ({ devices: server.devices() }),
    // with the daemon's IO threads (--poll-us and its polls): the runtime listing of the daemon
    sessions: () => ({ sessions: server.sessionList(), io_threads: ioThreadsEntry() }),
    'force-close': (args) => {
      const sessname = stringArg(args, 'sessname');
      const device = stringArg(args, 'device');
      return server.forceClose(sessname, device);
    },
  };
}

function stringArg(args: Record<string, unknown>, name: string): string {
  const v = args?.[name];
  if (typeof v !== 'string' || v.length === 0 || v.length > 4096) {
    throw new IbnbdError('EINVAL', `${name}: a non-empty string is required`);
  }
  return v;
}
