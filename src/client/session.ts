// Client sessions, found or created by sessname as IBNBD does: the first map to a server creates
// the transport session (all its paths) and sends SESS_INFO once; later maps with the same
// sessname share it; it is closed when its last device is unmapped and no map or unmap is under
// way on it. Found or created at once (no await: the map of sessions changes in one step); the
// connect and SESS_INFO run in the session's own queue (ready()), where its maps wait for them.
// When every path is lost the transport dials again (at once, then backing off up to
// reconnectDelayMs; maxReconnectAttempts); the observer hears 'closed' and 'open' (only once the
// session is live) and re-opens the devices (client.ts). The reconnect
// delay and the io_timeout belong to the session (one transport dials and watches the paths for
// all its devices): the map that creates it sets them, a later map may only name the same ones.
import { IbnbdError, toIbnbdError } from '../errors.js';
import { ClientSession as TransportSession, type LinkEvent } from '../backend/transport.js';
import { RECONNECT_DEFAULTS, type MapRequest } from '../proto/map-string.js';
import type { PathSpec, TransportKind as Transport } from '../transport/paths.js';
import { sessInfo, type AdminChannel } from './admin.js';
import { SerialQueue } from './serialize.js';

export type SessionState = 'open' | 'closed';

export interface SessionObserver {
  /** Every path of the session is gone (state closed) or one is back (open). */
  onSessionState(session: ClientSession, state: SessionState): void;
}

export class ClientSession implements AdminChannel {
  state: SessionState = 'open';
  /** When it entered that state (Date.now()), for the metrics' time in state. */
  stateSince = Date.now();
  /** Counts link state changes: work started under one epoch is void once it moved on. */
  linkEpoch = 0;
  protocolVersion = 0;
  /** Names of the mapped devices using this session. */
  readonly devices = new Set<string>();
  /** The session's admin traffic, one job at a time: maps (connect, SESS_INFO, OPEN), unmaps
   *  (CLOSE), the re-open after a reconnect. A request the server leaves unanswered holds up
   *  this queue only, for at most adminTimeoutMs. */
  readonly queue = new SerialQueue();
  /** Maps and unmaps under way that need the session: it is not closed under them. */
  users = 0;
  /** Connected and SESS_INFO answered: link events reach the observer from then on. */
  live = false;
  /** connect + SESS_INFO, run once (ClientSessions.ready). */
  setup: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  constructor(
    readonly sessname: string,
    readonly transport: Transport,
    readonly paths: PathSpec[],
    readonly native: TransportSession,
    /** The longest pause between reconnect attempts (reconnect_delay, or the daemon's default). */
    readonly reconnectDelayMs: number,
    /** A path with requests outstanding that completes none for this long is dead (io_timeout,
     *  or the daemon's default); 0: off. */
    readonly ioTimeoutMs: number,
    /** How long an admin request waits for its answer (--admin-timeout). */
    readonly adminTimeoutMs: number,
  ) {}

  /** Closed (or closing): nothing more is sent on it. */
  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /** Closes the transport session once (its unanswered requests complete with an error). */
  close(): Promise<void> {
    this.#closing ??= this.native.close().catch(() => undefined);
    return this.#closing;
  }

  describePaths(): string[] {
    return describePathSpecs(this.paths);
  }
}

/** Paths as `show` lists them: "[src,]dst" each. */
export function describePathSpecs(paths: PathSpec[]): string[] {
  return paths.map((p) => (p.src ? `${endpoint(p.src)},${endpoint(p.dst)}` : endpoint(p.dst)));
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
  if (/info (response|exchange)/.test(err.message)) {
    // connected, then dropped at the info exchange, where RTRS names the session
    return new IbnbdError(
      err.code,
      `transport=rdma: the server at ${where} took the connection but not the session (${err.message}): ` +
        'its name is in use by another session, or the server has --auth-keys and this name needs a proof: give this daemon the session\'s secret with --auth-keys (docs/security.md)',
    );
  }
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
  /** Default reconnect_delay of new sessions in ms: the longest pause between attempts to dial
   *  a lost path (the first is at once, then 100 ms doubling up to it); RNBD waits 30 s flat. */
  reconnectDelayMs?: number;
  /** Default io_timeout of new sessions in ms: a path with requests outstanding that completes
   *  none of them for this long is declared dead (failover, reconnect); 0: off. */
  ioTimeoutMs?: number;
  /** Attempts per lost path before it is given up; -1 = forever (RNBD's default). */
  maxReconnectAttempts?: number;
  /** How long an admin request (SESS_INFO, OPEN, CLOSE) waits for its answer, in ms. */
  adminTimeoutMs?: number;
  /** The secret of a session name (--auth-keys), looked up when the session is created. */
  secretOf?: (sessname: string) => Buffer | undefined;
}

export const ADMIN_TIMEOUT_DEFAULT_MS = 30_000;

export class ClientSessions {
  private readonly byName = new Map<string, ClientSession>();
  /** Sessions being closed, by name: a new session of that name connects once it is closed. */
  readonly #closing = new Map<string, Promise<void>>();

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

