// The native transport server (NativeServer in native/server/binding.cc) seen from the export
// server: started with the daemon's options, its events passed on as ServerEvents, and the
// NativePort the ExportServer drives (respond, attach/detach, in-flight counts, paths).
// The only file here that knows the binding's shape.
import { toIbnbdError } from '../backend/errors.js';
import { NativeServer, type NativeServerEvent, type NativeServerStats } from '../backend/server-native.js';
import { configureIoThreads, type PathInfo } from '../backend/transport.js';
import type { Endpoint } from '../transport/paths.js';
import type { SessionPathEntry } from './introspection.js';
import type { ServerOptions } from './options.js';
import type { NativePort, ServerEvent } from './server.js';
import type { AttachSpec } from './session.js';

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

export function startNativeServer(opts: ServerOptions, onEvent: (ev: ServerEvent) => void): NativeServerHandle {
  configureIoThreads(opts.ioThreads);
  let native: NativeServer;
  try {
    native = new NativeServer(
      {
        transport: opts.transport ?? 'tcp',
        listen: opts.listen.map((l) => ({ kind: 'ip' as const, addr: l.host, port: l.port })),
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
    throw e;
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
    inflight: (sessionId, deviceId) => statsOf(sessionId)?.devices.find((d) => d.deviceId === deviceId)?.inflight ?? 0,
    paths: (sessionId) => toPaths(statsOf(sessionId)?.paths),
    closeSession: (sessionId) => native.closeSession(sessionId),
  };
  return { port, bound: () => bound.map(formatEndpoint), stop: () => native.stop() };
}
