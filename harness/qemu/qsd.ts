// qemu-storage-daemon exporting a file as a vhost-user-blk socket: a real, independent backend
// to check the harness against (and a reference peer for our own backend's tests). The export's
// argument is shared with the bench, which runs qsd inside a guest (bench/interop-qsd.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { IbnbdError } from '../../src/errors.js';

export interface QsdOptions {
  file: string;
  socket: string;
  numQueues?: number;
  writable?: boolean;
  /** how long to wait for the socket to appear; default 10 s */
  startTimeoutMs?: number;
}

export interface Qsd {
  readonly process: ChildProcess;
  /** SIGTERM, then SIGKILL after 3 s; resolves when the process is gone */
  stop(): Promise<void>;
}

/** One `--export` of a block node as a vhost-user-blk socket (commas in the path doubled, as QEMU's option syntax wants). */
export function vhostUserBlkExportArg(o: { nodeName: string; socket: string; writable: boolean; numQueues: number }): string {
  return `type=vhost-user-blk,id=e0,node-name=${o.nodeName},addr.type=unix,addr.path=${o.socket.replace(/,/g, ',,')},` +
    `writable=${o.writable ? 'on' : 'off'},num-queues=${o.numQueues}`;
}

export async function startQsd(o: QsdOptions): Promise<Qsd> {
  const args = [
    '--blockdev', `driver=file,node-name=f0,filename=${o.file.replace(/,/g, ',,')}`,
    '--blockdev', 'driver=raw,node-name=d0,file=f0',
    '--export', vhostUserBlkExportArg({ nodeName: 'd0', socket: o.socket, writable: o.writable !== false, numQueues: o.numQueues ?? 1 }),
  ];
  const child = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const gone = new Promise<void>((resolve) => {
    child.once('close', () => resolve());
    child.once('error', () => resolve()); // spawn failed: no 'close' is guaranteed
  });
  let exited = false;
  void gone.then(() => (exited = true));
  const killer = () => child.kill('SIGKILL');
  process.once('exit', killer);

  const stop = async () => {
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(t);
    }
    process.removeListener('exit', killer);
  };

  const deadline = Date.now() + (o.startTimeoutMs ?? 10000);
  while (!existsSync(o.socket)) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new IbnbdError(exited ? 'EIO' : 'ETIMEDOUT', `qemu-storage-daemon did not listen on ${o.socket}: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { process: child, stop };
}
