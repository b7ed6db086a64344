// A small QMP client for test guests (GuestOptions.qmpSocket): connect to QEMU's monitor socket,
// leave capabilities negotiation, run commands one at a time. QMP is JSON objects, one a line:
// a greeting, then for every command a `return` or an `error`; events may come in between and are
// kept (migration tests may want MIGRATION or STOP), never taken for a reply.
import { connect, type Socket } from 'node:net';
import { IbnbdError } from '../../src/errors.js';

export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  cmd: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  /** every event received so far, oldest first */
  readonly events: QmpEvent[] = [];
  #sock: Socket;
  #buf = '';
  #queue: Pending[] = []; // replies come back in the order the commands were sent
  #closed: Error | undefined;
  #greeting: ((v: unknown) => void) | undefined;

  private constructor(sock: Socket) {
    this.#sock = sock;
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => this.#onData(chunk));
    sock.on('error', () => {}); // 'close' follows and fails what waits
    sock.on('close', () => this.#fail(new IbnbdError('ECONNRESET', 'QMP socket closed')));
  }

  /** Connects to `path`, retried until QEMU listens there (it creates the socket a moment after
   *  it starts), reads the greeting and sends qmp_capabilities. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const sock = await new Promise<Socket | Error>((resolve) => {
        const s = connect(path);
        s.once('connect', () => resolve(s));
        s.once('error', (e) => {
          s.destroy();
          resolve(e);
        });
      });
      if (!(sock instanceof Error)) {
        const c = new QmpClient(sock);
        const greeting = new Promise<unknown>((resolve) => (c.#greeting = resolve));
        try {
          await c.#bounded(greeting, Math.max(1, end - Date.now()), 'QMP greeting');
          await c.execute('qmp_capabilities');
        } catch (e) {
          c.close();
          throw e;
        }
        return c;
      }
      if (Date.now() > end) throw new IbnbdError('ETIMEDOUT', `no QMP at ${path} within ${timeoutMs} ms: ${sock.message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Runs `cmd`; resolves with its `return`, rejects with EIO and QMP's class and desc on `error`. */
  execute<T = unknown>(cmd: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    if (this.#closed) return Promise.reject(this.#closed);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.#queue.findIndex((p) => p.timer === timer);
        if (i >= 0) this.#queue.splice(i, 1);
        // a late reply would now answer the wrong command: this client is done
        this.#fail(new IbnbdError('ETIMEDOUT', `QMP ${cmd}: no reply within ${timeoutMs} ms`));
        reject(new IbnbdError('ETIMEDOUT', `QMP ${cmd}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#queue.push({ cmd, resolve: resolve as (v: unknown) => void, reject, timer });
      this.#sock.write(JSON.stringify(args ? { execute: cmd, arguments: args } : { execute: cmd }) + '\n');
    });
  }

  close(): void {
    this.#sock.destroy();
  }

  #onData(chunk: string): void {
    this.#buf += chunk;
    let nl: number;
    while ((nl = this.#buf.indexOf('\n')) >= 0) {
      const line = this.#buf.slice(0, nl).trim();
      this.#buf = this.#buf.slice(nl + 1);
      if (line) this.#onMessage(line);
    }
  }

  #onMessage(line: string): void {
    let m: Record<string, any>;
    try {
      m = JSON.parse(line) as Record<string, any>;
    } catch {
      return this.#fail(new IbnbdError('EPROTO', `QMP: not JSON: ${line.slice(0, 200)}`));
    }
    if ('QMP' in m) {
      this.#greeting?.(m.QMP);
      this.#greeting = undefined;
    } else if (typeof m.event === 'string') {
      this.events.push(m as QmpEvent);
    } else if ('return' in m || 'error' in m) {
      const p = this.#queue.shift();
      if (!p) return;
      clearTimeout(p.timer);
      if ('error' in m) p.reject(new IbnbdError('EIO', `QMP ${p.cmd}: ${m.error?.class}: ${m.error?.desc}`));
      else p.resolve(m.return);
    }
  }

  #fail(e: Error): void {
    if (this.#closed) return;
    this.#closed = e;
    for (const p of this.#queue.splice(0)) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.#sock.destroy();
  }

  /** The greeting, or ETIMEDOUT, or the socket's end, whichever first. */
  #bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const onClose = () => done(() => reject(this.#closed ?? new IbnbdError('ECONNRESET', `${what}: socket closed`)));
      const timer = setTimeout(() => done(() => reject(new IbnbdError('ETIMEDOUT', `${what}: none within ${ms} ms`))), ms);
      const done = (f: () => void) => {
        clearTimeout(timer);
        this.#sock.off('close', onClose);
        f();
      };
      this.#sock.once('close', onClose);
      p.then((v) => done(() => resolve(v)));
    });
  }
}
