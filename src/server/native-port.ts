// The native transport server (NativeServer in native/server/binding.cc) seen from the export
// server: started with the daemon's options, its events passed on as ServerEvents, and the
// NativePort the ExportServer drives (respond, attach/detach, in-flight counts, paths).
// The only file here that knows the binding's shape.
import { toIbnbdError } from '../errors.js';
import { NativeServer, type NativeServerEvent, type NativeServerLimits, type NativeServerStats } from '../backend/server-native.js';
import { configureIoThreads, hostHasRdma, setPollUs, type PathInfo } from '../backend/transport.js';
import type { Endpoint } from '../transport/paths.js';
import type { SessionPathEntry } from './introspection.js';
import type { ServerLimits, ServerOptions } from './options.js';
import type { AuthKeys } from '../auth/keys-file.js';
import type { NativePort, ServerEvent } from './server.js';
import type { AttachSpec } from './session.js';

export interface NativeServerHandle {
  port: NativePort;
  bound(): string[];
  /** New session secrets for every transport (SIGHUP); null: sessions need none. */
  setAuthKeys(keys: AuthKeys | null): void;
  /** New bounds for every transport (SIGHUP), from the next accept or handshake on. */
  setLimits(limits: ServerLimits): void;
  /** Stops listening and closes every session (session-down events follow). */
  stop(): Promise<void>;
  /** Every session with its paths and its devices' per-operation metrics, session ids as the
   *  ExportServer knows them: read at a /metrics scrape, never per IO. */
  ioStats(): NativeServerStats['sessions'];
}

function formatEndpoint(e: Endpoint): string {
  return e.addr.includes(':') ? `[${e.addr}]:${e.port}` : `${e.addr}:${e.port}`;
}

function toPaths(paths: unknown): SessionPathEntry[] {
  if (!Array.isArray(paths)) return [];
  return (paths as Array<Pick<PathInfo, 'src' | 'dst' | 'state' | 'inflight'>>).map((p) => ({
    src: String(p.src),
    dst: String(p.dst),
    state: String(p.state),
    inflight: Number(p.inflight) || 0,
  }));
}

/** Native events → ServerEvents; anything malformed is dropped (it would be a native bug). */
function toServerEvent(ev: NativeServerEvent): ServerEvent | null {
  const sessionId = String(ev.sessionId ?? '');
  switch (ev.type) {
    case 'session-up':
      return { type: 'session-up', sessionId, sessname: String(ev.sessname), paths: toPaths(ev.paths) };
    case 'session-down':
      return { type: 'session-down', sessionId };
    case 'request':
      if (!Buffer.isBuffer(ev.usr) || typeof ev.requestId !== 'number') return null;
      return {
        type: 'request',
        sessionId,
        requestId: ev.requestId,
        dir: ev.dir === 'write' ? 'write' : 'read',
        usr: ev.usr,
        dataLen: Number(ev.dataLen) || 0,
      };
    default:
      return null;
  }
}

/** The bounds the native side checks (the devices per session and the OPEN timeout are JS's). */
function nativeLimits(l: ServerLimits): NativeServerLimits {
  return {
    maxSessions: l.maxSessions, maxConnsPerSession: l.maxConnsPerSession,
    maxPendingHandshakes: l.maxPendingHandshakes, handshakeTimeoutMs: l.handshakeTimeoutMs,
    maxBufferBytes: l.maxBufferBytes,
  };
}

