// The export server: the native transport + IO path below, the IBNBD control path here.
// Native code serves every IO by itself; the admin messages (SESS_INFO, OPEN, CLOSE) and session
// life cycle come up as events, are answered here, and OPEN/CLOSE attach/detach devices to the
// native IO path. Also builds the introspection tree.
import { constants } from 'node:os';
import { IbnbdError, toIbnbdError } from '../errors.js';
import { handleAdmin, type AdminReply } from './admin.js';
import { decode } from '../proto/ibnbd.js';
import { ExportTable, type ProbeDevice } from './exports.js';
import type { ExportList } from './export-list.js';
import {
  devicesTree,
  sessionsTree,
  type DeviceEntry,
  type SessionEntry,
  type SessionPathEntry,
} from './introspection.js';
import { ExportSession, type AttachSpec, type DataPath } from './session.js';
import { silentLogger, type Logger } from '../logger.js';

/** What the server needs from the native transport server (adapted in native-port.ts). */
export interface NativePort {
  /** errno: 0 or a positive errno number */
  respond(requestId: number, errno: number, data?: Buffer): void;
  attach(sessionId: string, deviceId: number, spec: AttachSpec): void;
  detach(sessionId: string, deviceId: number): void;
  resize?(sessionId: string, deviceId: number, sizeBytes: number): void;
  inflight(sessionId: string, deviceId: number): number;
  paths(sessionId: string): SessionPathEntry[];
  closeSession?(sessionId: string): void;
}

export type ServerEvent =
  | { type: 'session-up'; sessionId: string; sessname: string; paths?: SessionPathEntry[] }
  | { type: 'session-down'; sessionId: string }
  | { type: 'request'; sessionId: string; requestId: number; dir: 'read' | 'write'; usr: Buffer; dataLen: number };

export interface ExportServerOptions {
  /** dev_search_path; undefined when only named exports are served */
  devSearchPath?: string;
  /** named exports (--export, [export]); none when unset */
  exports?: ExportList;
  probe: ProbeDevice;
  log?: Logger;
  maxDevicesPerSession?: number;
  /** an OPEN not done within this fails with ETIMEDOUT (its calls run off the event loop, so a
   *  hung device holds only itself); unset: no bound (tests of the policy alone) */
  openTimeoutMs?: number;
}

export class ExportServer {
  readonly exports: ExportTable;
  readonly sessions = new Map<string, ExportSession>();
  readonly #log: Logger;
  readonly #sessionLogs = new WeakMap<ExportSession, Logger>();
  readonly #dataPath: DataPath;