  /** The session named by req.sessname, found or created (not yet connected: ready() in its
   *  queue does that), with one more user; the caller gives it back (users--, releaseIfUnused). */
  acquire(req: MapRequest & { transport: Transport }): ClientSession {
    const existing = this.byName.get(req.sessname);
    if (existing) {
      if (existing.transport !== req.transport) {
        throw new IbnbdError(
          'EINVAL',
          `transport: session '${req.sessname}' already runs over ${existing.transport}, not ${req.transport}`,
        );
      }
      if (req.reconnectDelay !== undefined && req.reconnectDelay * 1000 !== existing.reconnectDelayMs) {
        throw new IbnbdError(
          'EINVAL',
          `reconnect_delay: session '${req.sessname}' reconnects every ${existing.reconnectDelayMs / 1000} s already ` +
            '(set when it was created; it applies to all its devices): leave reconnect_delay out or give that value',
        );
      }
      if (req.ioTimeout !== undefined && req.ioTimeout * 1000 !== existing.ioTimeoutMs) {
        const now = existing.ioTimeoutMs === 0 ? 'has no io_timeout (0)' : `times out stalled paths after ${existing.ioTimeoutMs / 1000} s`;
        throw new IbnbdError(
          'EINVAL',
          `io_timeout: session '${req.sessname}' ${now} already ` +
            '(set when it was created; it applies to all its devices): leave io_timeout out or give that value',
        );
      }
      existing.users++;
      return existing;
    }
    const reconnectDelayMs =
      req.reconnectDelay !== undefined
        ? req.reconnectDelay * 1000
        : this.opts.reconnectDelayMs ?? RECONNECT_DEFAULTS.reconnectDelay * 1000;
    const ioTimeoutMs =
      req.ioTimeout !== undefined ? req.ioTimeout * 1000 : this.opts.ioTimeoutMs ?? RECONNECT_DEFAULTS.ioTimeout * 1000;
    let session: ClientSession | undefined;
    const native = new TransportSession(
      {
        transport: req.transport,
        sessname: req.sessname,
        paths: req.paths,
        mpPolicy: req.mpPolicy,
        heartbeatMs: this.opts.heartbeatMs,
        heartbeatMissedMax: this.opts.heartbeatMissedMax,
        reconnectDelayMs,
        ioTimeoutMs,
        maxReconnectAttempts: this.opts.maxReconnectAttempts,
        authKey: this.opts.secretOf?.(req.sessname),
      },
      // Link events arrive in the order the transport raised them (one IO thread posts them),
      // so 'disconnected' is always handled before the 'reconnected' that follows it.
      (ev: LinkEvent) => {
        if (!session || session.closed) return;
        const state: SessionState = ev === 'disconnected' ? 'closed' : 'open';
        if (session.state === state) return;
        session.state = state;
        session.stateSince = Date.now();
        session.linkEpoch++;
        if (session.live) this.observer.onSessionState(session, state);
      },
    );
    session = new ClientSession(
      req.sessname,
      req.transport,
      req.paths,
      native,
      reconnectDelayMs,
      ioTimeoutMs,
      this.opts.adminTimeoutMs ?? ADMIN_TIMEOUT_DEFAULT_MS,
    );
    session.users++;
    this.byName.set(req.sessname, session);
    return session;
  }

  /** Connects a new session and sends SESS_INFO, once; run in the session's queue, so the maps
   *  queued behind the first wait for it (and share its failure: the session is then gone). */
  ready(session: ClientSession): Promise<void> {
    session.setup ??= this.#setUp(session);
    return session.setup;
  }

  async #setUp(session: ClientSession): Promise<void> {
    try {
      // a session of the same name being closed goes first (the server knows one at a time)
      await this.#closing.get(session.sessname);
      try {
        await session.native.connect(this.opts.connectTimeoutMs);
      } catch (e) {
        const code = toIbnbdError(e).code;
        if (code === 'EACCES') {
          // the same words whichever side or part failed: the logs of both daemons say more
          throw new IbnbdError('EACCES', `session ${session.sessname}: authentication failed`);
        }
        if (code === 'EBUSY') {
          throw new IbnbdError('EBUSY', `session ${session.sessname}: the server refused it for now: at its limit of sessions or of connections per session, or still finishing a lost path's requests (its log says which)`);
        }
        throw session.transport === 'rdma' ? rdmaConnectError(e, session.paths) : e;
      }
      session.protocolVersion = await sessInfo(session);
      session.live = true;
    } catch (e) {
      if (this.byName.get(session.sessname) === session) this.byName.delete(session.sessname);
      await session.close();
      throw e;
    }
  }

  /** Closes the session when no device and no map or unmap under way uses it any more (IBNBD: a
   *  session lives with its devices). Never throws. */
  async releaseIfUnused(session: ClientSession): Promise<void> {
    if (session.devices.size > 0 || session.users > 0) return;
    await this.#close(session);
  }

  /** Every session closed (their unanswered requests complete with an error). */
  async closeAll(): Promise<void> {
    await Promise.all([...this.byName.values()].map((s) => this.#close(s)));
    await Promise.all([...this.#closing.values()]);
  }

  #close(session: ClientSession): Promise<void> {
    const name = session.sessname;
    if (this.byName.get(name) === session) this.byName.delete(name);
    const closing = session.close();
    const prev = this.#closing.get(name);
    const all = prev ? Promise.all([prev, closing]).then(() => undefined) : closing;
    this.#closing.set(name, all);
    void all.then(() => {
      if (this.#closing.get(name) === all) this.#closing.delete(name);
    });
    return closing;
  }
}
