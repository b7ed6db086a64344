// The client side of a control socket: one request, one reply, then the connection is closed.
import net from 'node:net';
import { IbnbdError, isErrnoName } from '../errors.js';
import { LineSplitter } from './framing.js';
import { decodeReply, type ControlResult } from './protocol.js';

export interface ControlRequestOptions {
  /** Whole exchange, connect to reply (default 30 s: a map may wait for a session to connect). */
  timeoutMs?: number;
  /** Largest reply accepted (a list of many devices is long, but not unbounded). */
  maxReplyBytes?: number;
}

/**
 * Sends one request to the daemon on `path` and returns its result (the reply without "ok").
 * An error reply is thrown as an IbnbdError with the daemon's code; no daemon at all is
 * ENOENT/ECONNREFUSED "no daemon listening on <path>".
 */
export function controlRequest(
  path: string,
  request: object,
  { timeoutMs = 30_000, maxReplyBytes = 16 * 1024 * 1024 }: ControlRequestOptions = {},
): Promise<ControlResult> {
  const line = `${JSON.stringify(request)}\n`;
  return new Promise<ControlResult>((resolve, reject) => {
    const sock = net.createConnection(path);
    const splitter = new LineSplitter(maxReplyBytes);
    let settled = false;
    const finish = (err: IbnbdError | undefined, result?: ControlResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(result!);
    };
    const timer = setTimeout(
      () => finish(new IbnbdError('ETIMEDOUT', `no reply from the daemon on ${path} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    sock.on('connect', () => sock.write(line));
    sock.on('data', (chunk: Buffer) => {
      for (const ev of splitter.push(chunk)) {
        if ('overflow' in ev) return finish(new IbnbdError('EPROTO', `reply from ${path} longer than ${maxReplyBytes} bytes`));
        try {
          return finish(undefined, decodeReply(ev.line));
        } catch (e) {
          return finish(e as IbnbdError);
        }
      }
    });
    sock.on('error', (e: NodeJS.ErrnoException) => finish(connectError(path, e)));
    sock.on('close', () => finish(new IbnbdError('EPROTO', `the daemon on ${path} closed the connection without a reply`)));
  });
}

function connectError(path: string, e: NodeJS.ErrnoException): IbnbdError {
  switch (e.code) {
    case 'ENOENT':
    case 'ECONNREFUSED':
      return new IbnbdError(e.code, `no daemon listening on ${path}`);
    case 'EACCES':
    case 'EPERM':
      return new IbnbdError(e.code, `not allowed to talk to the daemon on ${path}`);
    default:
      return new IbnbdError(isErrnoName(e.code) ? e.code : 'EIO', `${path}: ${e.message}`);
  }
}
