// The control socket of a daemon: a unix stream socket speaking newline-delimited JSON
// (docs/control-socket.md). Each connection is served in order, one reply per request; a
// misbehaving peer gets an error reply or loses its connection, never the daemon.
import { mkdir, lstat, chmod, unlink } from 'node:fs/promises';
import net from 'node:net';
import { dirname } from 'node:path';
import { IbnbdError, toIbnbdError } from '../errors.js';
import { LineSplitter, MAX_LINE_BYTES, type LineEvent } from './framing.js';
import { encodeErrorReply, encodeOkReply, parseRequestLine, quoteForMessage } from './protocol.js';

export type ControlHandler = (args: Record<string, unknown>) => Promise<object> | object;

export interface ControlServerOptions {
  maxLineBytes?: number;
  /** Connections beyond this are closed at once (each costs a buffer and a file descriptor). */
  maxConnections?: number;
  /** Told about handler failures that are not IbnbdErrors (bugs, not user errors). */
  onUnexpectedError?: (cmd: string, err: unknown) => void;
}

export class ControlServer {
  private readonly handlers: Map<string, ControlHandler>;
  private readonly maxLineBytes: number;
  private readonly opts: ControlServerOptions;
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private accepted = 0;

  constructor(readonly path: string, handlers: Record<string, ControlHandler>, opts: ControlServerOptions = {}) {
    this.handlers = new Map(Object.entries(handlers));
    this.maxLineBytes = opts.maxLineBytes ?? MAX_LINE_BYTES;
    this.opts = opts;
  }

  /** Connections accepted since listen() (a test can see that a client never connected). */
  get connectionsAccepted(): number {
    return this.accepted;
  }

  async listen(): Promise<void> {
    if (this.server) throw new IbnbdError('EBUSY', `control socket ${this.path} is already listening`);
    await mkdir(dirname(this.path), { recursive: true, mode: 0o755 });
    const server = net.createServer({ allowHalfOpen: true }, (sock) => this.onConnection(sock));
    server.maxConnections = this.opts.maxConnections ?? 128;
    // accept() failures (EMFILE...) surface here; a daemon keeps serving the connections it has.
    server.on('error', () => {});
    try {
      await bindOnce(server, this.path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw toIbnbdError(e);
      await removeStaleSocket(this.path);
      await bindOnce(server, this.path).catch((e2) => {
        throw toIbnbdError(e2);
      });
    }
    this.server = server;
    await chmod(this.path, 0o600); // umask already did it; this states it for any odd umask handling
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    // libuv unlinks the socket file when the listening handle closes (by name: a successor that
    // took the path after someone removed our file would lose it; not worth a workaround).
    await closed;
  }

  private onConnection(sock: net.Socket): void {
    this.accepted++;
    this.sockets.add(sock);
    sock.on('close', () => this.sockets.delete(sock));
    sock.on('error', () => {}); // a peer that resets: its connection just ends
    const splitter = new LineSplitter(this.maxLineBytes);
    const queue: LineEvent[] = [];
    let busy = false;
    let peerEnded = false;
    let discarding = false;

    const pump = async (): Promise<void> => {
      if (busy) return;
      busy = true;
      sock.pause(); // bounds what a fast writer can queue: at most one chunk of lines
      while (queue.length > 0 && !sock.destroyed) {
        const ev = queue.shift()!;
        if ('overflow' in ev) {
          const err = new IbnbdError('EINVAL', `request: line longer than ${this.maxLineBytes} bytes`);
          // Reply, then close. Closing a socket with unread input makes the kernel send RST, which can
          // destroy the reply before the peer reads it: drain (and ignore) the rest of the peer's
          // input until it closes its side, or a second at most.
          discarding = true;
          queue.length = 0;
          sock.end(`${encodeErrorReply(err)}\n`);
          sock.resume();
          setTimeout(() => sock.destroy(), 1000).unref();
          return; // stays busy: nothing more is answered for this peer
        }
        const reply = await this.answer(ev.line);
        if (reply !== undefined && !sock.destroyed && !sock.write(`${reply}\n`)) await drained(sock);
      }
      busy = false;
      if (sock.destroyed) return;
      if (peerEnded) sock.end();
      else sock.resume();
    };

    sock.on('data', (chunk: Buffer) => {
      if (discarding) return;
      queue.push(...splitter.push(chunk));
      void pump();
    });
    sock.on('end', () => {
      if (discarding) return void sock.destroy();
      // A request cut off by the end of the stream gets no reply: the peer gave up on it.
      peerEnded = true;
      void pump();
    });
  }

  /** One request line → one reply line (undefined for a blank line). Never throws. */
  private async answer(line: string): Promise<string | undefined> {
    let cmd = '';
    try {
      const req = parseRequestLine(line);
      if (!req) return undefined;
      cmd = req.cmd;
      const handler = this.handlers.get(req.cmd);
      if (!handler) {
        throw new IbnbdError(
          'EOPNOTSUPP',
          `cmd: unknown command ${quoteForMessage(req.cmd)} (this daemon knows: ${[...this.handlers.keys()].join(', ')})`,
        );
      }
      const { cmd: _cmd, ...args } = req;
      return encodeOkReply(await handler(args));
    } catch (e) {
      if (!(e instanceof IbnbdError) && !isErrnoError(e)) this.opts.onUnexpectedError?.(cmd, e);
      return encodeErrorReply(toIbnbdError(e));
    }
  }
}

function isErrnoError(e: unknown): boolean {
  return typeof (e as { code?: unknown })?.code === 'string';
}

function drained(sock: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      sock.off('drain', done);
      sock.off('close', done);
      resolve();
    };
    sock.on('drain', done);
    sock.on('close', done);
  });
}

/** listen() on a unix path with umask 0177, so the socket is 0600 from the moment it exists. */
function bindOnce(server: net.Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => {
      server.off('listening', onListening);
      reject(e);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    // process.umask() cannot be set from a worker thread; there the chmod after listen is all we get.
    let oldMask: number | undefined;
    try {
      oldMask = process.umask(0o177);
    } catch {
      oldMask = undefined;
    }
    try {
      server.listen(path); // binds synchronously for a unix path
    } finally {
      if (oldMask !== undefined) process.umask(oldMask);
    }
  });
}

/**
 * The path is taken. If it is a socket nobody listens on (a daemon that died), it is ours to
 * replace; a live daemon or a file of another kind is left alone.
 */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (st && !st.isSocket()) throw new IbnbdError('EEXIST', `${path} exists and is not a socket`);
  if (!st) return; // gone meanwhile
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new IbnbdError('EADDRINUSE', `a daemon is already listening on ${path}`);
  await unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw toIbnbdError(e);
  });
}
