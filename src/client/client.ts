// The client's semantics (IBNBD's client interface on a vhost-user face, docs/client.md):
//   map    → session found or created, OPEN, vhost-user-blk socket <name>.sock (ibnbd<N> or
//            name=), devices/<id>, then the state file (restored from it at start)
//   unmap  → EBUSY while a front-end is connected unless forced; CLOSE; socket removed; gone
//            from the state file;
//            the session closed with its last device
//   list / show → name, device_id, socket, state, session, mapping_path, the reconnect policy
//            (with the session's reconnect_delay and io_timeout), ...
//   path loss → per device: wait for the server (reconnecting, bounded by ctrl_loss_tmo), or
//            closed at once (ctrl_loss_tmo=0, RNBD); reconnect → SESS_INFO and re-OPEN
// Ordering ("the control plane never hangs on one server"): each session has its own queue
// (session.ts) for its slow admin I/O: connect + SESS_INFO, OPEN, CLOSE, the re-open pass; every
// admin request is bounded by the admin timeout (admin.ts). What must stay exact across sessions
// is done in steps that cannot interleave: the EEXIST check and the find-or-create of the session
// have no await (one step of the event loop); picking a name and a link, making the vhost socket
// and inserting the device (attach), and removing a device's files and giving its name back, run
// under one global lock, whose jobs never wait for a server. A job holding a session's queue may
// take the lock; a job holding the lock never waits for a queue.
import { mkdir, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { IbnbdError, errorText } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { VhostBlk, type VhostEvent } from '../backend/vhost.js';
import { RECONNECT_DEFAULTS, deviceIdOf, formatMapString, policyConflict, type MapRequest } from '../proto/map-string.js';
import { hostHasRdma, ioThreadsEntry, type IoThreadsEntry } from '../backend/transport.js';
import type { OpenRspMsg } from '../proto/ibnbd.js';
import { closeDevice, openDevice } from './admin.js';
import { MappedDevice, type DeviceInfo, type MappedRequest } from './device.js';
import { NameAllocator } from './names.js';
import { PendingMappings } from './pending.js';
import { reopenDevices } from './reopen.js';
import { resizeMapped, type ResizeOptions, type ResizeResult } from './resize.js';
import { restoreMappings } from './restore.js';
import type { StateFile } from './state-file.js';
import { QUEUE_BUSY, SerialQueue } from './serialize.js';
import {
  ADMIN_TIMEOUT_DEFAULT_MS,
  ClientSessions,
  type ClientSession,
  type SessionOptions,
  type SessionState,
} from './session.js';

export interface IbnbdClientOptions extends Partial<SessionOptions> {
  runDir: string;
  log?: Logger;
  /** ctrl_loss_tmo of maps that do not name one (s; -1 = for ever, 0 = RNBD: fail at once). */
  ctrlLossTmo?: number;
  /** fast_io_fail_tmo of maps that do not name one (s; -1 = off). */
  fastIoFailTmo?: number;
  /** Where the mappings are kept across restarts (--state-dir); none: they are not. */
  state?: StateFile;
}

export class IbnbdClient {
  private readonly devices = new Map<string, MappedDevice>(); // by name
  /** sessname + device_path of the maps under way (EEXIST for a second one). */
  private readonly mapping = new Set<string>();
  /** Unmaps under way (a second unmap of the device waits for the first). */
  private readonly unmapping = new Map<MappedDevice, Promise<void>>();
  private readonly names = new NameAllocator();
  /** Mappings of the state file not restored yet (pending.ts). */
  private readonly pending: PendingMappings;
  /** Orders `list` by when a mapping was made (restored ones: as their restores finished). */
  private seq = 0;
  /** The global lock: short local steps only (names, sockets, links, the device table). */
  private readonly lock = new SerialQueue();
  private readonly sessions: ClientSessions;
  private readonly log: Logger;
  private readonly adminTimeoutMs: number;
  private stopping: Promise<void> | undefined;

  constructor(private readonly opts: IbnbdClientOptions) {
    this.log = opts.log ?? silentLogger;
    this.adminTimeoutMs = opts.adminTimeoutMs ?? ADMIN_TIMEOUT_DEFAULT_MS;
    this.sessions = new ClientSessions(
      { onSessionState: (s, state) => this.onSessionState(s, state) },
      {
        connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
        heartbeatMs: opts.heartbeatMs,
        heartbeatMissedMax: opts.heartbeatMissedMax,
        reconnectDelayMs: opts.reconnectDelayMs,
        ioTimeoutMs: opts.ioTimeoutMs,
        maxReconnectAttempts: opts.maxReconnectAttempts,
        adminTimeoutMs: this.adminTimeoutMs,
        secretOf: opts.secretOf,
      },
    );
    this.pending = new PendingMappings(
      (name, request, wanted) => this.restoreOne(name, request, wanted),
      (request) => Math.max(1000, request.reconnectDelay !== undefined ? request.reconnectDelay * 1000 : opts.reconnectDelayMs ?? RECONNECT_DEFAULTS.reconnectDelay * 1000),
      this.log,
    );
  }

  get vhostDir(): string {
    return join(this.opts.runDir, 'vhost');
  }

  get devicesDir(): string {
    return join(this.opts.runDir, 'devices');
  }

  /** Session found or created, then in the session's queue: connect + SESS_INFO (a new
   *  session), OPEN, and under the global lock the name, the vhost socket and the link. */
  async map(given: MapRequest): Promise<DeviceInfo> {
    const req = this.resolve(given);
    // from here to the queue: no await, so no other map can slip in between check and insert
    if (this.stopping) throw shuttingDown();
    const waiting = this.pending.findByDevice(req.sessname, req.devicePath);
    if (waiting) {
      throw new IbnbdError('EEXIST', `device_path '${req.devicePath}' of session '${req.sessname}' is mapped as ${waiting} (not restored yet)`);
    }
    for (const d of this.devices.values()) {
      if (d.session.sessname === req.sessname && d.request.devicePath === req.devicePath) {
        throw new IbnbdError(
          'EEXIST',
          `device_path '${req.devicePath}' is already mapped by session '${req.sessname}' as ${d.name}`,
        );
      }
    }
    const key = `${req.sessname}\n${req.devicePath}`;
    if (this.mapping.has(key)) {
      throw new IbnbdError('EEXIST', `device_path '${req.devicePath}' is being mapped by session '${req.sessname}' already`);
    }
    if (req.name !== undefined && !this.names.claim(req.name)) {
      throw new IbnbdError('EEXIST', `name '${req.name}' is taken by another mapping`);
    }
    let session: ClientSession;
    try {
      session = this.sessions.acquire(req);
    } catch (e) {
      if (req.name !== undefined) this.names.release(req.name);
      throw e;
    }
    this.mapping.add(key);
    let dev: MappedDevice | undefined;
    try {
      dev = await session.queue.run(() => this.mapInSession(req, session));
      // recorded before it is acknowledged: a daemon killed from here on serves it again
      await this.persist().catch(async (e: unknown) => {
        await this.teardown(dev!, { force: true, inQueue: false, deadline: Date.now() + this.adminTimeoutMs }).catch(() => undefined);
        throw e;
      });
      return dev.info();
    } catch (e) {
      if (e instanceof IbnbdError && e.code === 'ETIMEDOUT') this.log.warn(`map of ${req.devicePath} failed: ${e.message}`, { session: req.sessname });
      if (!dev && req.name !== undefined) this.names.release(req.name);
      throw e;
    } finally {
      this.mapping.delete(key);
      session.users--;
      if (!dev) await this.sessions.releaseIfUnused(session);
    }
  }

  /** The state file, read before the control socket answers (restore.ts). */
  async restore(): Promise<void> {
    const state = this.opts.state;
    if (!state) return;
    await restoreMappings(this.log, {
      state,
      resolve: (req) => this.resolve(req),
      claim: (name) => this.names.claim(name),
      restoreOne: (name, req) => this.restoreOne(name, req, () => !this.stopping),
      keepPending: (name, req, error) => this.pending.add(name, req, join(this.vhostDir, `${name}.sock`), error),
      persist: () => this.persist(),
    });
  }

  /** One restore of a persisted mapping under its name (already claimed), not persisted again. */
  private async restoreOne(name: string, request: MappedRequest, wanted: () => boolean): Promise<void> {
    if (this.stopping) throw shuttingDown();
    const session = this.sessions.acquire(request);
    let dev: MappedDevice | undefined;
    try {
      dev = await session.queue.run(() => this.mapInSession({ ...request, name }, session));
      if (!wanted()) {
        await this.teardown(dev, { force: true, inQueue: false, deadline: Date.now() + this.adminTimeoutMs });
        throw new IbnbdError('ECANCELED', `${name} was unmapped while it was being restored`);
      }
    } finally {
      session.users--;
      if (!dev) await this.sessions.releaseIfUnused(session);
    }
  }

  /** Writes the mappings as they are now (the state file's whole content). */
  private persist(): Promise<void> {
    const state = this.opts.state;
    if (!state) return Promise.resolve();
    const made = [...this.devices.values()]
      .sort((a, b) => a.index - b.index)
      .map((d) => ({ name: d.name, map: formatMapString({ ...d.request, name: d.name }) }));
    const waiting = this.pending.all().map((p) => ({ name: p.name, map: formatMapString({ ...p.request, name: p.name }) }));
    return state.save([...made, ...waiting]);
  }

  /** unmap: EBUSY while a front-end is attached, unless forced; in the device's session queue.
   *  Forced: the device goes at once; its CLOSE waits for the session queue at most the admin
   *  timeout (no CLOSE then: the server drops the device when the session closes). */
  async unmap(nameOrId: string, force: boolean): Promise<DeviceInfo> {
    const waiting = this.pending.info(nameOrId);
    if (waiting && this.pending.remove(nameOrId)) {
      this.names.release(nameOrId);
      await this.persist();
      this.log.info(`unmapped ${nameOrId} (it was not restored)`, { device: nameOrId });
      return waiting;
    }
    const info = await this.unmapMapped(nameOrId, force);
    // gone for good: a restarted daemon must not bring it back
    await this.persist().catch((e: unknown) => {
      throw new IbnbdError('EIO', `${info.name} is unmapped, but ${errorText(e)}: a restart would map it again`);
    });
    return info;
  }

  private async unmapMapped(nameOrId: string, force: boolean): Promise<DeviceInfo> {
    const dev = this.find(nameOrId);
    if (force) {
      const info = dev.info();
      const t0 = Date.now();
      await this.teardown(dev, { force: true, inQueue: false, deadline: t0 + this.adminTimeoutMs });
      // how long the in-flight requests took to be cancelled or drained (bounded by io_timeout)
      dev.log.info(`unmapped ${dev.name} (force, ${Date.now() - t0} ms)`);
      return info;
    }
    this.checkNotBusy(dev);
    const session = dev.session;
    session.users++;
    try {
      return await session.queue.run(async () => {
        // unmapped (or being unmapped by a forced unmap) while this one waited: gone
        if (this.devices.get(dev.name) !== dev || this.unmapping.has(dev)) {
          throw new IbnbdError('ENOENT', `no mapped device named '${nameOrId}'`);
        }
        this.checkNotBusy(dev);
        const info = dev.info();
        await this.teardown(dev, { force: false, inQueue: true, deadline: Date.now() + this.adminTimeoutMs });
        dev.log.info(`unmapped ${dev.name}`);
        return info;
      });
    } finally {
      session.users--;
      await this.sessions.releaseIfUnused(session);
    }
  }

  /** resize: the size from the server again, or the given one; the guest is told (resize.ts). */
  async resize(nameOrId: string, o: ResizeOptions): Promise<DeviceInfo & ResizeResult> {
    const dev = this.find(nameOrId);
    const r = await dev.session.queue.run(() => resizeMapped(dev, o));
    dev.log.info(`${dev.name}: size ${r.from} → ${r.to} bytes` + (r.frontendTold ? '; the front-end was told' : '; no front-end to tell'));
    return { ...dev.info(), ...r };
  }

  private checkNotBusy(dev: MappedDevice): void {
    if (dev.vhost.frontendConnected) {
      throw new IbnbdError('EBUSY', `${dev.name} is in use by a vhost-user front-end (a VM); use --force to unmap anyway`);
    }
  }

  list(): DeviceInfo[] {
    const made = [...this.devices.values()].sort((a, b) => a.index - b.index).map((d) => d.info());
    return [...made, ...this.pending.all().map((p) => this.pending.info(p.name)!)];
  }

  /** list's fields plus the vhost counters, each transport path (state, in-flight, reconnects,
   *  requests completed on it, requests failed over from it) and the session's bounce count: requests that did not go zero-copy (RDMA: data outside
   *  registered guest memory; always 0 on TCP); and the IO threads the device's IO runs on
   *  (io_threads: --poll-us and the polls of the whole daemon, not of this device alone). */
  show(nameOrId: string): DeviceInfo & { stats: unknown; path_states: unknown[]; bounce_count: number; io_threads: IoThreadsEntry } {
    const waiting = this.pending.info(nameOrId);
    if (waiting) return { ...waiting, stats: null, path_states: [], bounce_count: 0, io_threads: ioThreadsEntry() };
    const dev = this.find(nameOrId);
    const pathStates = dev.session.native.paths().map((p) => ({
      src: p.src,
      dst: p.dst,
      state: p.state,
      inflight: p.inflight,
      reconnects: p.reconnects,
      heartbeat_rtt_us: Math.round(p.hbRttNs / 1000),
      requests: p.requests,
      failovers: p.failovers,
    }));
    // guest IO that bounced: the admin requests (JS copies, each bounced once on RDMA) left out
    const native = dev.session.native;
    const bounceCount = Math.max(0, native.bounceCount - (dev.session.transport === 'rdma' ? native.copiedRequests : 0));
    return { ...dev.info(), stats: dev.vhost.stats(), path_states: pathStates, bounce_count: bounceCount, io_threads: ioThreadsEntry() };
  }

  /** What /metrics reads at a scrape (src/metrics/client-metrics.ts): the mapped devices and
   *  the sessions, as they are now. */
  metricsSources(): { devices: MappedDevice[]; sessions: ClientSession[] } {
    return { devices: [...this.devices.values()], sessions: this.sessions.all() };
  }

  find(nameOrId: string): MappedDevice {
    const byName = this.devices.get(nameOrId);
    if (byName) return byName;
    const matches = [...this.devices.values()].filter((d) => d.deviceId === nameOrId);
    if (matches.length === 1) return matches[0]!;
    if (matches.length > 1) {
      throw new IbnbdError(
        'EINVAL',
        `device_id '${nameOrId}' is mapped by several sessions (${matches.map((d) => d.name).join(', ')}): name the device`,
      );
    }
    throw new IbnbdError('ENOENT', `no mapped device named '${nameOrId}'`);
  }

  /** Daemon shutdown: front-ends disconnected, devices closed on their servers, sessions closed.
   *  Sessions in parallel, each bounded by the admin timeout: a CLOSE that cannot be sent in it
   *  is left out (the server drops the devices with the session). Maps under way fail. */
  shutdown(): Promise<void> {
    this.stopping ??= (async () => {
      this.pending.stop();
      const bySession = new Map<ClientSession, MappedDevice[]>();
      for (const dev of this.devices.values()) bySession.set(dev.session, [...(bySession.get(dev.session) ?? []), dev]);
      await Promise.all(
        [...bySession.values()].map((devs) => {
          const deadline = Date.now() + this.adminTimeoutMs;
          return Promise.all(
            devs.map((dev) =>
              this.teardown(dev, { force: true, handOver: true, inQueue: false, deadline }).catch((e) =>
                dev.log.warn(`unmap ${dev.name} at shutdown: ${String(e)}`),
              ),
            ),
          );
        }),
      );
      await this.sessions.closeAll();
    })();
    return this.stopping;
  }

  /** The request with what the map string left to the daemon decided: transport, the policy. */
  private resolve(given: MapRequest): MappedRequest {
    const req: MappedRequest = {
      ...given,
      // gid: addresses exist only on RDMA
      transport: given.transport ?? (hostHasRdma() || given.paths.some((p) => p.dst.kind === 'gid') ? 'rdma' : 'tcp'),
      ctrlLossTmo: given.ctrlLossTmo ?? this.opts.ctrlLossTmo ?? RECONNECT_DEFAULTS.ctrlLossTmo,
      fastIoFailTmo: given.fastIoFailTmo ?? this.opts.fastIoFailTmo ?? RECONNECT_DEFAULTS.fastIoFailTmo,
    };
    // Both in the map string were checked by the grammar. A fast_io_fail_tmo the map asks for
    // beside the daemon's ctrl_loss_tmo is held to the same rule; the daemon's fast_io_fail_tmo
    // beside a map's ctrl_loss_tmo is not (ctrl_loss_tmo=0 must stay RNBD's behaviour under any
    // daemon): it just never fires, the device being closed first.
    if (given.fastIoFailTmo !== undefined && policyConflict(req.fastIoFailTmo, req.ctrlLossTmo) !== null) {
      throw new IbnbdError(
        'EINVAL',
        `fast_io_fail_tmo: ${req.fastIoFailTmo} s is longer than ctrl_loss_tmo (${req.ctrlLossTmo} s, the client ` +
          "daemon's --ctrl-loss-tmo), which closes the device (failing its IO) first; give ctrl_loss_tmo too, or a shorter fast_io_fail_tmo",
      );
    }
    return req;
  }

  /** In the session's queue: connect + SESS_INFO the first time, OPEN, attach. */
  private async mapInSession(req: MappedRequest, session: ClientSession): Promise<MappedDevice> {
    if (this.stopping) throw shuttingDown();
    await this.sessions.ready(session);
    if (this.stopping) throw shuttingDown();
    if (session.state !== 'open') {
      throw new IbnbdError('EIO', `session '${req.sessname}' is disconnected from its server`);
    }
    const epoch = session.linkEpoch;
    const open = await openDevice(session, req.devicePath, req.accessMode, req.ioMode, (late) =>
      this.undoLateOpen(session, epoch, req.devicePath, late),
    );
    try {
      if (open.logicalBlockSize === 0) throw new IbnbdError('EINVAL', 'server reported logical_block_size 0');
      if (this.stopping) throw shuttingDown();
      const dev = await this.lock.run(() => this.attach(req, session, open));
      if (session.linkEpoch !== epoch) {
        // the link went down (and maybe up) since the OPEN: the session's loss reached its other
        // devices only; this one follows now (a re-open pass queued behind this job re-opens it)
        dev.sessionLost();
        dev.log.warn(`${dev.name}: the session lost its link while it was being mapped; ${dev.stateReason}`);
      }
      return dev;
    } catch (e) {
      if (session.linkEpoch === epoch && !session.closed) {
        await closeDevice(session, open.deviceId).catch(() => undefined);
      }
      throw e;
    }
  }

  /** Under the global lock: name, socket, link, the device in the tables. Local steps only. */
  private async attach(req: MappedRequest, session: ClientSession, open: OpenRspMsg): Promise<MappedDevice> {
    // a name given (name=, or a restored mapping's) was claimed by the caller
    const name = req.name ?? this.names.allocate();
    const index = this.seq++;
    const deviceId = deviceIdOf(req.devicePath);
    const socketPath = join(this.vhostDir, `${name}.sock`);
    const linkPath = join(this.devicesDir, linkNameFor(deviceId, session.sessname, this.devices));
    let vhost: VhostBlk | undefined;
    const devLog = this.log.child({ session: session.sessname, device: name });
    try {
      await mkdir(this.vhostDir, { recursive: true, mode: 0o755 });
      await mkdir(this.devicesDir, { recursive: true, mode: 0o755 });
      vhost = new VhostBlk(
        {
          socketPath,
          session: session.native.native as object,
          deviceId: open.deviceId,
          serial: deviceId,
          sizeBytes: Number(open.nsectors) * 512,
          logicalBlockSize: open.logicalBlockSize,
          physicalBlockSize: open.physicalBlockSize || open.logicalBlockSize,
          readOnly: req.accessMode === 'ro',
          queues: req.queues,
          discard: open.maxDiscardSectors > 0 ? { maxSectors: open.maxDiscardSectors, granularity: open.discardGranularity } : null,
          writeZeroes: open.maxWriteZeroesSectors > 0 ? { maxSectors: open.maxWriteZeroesSectors } : null,
          // RNBD: secure erase shares the discard limits
          secureErase: open.secureDiscard !== 0 && open.maxDiscardSectors > 0,
          writeback: open.cachePolicy.writeback,
          fua: open.cachePolicy.fua,
          // ctrl_loss_tmo=0: what the last path had in flight fails with it, as in RNBD; else it
          // is held until sessionLost() applies the device's policy
          holdOnLoss: req.ctrlLossTmo !== 0,
          name, // the `device` of its native log lines
        },
        (ev: VhostEvent) => devLog.info(`${name}: ${describeEvent(ev)}`),
      );
      vhost.start();
      await rm(linkPath, { force: true });
      await symlink(join('..', 'vhost', `${name}.sock`), linkPath);
      if (this.stopping) throw shuttingDown();
    } catch (e) {
      await vhost?.close().catch(() => undefined);
      await rm(socketPath, { force: true });
      await rm(linkPath, { force: true });
      if (req.name === undefined) this.names.release(name); // a claimed name is its caller's to give back
      throw e;
    }
    const dev = new MappedDevice(index, name, deviceId, socketPath, linkPath, { ...req, name }, session, open, vhost, devLog);
    this.devices.set(name, dev);
    session.devices.add(name);
    dev.log.info(`mapped ${req.devicePath} of session ${req.sessname} as ${name} (${socketPath})`);
    return dev;
  }

  /** Unmap, forced or not, and shutdown: front-end (forced: disconnected, its requests fail;
   *  handOver, the shutdown: left for the next daemon, see VhostBlk.close), vhost device, the
   *  tables, socket and link, name, then CLOSE on the server. inQueue: the caller holds the
   *  session's queue; else the CLOSE waits for it until the deadline. */
  private teardown(dev: MappedDevice, how: Teardown): Promise<void> {
    const running = this.unmapping.get(dev);
    if (running) return running;
    const done = this.teardownOnce(dev, how).finally(() => this.unmapping.delete(dev));
    this.unmapping.set(dev, done);
    return done;
  }

  private async teardownOnce(dev: MappedDevice, how: Teardown): Promise<void> {
    const session = dev.session;
    session.users++; // the session stays until the CLOSE is sent or given up
    try {
      dev.dispose(); // its policy timers are void from here on
      // the front-end goes first: forced, its requests fail with VIRTIO_BLK_S_IOERR; handed
      // over, they wait in QEMU for the next daemon
      if (how.force && !how.handOver) await dev.vhost.disconnectFrontend();
      await dev.vhost.close(how.handOver ?? false);
      // One step: the device leaves the tables and its CLOSE takes its turn in the session's
      // queue, before any later OPEN of the same device_path (which the server would answer
      // with the same id: a CLOSE after it would close the new mapping).
      this.devices.delete(dev.name);
      session.devices.delete(dev.name);
      const epoch = session.linkEpoch;
      const closing = how.inQueue ? this.closeOnServer(dev, epoch, how.deadline) : this.closeInTurn(dev, epoch, how.deadline);
      await this.lock.run(async () => {
        await rm(dev.socketPath, { force: true });
        await rm(dev.linkPath, { force: true });
        this.names.release(dev.name); // only now: a new mapping of this name must not lose its socket to our rm
      });
      await closing;
    } finally {
      session.users--;
      await this.sessions.releaseIfUnused(session);
    }
  }

  /** closeOnServer in the session's queue, unless the queue does not get free by the deadline. */
  private async closeInTurn(dev: MappedDevice, epoch: number, deadline: number): Promise<void> {
    const s = dev.session;
    const r = await s.queue.runWithin(deadline - Date.now(), () => this.closeOnServer(dev, epoch, deadline));
    if (r === QUEUE_BUSY && dev.state === 'open') {
      dev.log.warn(
        `${dev.name}: no CLOSE sent for server device ${dev.open.deviceId}: session ${s.sessname} is not usable, its ` +
          `earlier admin requests (waiting for the server) did not finish within the ${this.adminTimeoutMs / 1000} s ` +
          'admin timeout; the server keeps the device open until that session closes',
      );
    }
  }

  /** CLOSE of a removed device, when the server has it open under the id we know. Never throws. */
  private async closeOnServer(dev: MappedDevice, epoch: number, deadline: number): Promise<void> {
    if (dev.state !== 'open') return; // closed or waiting for the server: it has no such device
    const s = dev.session;
    const id = dev.open.deviceId;
    const why =
      s.closed ? 'closed' : s.state !== 'open' ? 'disconnected' : s.linkEpoch !== epoch ? 'reconnected since' : undefined;
    if (why) {
      dev.log.info(`${dev.name}: no CLOSE sent for server device ${id}: session ${s.sessname} is ${why}, the server dropped the device with it`);
      return;
    }
    const left = deadline - Date.now();
    if (left <= 0) {
      dev.log.warn(`${dev.name}: no CLOSE sent for server device ${id}: no time left of the ${this.adminTimeoutMs / 1000} s admin timeout`);
      return;
    }
    await closeDevice(s, id, left).catch((e) => dev.log.warn(`CLOSE of ${dev.name} on the server failed: ${String(e)}`));
  }

  /** An OPEN answered after its timeout: the server has a device open that no mapping uses;
   *  CLOSE it in the session's turn, unless the id is a mapping's (the server answers a later
   *  OPEN of the same device_path with the same id) or the session moved on. */
  private undoLateOpen(session: ClientSession, epoch: number, devicePath: string, open: OpenRspMsg): void {
    const id = open.deviceId;
    const what = `session ${session.sessname}: OPEN of '${devicePath}' answered after the admin timeout (server device ${id})`;
    const log = this.sessionLog(session);
    void session.queue
      .run(async () => {
        if (session.closed || session.linkEpoch !== epoch) {
          log.info(`${what}: the session closed or lost its link since; nothing to undo`);
          return;
        }
        const user = this.sessionDevices(session).find((d) => d.state === 'open' && d.open.deviceId === id);
        if (user) {
          log.info(`${what}: ${user.name} has that id now; kept`);
          return;
        }
        log.info(`${what}: sending CLOSE`);
        await closeDevice(session, id).catch((e) => log.warn(`${what}: CLOSE failed: ${errorText(e)}`));
      })
      .catch(() => undefined);
  }

  /** The lines about one session carry its name. */
  private sessionLog(session: ClientSession): Logger {
    return this.log.child({ session: session.sessname });
  }

  private sessionDevices(session: ClientSession): MappedDevice[] {
    return [...session.devices]
      .map((n) => this.devices.get(n))
      .filter((d): d is MappedDevice => d !== undefined)
      .sort((a, b) => a.index - b.index);
  }

  // RNBD's client: on DISCONNECTED every device goes MAPPED_DISCONNECTED; on RECONNECTED it sends
  // SESS_INFO and re-OPENs each device (docs/protocol.md, "The client's session life"). Ours, by
  // each device's policy (docs/client.md, "Path loss, waiting and the reconnect policy"): it waits
  // for the server (reconnecting: guest IO held, no error) until ctrl_loss_tmo closes it, or is
  // closed at once (ctrl_loss_tmo=0, RNBD's). The server may be a new process that knows none of
  // our device ids, or hands out the old ids to other devices: either way a device's IO is cut
  // off from the server id here, synchronously, before any re-OPEN of this session can be sent.
  private onSessionState(session: ClientSession, state: SessionState): void {
    const devs = this.sessionDevices(session);
    const log = this.sessionLog(session);
    if (state === 'closed') {
      for (const dev of devs) dev.sessionLost();
      const by = (s: string) => devs.filter((d) => d.state === s).map((d) => d.name).join(', ');
      const waiting = by('reconnecting');
      const closed = by('closed');
      log.warn(
        `session ${session.sessname}: every path lost; reconnecting` +
          (waiting ? `; waiting (IO held by ctrl_loss_tmo/fast_io_fail_tmo): ${waiting}` : '') +
          (closed ? `; closed (IO fails with IOERR): ${closed}` : '') +
          (devs.length === 0 ? '; no devices' : ''),
      );
      return;
    }
    const names = devs.map((d) => d.name).join(', ') || 'no devices';
    log.info(`session ${session.sessname}: connected again; re-opening ${names}`);
    const epoch = session.linkEpoch;
    // in the session's queue, after the maps and unmaps of it queued before: its set of devices
    // changes under it only by a forced unmap (checked after each await)
    void session.queue
      .run(() =>
        reopenDevices(session, {
          devices: () => this.sessionDevices(session),
          stillMapped: (dev) => this.devices.get(dev.name) === dev,
          stale: () => session.linkEpoch !== epoch || session.closed || this.sessions.get(session.sessname) !== session || !!this.stopping,
          undoLateOpen: (devicePath, late) => this.undoLateOpen(session, epoch, devicePath, late),
          log,
        }),
      )
      .catch((e) => log.warn(`session ${session.sessname}: re-open failed: ${String(e)}`));
  }

}


/** How a device is taken down (Client.teardown). */
interface Teardown {
  force: boolean;
  /** the daemon stops: the front-end's requests are left for the next daemon, not failed */
  handOver?: boolean;
  inQueue: boolean;
  deadline: number;
}

function shuttingDown(): IbnbdError {
  return new IbnbdError('ECANCELED', 'the client daemon is shutting down');
}

/** devices/<device_id>; a second session mapping the same path gets "<device_id>@<sessname>". */
function linkNameFor(deviceId: string, sessname: string, devices: Map<string, MappedDevice>): string {
  for (const d of devices.values()) if (d.deviceId === deviceId) return `${deviceId}@${sessname}`;
  return deviceId;
}

function describeEvent(ev: VhostEvent): string {
  return `front-end ${ev.type}${ev.detail ? `: ${ev.detail}` : ''}`;
}