/** One native transport server (one transport) and its NativePort, ids as the native side has them. */
function startOne(
  transport: 'tcp' | 'rdma',
  listen: Endpoint[],
  opts: ServerOptions,
  onEvent: (ev: ServerEvent) => void,
): {
  port: NativePort;
  bound: Endpoint[];
  setAuthKeys(keys: AuthKeys | null): void;
  setLimits(limits: ServerLimits): void;
  stop(): Promise<void>;
  ioStats(): NativeServerStats['sessions'];
} {
  let native: NativeServer;
  try {
    native = new NativeServer(
      {
        transport, listen, queueDepth: opts.queueDepth, maxIoSize: opts.maxIoSize, allow: opts.allow,
        ...nativeLimits(opts.limits),
      },
      (raw) => {
        const ev = toServerEvent(raw);
        if (ev) onEvent(ev);
      },
    );
  } catch (e) {
    throw toIbnbdError(e);
  }
  let bound: Endpoint[];
  try {
    // before the first handshake can arrive
    native.setAuthKeys(opts.authKeys ?? null);
    bound = native.start();
  } catch (e) {
    void native.stop();
    throw toIbnbdError(e);
  }

  // One stats() snapshot serves a whole introspection pass (inflight/paths of every session).
  let snapshot: Map<string, NativeServerStats['sessions'][number]> | null = null;
  const statsOf = (sessionId: string) => {
    if (!snapshot) {
      snapshot = new Map(native.stats().sessions.map((s) => [String(s.sessionId), s]));
      queueMicrotask(() => (snapshot = null));
    }
    return snapshot.get(sessionId);
  };

  const port: NativePort = {
    respond: (requestId, errno, data) => native.respond(requestId, errno === 0 ? 0 : -Math.abs(errno), data),
    attach: (sessionId, deviceId, spec: AttachSpec) =>
      native.attachDevice(sessionId, deviceId, {
        readFd: spec.fds.readFd,
        writeFd: spec.readOnly ? -1 : spec.fds.writeFd,
        readDirect: spec.fds.readDirect,
        writeDirect: spec.fds.writeDirect,
        readOnly: spec.readOnly,
        blockDevice: spec.blockDevice,
        sizeBytes: spec.geometry.sizeBytes,
        logicalBlockSize: spec.geometry.logicalBlockSize,
      }),
    detach: (sessionId, deviceId) => {
      try {
        // The native side holds dup()s of the descriptors and closes them once the device's
        // in-flight IO drains; the promise only reports that moment.
        void native.detachDevice(sessionId, deviceId).catch(() => {});
      } catch (e) {
        // the session is already gone natively: its devices were detached with it
        if (toIbnbdError(e).code !== 'ENOENT') throw e;
      }
    },
    resize: (sessionId, deviceId, sizeBytes) => native.resizeDevice(sessionId, deviceId, sizeBytes),
    inflight: (sessionId, deviceId) => statsOf(sessionId)?.devices.find((d) => d.deviceId === deviceId)?.inflight ?? 0,
    paths: (sessionId) => toPaths(statsOf(sessionId)?.paths),
    closeSession: (sessionId) => native.closeSession(sessionId),
  };
  return { port, bound, setAuthKeys: (k) => native.setAuthKeys(k), setLimits: (l) => native.setLimits(nativeLimits(l)), stop: () => native.stop(), ioStats: () => native.stats(true).sessions };
}

/** RDMA listens where TCP got its ports. A wildcard [::] is dual-stack under rdma_cm (as the
 *  kernel's rtrs-srv, which listens on [::] only), so 0.0.0.0 on the same port is left out. */
function rdmaListen(tcpBound: Endpoint[]): Endpoint[] {
  const v6Any = new Set(tcpBound.filter((e) => e.addr === '::').map((e) => e.port));
  return tcpBound.filter((e) => !(e.addr === '0.0.0.0' && v6Any.has(e.port)));
}

/**
 * The daemon's transport servers: TCP, RDMA or (auto) TCP plus RDMA on the same addresses and
 * ports when the host has an RDMA device. Several natives are seen as one NativePort: RDMA
 * session ids get an "rdma-" prefix and request ids are renumbered in JS (only admin requests
 * reach JS, so the map is small), so the ExportServer never knows which wire a session is on.
 */
