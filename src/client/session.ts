// Client sessions, found or created by sessname as IBNBD does: the first map to a server creates
// the transport session (all its paths) and sends SESS_INFO once; later maps with the same
// sessname share it; it is closed when its last device is unmapped. When every path is lost the
// transport dials again (reconnectDelayMs, maxReconnectAttempts); the observer hears 'closed' and
// 'open' and re-opens the devices (client.ts).
import { IbnbdError, toIbnbdError } from '../errors.js';
import { ClientSession as TransportSession, type LinkEvent } from '../backend/transport.js';
import type { MapRequest } from '../proto/map-string.js';
import type { PathSpec, TransportKind as Transport } from '../transport/paths.js';
import { sessInfo } from './admin.js';

export type SessionState = 'open' | 'closed';

export interface SessionObserver {
  /** Every path of the session is gone (state closed) or one is back (open). */
  onSessionState(session: ClientSession, state: SessionState): void;
}

export class ClientSession {
  state: SessionState = 'open';
  /** Counts link state changes: work started under one epoch is void once it moved on. */
  linkEpoch = 0;
  protocolVersion = 0;
  /** Names of the mapped devices using this session. */
  readonly devices = new Set<string>();

  constructor(
    readonly sessname: string,
    readonly transport: Transport,
    readonly paths: PathSpec[],
    readonly native: TransportSession,
  ) {}

  describePaths(): string[] {
    return this.paths.map((p) => (p.src ? `${endpoint(p.src)},${endpoint(p.dst)}` : endpoint(p.dst)));
  }
}

function endpoint(e: { kind: string; addr: string; port: number }): string {
  // an IPv6 address in brackets; a GID too when a port follows (its colons would swallow it)
  const a = e.addr.includes(':') && (e.kind === 'ip' || e.port) ? `[${e.addr}]` : e.addr;
  return e.port ? `${e.kind}:${a}:${e.port}` : `${e.kind}:${a}`;
}

/** RDMA connect failures say what to check: the errno stays (EHOSTUNREACH, ECONNREFUSED,
 *  ETIMEDOUT...), the message names the likely causes and the way out. */
function rdmaConnectError(e: unknown, paths: PathSpec[]): IbnbdError {
  const err = toIbnbdError(e);
  const where = paths.map((p) => endpoint(p.dst)).join(', ');
  return new IbnbdError(
    err.code,
    `transport=rdma: no IBNBD server answered over RDMA at ${where} (${err.message}): the address needs a route ` +
      'through an RDMA device (rdma link show) and an IBNBD/RNBD server listening for RDMA on that port; ' +
      'transport=tcp maps over TCP instead',
  );
}

export interface SessionOptions {
  connectTimeoutMs: number;
  heartbeatMs?: number;
  heartbeatMissedMax?: number;
  /** Delay before a lost path is dialled again (RNBD: 30 s). */
  reconnectDelayMs?: number;
  /** Attempts per lost path before it is given up; -1 = forever (RNBD's default). */
  maxReconnectAttempts?: number;
}

export class ClientSessions {
  private readonly byName = new Map<string, ClientSession>();

  constructor(
    private readonly observer: SessionObserver,
    private readonly opts: SessionOptions,
  ) {}

  get(sessname: string): ClientSession | undefined {
    return this.byName.get(sessname);
  }

  all(): ClientSession[] {
    return [...this.byName.values()];
  }

  /** The session named by req.sessname, created (connected, SESS_INFO sent) when new. */
  async getOrCreate(req: MapRequest & { transport: Transport }): Promise<ClientSession> {
    const existing = this.byName.get(req.sessname);
    if (existing) {
      if (existing.transport !== req.transport) {
        throw new IbnbdError(
          'EINVAL',
          `transport: session '${req.sessname}' already runs over ${existing.transport}, not ${req.transport}`,
        );
      }
      if (existing.state !== 'open') {
        throw new IbnbdError('EIO', `session '${req.sessname}' is disconnected from its server`);
      }
      return existing;
    }
    let session: ClientSession | undefined;
    const native = new TransportSession(
      {
        transport: req.transport,
        sessname: req.sessname,
        paths: req.paths,
        mpPolicy: req.mpPolicy,
        heartbeatMs: this.opts.heartbeatMs,
        heartbeatMissedMax: this.opts.heartbeatMissedMax,
        reconnectDelayMs: this.opts.reconnectDelayMs,
        maxReconnectAttempts: this.opts.maxReconnectAttempts,
      },
      // Link events arrive in the order the transport raised them (one IO thread posts them),
      // so 'disconnected' is always handled before the 'reconnected' that follows it.
      (ev: LinkEvent) => {
        if (!session) return;
        const state: SessionState = ev === 'disconnected' ? 'closed' : 'open';
        if (session.state === state) return;
        session.state = state;
        session.linkEpoch++;
        this.observer.onSessionState(session, state);
      },
    );
    try {
      try {
        await native.connect(this.opts.connectTimeoutMs);
      } catch (e) {
        throw req.transport === 'rdma' ? rdmaConnectError(e, req.paths) : e;
      }
      session = new ClientSession(req.sessname, req.transport, req.paths, native);
      session.protocolVersion = await sessInfo(native);
    } catch (e) {
      await native.close().catch(() => undefined);
      throw e;
    }
    this.byName.set(req.sessname, session);
    return session;
  }

  /** Closes the session when no device uses it any more (IBNBD: a session lives with its devices). */
  async releaseIfUnused(session: ClientSession): Promise<void> {
    if (session.devices.size > 0) return;
    if (this.byName.get(session.sessname) === session) this.byName.delete(session.sessname);
    await session.native.close();
  }

  async closeAll(): Promise<void> {
    const all = [...this.byName.values()];
    this.byName.clear();
    await Promise.all(all.map((s) => s.native.close().catch(() => undefined)));
  }
}