  constructor(
    private readonly port: NativePort,
    private readonly opts: ExportServerOptions,
  ) {
    this.exports = new ExportTable(opts.probe);
    this.#log = opts.log ?? silentLogger;
    this.#dataPath = {
      attach: (sid, id, spec) => port.attach(sid, id, spec),
      detach: (sid, id) => port.detach(sid, id),
      resize: (sid, id, size) => port.resize?.(sid, id, size),
    };
  }

  /** Every native event goes through here; nothing thrown escapes (untrusted peers). */
  handleEvent(ev: ServerEvent): void {
    try {
      switch (ev.type) {
        case 'session-up':
          this.#sessionUp(ev.sessionId, ev.sessname, ev.paths);
          return;
        case 'session-down':
          this.#sessionDown(ev.sessionId);
          return;
        case 'request':
          this.#request(ev);
          return;
      }
    } catch (e) {
      this.#log.warn(`event ${(ev as { type: string }).type}: ${toIbnbdError(e).toString()}`);
    }
  }

  /** SIGHUP's new bounds of the OPEN policy: for the next OPEN of every session. */
  setLimits(limits: { maxDevicesPerSession: number; openTimeoutMs: number }): void {
    this.opts.maxDevicesPerSession = limits.maxDevicesPerSession;
    this.opts.openTimeoutMs = limits.openTimeoutMs;
  }

  #sessionUp(sessionId: string, sessname: string, paths?: SessionPathEntry[]): void {
    if (this.sessions.has(sessionId)) return;
    const opts = this.opts;
    const s = new ExportSession(sessionId, sessname, (paths ?? []).map((p) => p.src), {
      exports: this.exports,
      locator: { exports: this.opts.exports ?? new Map(), ...(this.opts.devSearchPath !== undefined ? { searchPath: this.opts.devSearchPath } : {}) },
      dataPath: this.#dataPath,
      // read at each OPEN: SIGHUP may change it (setLimits)
      get maxDevices() { return opts.maxDevicesPerSession; },
    });
    this.sessions.set(sessionId, s);
    this.#sessionLog(s).info(`session ${sessname} (${sessionId}) up`, { paths: s.paths });
  }

  #sessionDown(sessionId: string): void {
    const s = this.sessions.get(sessionId);
    if (!s) return;
    this.sessions.delete(sessionId);
    const n = s.devices.size;
    s.closeAll();
    this.#sessionLog(s).info(`session ${s.sessname} (${sessionId}) down, ${n} device(s) released`);
  }

  /** The lines about one session carry its name (made once a session: its admin messages use it). */
  #sessionLog(s: ExportSession): Logger {
    let log = this.#sessionLogs.get(s);
    if (!log) this.#sessionLogs.set(s, (log = this.#log.child({ session: s.sessname })));
    return log;
  }

  #request(ev: Extract<ServerEvent, { type: 'request' }>): void {
    const s = this.sessions.get(ev.sessionId);
    if (!s) return this.#answer(ev, { errno: constants.errno.ENOTCONN });
    const limit = this.opts.openTimeoutMs;
    const d = limit !== undefined ? decode(ev.usr) : null;
    if (!d?.ok || d.msg.type !== 'OPEN') {
      void handleAdmin(s, ev.usr, ev.dir, ev.dataLen, this.#sessionLog(s)).then((reply) => this.#answer(ev, reply));
      return;
    }
    // an OPEN, bounded: past the limit it is answered ETIMEDOUT and given up (session.ts)
    const devName = d.msg.devName;
    let timer: NodeJS.Timeout | undefined;
    const givenUp = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, limit);
    });
    let answered = false;
    void givenUp.then(() => {
      if (answered) return;
      answered = true;
      this.#sessionLog(s).warn(`session ${s.sessname}: OPEN ${JSON.stringify(devName)} failed: ETIMEDOUT: opening ${JSON.stringify(devName)} did not finish within ${limit} ms (--open-timeout-ms): a hung device or filesystem?`);
      this.#answer(ev, { errno: constants.errno.ETIMEDOUT });
    });
    void handleAdmin(s, ev.usr, ev.dir, ev.dataLen, this.#sessionLog(s), givenUp).then((reply) => {
      clearTimeout(timer);
      if (answered) return;
      answered = true;
      this.#answer(ev, reply);
    });
  }

  #answer(ev: Extract<ServerEvent, { type: 'request' }>, reply: AdminReply): void {
    if (reply.noReply) return;
    try {
      this.port.respond(ev.requestId, reply.errno, reply.data);
    } catch (e) {
      this.#log.warn(`answer to request ${ev.requestId}: ${toIbnbdError(e).toString()}`); // the session went meanwhile
    }
  }

  /** RNBD's sysfs force_close: one session's device goes away, its id stays reserved. */
  forceClose(sessname: string, deviceName: string): { sessname: string; device_id: number } {
    for (const s of this.sessions.values()) {
      if (s.sessname !== sessname) continue;
      for (const d of s.devices.values()) {
        if (d.exp.name === deviceName) {
          s.forceClose(d.deviceId);
          this.#sessionLog(s).info(`force-closed ${deviceName} of session ${sessname} (device id ${d.deviceId})`, { device: deviceName });
          return { sessname, device_id: d.deviceId };
        }
      }
    }
    throw new IbnbdError('ENOENT', `session ${sessname} has no device ${deviceName}`);
  }

  devices(): DeviceEntry[] {
    return devicesTree(this.exports);
  }

  sessionList(): SessionEntry[] {
    return sessionsTree(
      this.sessions.values(),
      (sid, id) => safe(() => this.port.inflight(sid, id), 0),
      (s) => safe(() => this.port.paths(s.id), []),
    );
  }

  /** Releases everything (server stop): every session's devices, then any export left. */
  closeAll(): void {
    for (const id of [...this.sessions.keys()]) this.#sessionDown(id);
    this.exports.closeAll();
  }
}

function safe<T>(fn: () => T, fallback: T): T {
  try {
    return fn();
  } catch {
    return fallback;
  }
}