export function startNativeServer(
  opts: ServerOptions,
  onEvent: (ev: ServerEvent) => void,
  log?: (msg: string) => void,
): NativeServerHandle {
  configureIoThreads(opts.ioThreads);
  setPollUs(opts.pollUs);
  const listen = opts.listen.map((l) => ({ kind: 'ip' as const, addr: l.host, port: l.port }));
  const mode = opts.transport ?? 'auto';
  let nextRequest = 1;
  const requests = new Map<number, { port: NativePort; id: number }>();
  const ones: Array<{ prefix: string; transport: string; one: ReturnType<typeof startOne> }> = [];
  const wrap = (prefix: string, ev: ServerEvent, port: () => NativePort): ServerEvent => {
    const sessionId = prefix + ev.sessionId;
    if (ev.type !== 'request') return { ...ev, sessionId };
    const id = nextRequest++;
    requests.set(id, { port: port(), id: ev.requestId });
    return { ...ev, sessionId, requestId: id };
  };
  const add = (transport: 'tcp' | 'rdma', at: Endpoint[], prefix: string) => {
    const entry = { prefix, transport, one: undefined as unknown as ReturnType<typeof startOne> };
    entry.one = startOne(transport, at, opts, (ev) => onEvent(wrap(prefix, ev, () => entry.one.port)));
    ones.push(entry);
  };
  if (mode === 'rdma') {
    add('rdma', listen, 'rdma-');
  } else {
    add('tcp', listen, '');
    if (mode === 'auto' && hostHasRdma()) {
      try {
        add('rdma', rdmaListen(ones[0]!.one.bound), 'rdma-');
      } catch (e) {
        // TCP keeps serving; the reason (no route, address in use…) goes to the log
        log?.(`RDMA not listening: ${toIbnbdError(e).message}`);
      }
    }
  }
  const owner = (sessionId: string) => {
    const hit = ones.find((o) => o.prefix !== '' && sessionId.startsWith(o.prefix)) ?? ones.find((o) => o.prefix === '');
    if (!hit) throw new Error(`no transport server for session ${sessionId}`);
    return { port: hit.one.port, id: sessionId.slice(hit.prefix.length) };
  };
  const port: NativePort = {
    respond: (requestId, errno, data) => {
      const r = requests.get(requestId);
      if (!r) return;
      requests.delete(requestId);
      r.port.respond(r.id, errno, data);
    },
    attach: (sessionId, deviceId, spec) => {
      const o = owner(sessionId);
      o.port.attach(o.id, deviceId, spec);
    },
    detach: (sessionId, deviceId) => {
      const o = owner(sessionId);
      o.port.detach(o.id, deviceId);
    },
    resize: (sessionId, deviceId, sizeBytes) => {
      const o = owner(sessionId);
      o.port.resize?.(o.id, deviceId, sizeBytes);
    },
    inflight: (sessionId, deviceId) => {
      const o = owner(sessionId);
      return o.port.inflight(o.id, deviceId);
    },
    paths: (sessionId) => {
      const o = owner(sessionId);
      return o.port.paths(o.id);
    },
    closeSession: (sessionId) => {
      const o = owner(sessionId);
      o.port.closeSession?.(o.id);
    },
  };
  return {
    port,
    // TCP endpoints as before ("ADDR:PORT"), RDMA ones prefixed "rdma:"
    bound: () => ones.flatMap((o) => o.one.bound.map((e) => (o.transport === 'rdma' ? 'rdma:' : '') + formatEndpoint(e))),
    setAuthKeys: (keys) => ones.forEach((o) => o.one.setAuthKeys(keys)),
    setLimits: (limits) => ones.forEach((o) => o.one.setLimits(limits)),
    stop: async () => {
      await Promise.all(ones.map((o) => o.one.stop()));
      requests.clear();
    },
    ioStats: () => ones.flatMap((o) => o.one.ioStats().map((s) => ({ ...s, sessionId: o.prefix + s.sessionId }))),
  };
}
