// The native transport server (NativeServer in native/server/binding.cc) seen from the export
// server: started with the daemon's options, its events passed on as ServerEvents, and the
// NativePort the ExportServer drives (respond, attach/detach, in-flight counts, paths).
// The only file here that knows the binding's shape.
import { IbnbdError, toIbnbdError } from '../backend/errors.js';
import { loadNative } from '../backend/native.js';
import type { SessionPathEntry } from './introspection.js';
import type { ServerOptions } from './options.js';
import type { NativePort, ServerEvent } from './server.js';
import type { AttachSpec } from './session.js';

interface Endpoint {
  kind: string;
  addr: string;
  port: number;
}

interface PathInfo {
  src: string;
  dst: string;
  state: string;
  inflight: number;
}

interface NativeStats {
  sessions: Array<{
    sessionId: string;
    sessname: string;
    paths: PathInfo[];
    devices: Array<{ deviceId: number; inflight: number }>;
  }>;
}

interface NativeServerObject {
  start(): Endpoint[];
  respond(requestId: number, errno: number, data?: Buffer): void;
  attachDevice(sessionId: string, deviceId: number, spec: object): void;
  detachDevice(sessionId: string, deviceId: number): Promise<void>;
  closeSession(sessionId: string): void;
  stats(): NativeStats;
  stop(): Promise<void>;
}

interface Binding {
  NativeServer: new (options: object, onEvent: (ev: Record<string, unknown>) => void) => NativeServerObject;
  configureIoThreads(n: number): void;
}

export interface NativeServerHandle {
  port: NativePort;
  bound(): string[];
  /** Stops listening and closes every session (session-down events follow). */
  stop(): Promise<void>;
}

function formatEndpoint(e: Endpoint): string {
  return e.addr.includes(':') ? `[${e.addr}]:${e.port}` : `${e.addr}:${e.port}`;
}

function toPaths(paths: unknown): SessionPathEntry[] {
  if (!Array.isArray(paths)) return [];
  return (paths as PathInfo[]).map((p) => ({
    src: String(p.src),
    dst: String(p.dst),
    state: String(p.state),
    inflight: Number(p.inflight) || 0,
  }));
}

/** Native events → ServerEvents; anything malformed is dropped (it would be a native bug). */
function toServerEvent(ev: Record<string, unknown>): ServerEvent | null {
  const sessionId = String(ev.sessionId ?? '');
  switch (ev.type) {
    case 'session-up':
      return { type: 'session-up', sessionId, sessname: String(ev.sessname ?? ''), paths: toPaths(ev.paths) };
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

export function startNativeServer(opts: ServerOptions, onEvent: (ev: ServerEvent) => void): NativeServerHandle {
  const binding = loadNative<Partial<Binding>>();
  if (typeof binding.NativeServer !== 'function' || typeof binding.configureIoThreads !== 'function') {
    throw new IbnbdError('ENOSYS', 'the native addon has no NativeServer (rebuild with `npm run build`)');
  }
  try {
    binding.configureIoThreads(opts.ioThreads);
  } catch (e) {
    throw toIbnbdError(e);
  }
  let native: NativeServerObject;
  try {
    native = new binding.NativeServer(
      {
        transport: opts.transport ?? 'tcp',
        listen: opts.listen.map((l) => ({ kind: 'ip', addr: l.host, port: l.port })),
        queueDepth: opts.queueDepth,
        maxIoSize: opts.maxIoSize,
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
    bound = native.start();
  } catch (e) {
    void native.stop();
    throw toIbnbdError(e);
  }

  // One stats() snapshot serves a whole introspection pass (inflight/paths of every session).
  let snapshot: Map<string, NativeStats['sessions'][number]> | null = null;
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
    inflight: (sessionId, deviceId) => statsOf(sessionId)?.devices.find((d) => d.deviceId === deviceId)?.inflight ?? 0,
    paths: (sessionId) => toPaths(statsOf(sessionId)?.paths),
    closeSession: (sessionId) => native.closeSession(sessionId),
  };
  return { port, bound: () => bound.map(formatEndpoint), stop: () => native.stop() };
}
