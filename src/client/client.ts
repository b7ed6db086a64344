// The client's semantics (IBNBD's client interface on a vhost-user face, docs/client.md):
//   map    → session found or created, OPEN, vhost-user-blk socket ibnbd<N>.sock, devices/<id>
//   unmap  → EBUSY while a front-end is connected unless forced; CLOSE; socket removed;
//            the session closed with its last device
//   list / show → name, device_id, socket, state, session, mapping_path, ...
import { mkdir, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { IbnbdError } from '../errors.js';
import { VhostBlk, type VhostEvent } from '../backend/vhost.js';
import { deviceIdOf, type MapRequest } from '../proto/map-string.js';
import type { TransportKind as Transport } from '../transport/paths.js';
import { hostHasRdma } from '../backend/transport.js';
import { closeDevice, openDevice, sessInfo } from './admin.js';
import { MappedDevice, type DeviceInfo } from './device.js';
import { NameAllocator } from './names.js';
import { SerialQueue } from './serialize.js';
import { ClientSessions, type ClientSession, type SessionOptions, type SessionState } from './session.js';

export interface IbnbdClientOptions extends Partial<SessionOptions> {
  runDir: string;
  log?: (line: string) => void;
}

export class IbnbdClient {
  private readonly devices = new Map<string, MappedDevice>(); // by name
  private readonly names = new NameAllocator();
  private readonly serial = new SerialQueue();
  private readonly sessions: ClientSessions;
  private readonly log: (line: string) => void;

  constructor(private readonly opts: IbnbdClientOptions) {
    this.log = opts.log ?? (() => undefined);
    this.sessions = new ClientSessions(
      { onSessionState: (s, state) => this.onSessionState(s, state) },
      {
        connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
        heartbeatMs: opts.heartbeatMs,
        heartbeatMissedMax: opts.heartbeatMissedMax,
        reconnectDelayMs: opts.reconnectDelayMs,
        maxReconnectAttempts: opts.maxReconnectAttempts,
      },
    );
  }

  get vhostDir(): string {
    return join(this.opts.runDir, 'vhost');
  }

  get devicesDir(): string {
    return join(this.opts.runDir, 'devices');
  }

  map(req: MapRequest): Promise<DeviceInfo> {
    return this.serial.run(() => this.mapLocked(req));
  }

  unmap(nameOrId: string, force: boolean): Promise<DeviceInfo> {
    return this.serial.run(() => this.unmapLocked(nameOrId, force));
  }

  list(): DeviceInfo[] {
    return [...this.devices.values()].sort((a, b) => a.index - b.index).map((d) => d.info());
  }

  /** list's fields plus the vhost counters, each transport path (state, in-flight, reconnects,
   *  requests completed on it, requests failed over from it) and the session's bounce count: requests that did not go zero-copy (RDMA: data outside
   *  registered guest memory; always 0 on TCP). */
  show(nameOrId: string): DeviceInfo & { stats: unknown; path_states: unknown[]; bounce_count: number } {
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
    return { ...dev.info(), stats: dev.vhost.stats(), path_states: pathStates, bounce_count: bounceCount };
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

  /** Daemon shutdown: front-ends disconnected, devices closed on their servers, sessions closed. */
  shutdown(): Promise<void> {
    return this.serial.run(async () => {
      for (const dev of [...this.devices.values()]) {
        await this.teardown(dev, true).catch((e) => this.log(`unmap ${dev.name} at shutdown: ${String(e)}`));
      }
      await this.sessions.closeAll();
    });
  }

  private async mapLocked(given: MapRequest): Promise<DeviceInfo> {
    // No transport= in the map string: decided here, per map (gid: addresses exist only on RDMA).
    const req: MapRequest & { transport: Transport } = {
      ...given,
      transport: given.transport ?? (hostHasRdma() || given.paths.some((p) => p.dst.kind === 'gid') ? 'rdma' : 'tcp'),
    };
    for (const d of this.devices.values()) {
      if (d.session.sessname === req.sessname && d.request.devicePath === req.devicePath) {
        throw new IbnbdError(
          'EEXIST',
          `device_path '${req.devicePath}' is already mapped by session '${req.sessname}' as ${d.name}`,
        );
      }
    }
    const session = await this.sessions.getOrCreate(req);
    let open;
    try {
      open = await openDevice(session.native, req.devicePath, req.accessMode, req.ioMode);
      if (open.logicalBlockSize === 0) throw new IbnbdError('EINVAL', 'server reported logical_block_size 0');
    } catch (e) {
      await this.sessions.releaseIfUnused(session).catch(() => undefined);
      throw e;
    }

    const { index, name } = this.names.allocate();
    const deviceId = deviceIdOf(req.devicePath);
    const socketPath = join(this.vhostDir, `${name}.sock`);
    const linkPath = join(this.devicesDir, linkNameFor(deviceId, session.sessname, this.devices));
    let vhost: VhostBlk | undefined;
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
        },
        (ev: VhostEvent) => this.log(`${name}: ${describeEvent(ev)}`),
      );
      vhost.start();
      await rm(linkPath, { force: true });
      await symlink(join('..', 'vhost', `${name}.sock`), linkPath);
    } catch (e) {
      await vhost?.close().catch(() => undefined);
      await rm(socketPath, { force: true });
      this.names.release(index);
      await closeDevice(session.native, open.deviceId).catch(() => undefined);
      await this.sessions.releaseIfUnused(session).catch(() => undefined);
      throw e;
    }
    const dev = new MappedDevice(index, name, deviceId, socketPath, linkPath, req, session, open, vhost);
    this.devices.set(name, dev);
    session.devices.add(name);
    this.log(`mapped ${req.devicePath} of session ${req.sessname} as ${name} (${socketPath})`);
    return dev.info();
  }

  private async unmapLocked(nameOrId: string, force: boolean): Promise<DeviceInfo> {
    const dev = this.find(nameOrId);
    if (!force && dev.vhost.frontendConnected) {
      throw new IbnbdError('EBUSY', `${dev.name} is in use by a vhost-user front-end (a VM); use --force to unmap anyway`);
    }
    const info = dev.info();
    await this.teardown(dev, force);
    this.log(`unmapped ${dev.name}${force ? ' (force)' : ''}`);
    return info;
  }

  private async teardown(dev: MappedDevice, force: boolean): Promise<void> {
    // the front-end goes first: forced, its in-flight requests fail with VIRTIO_BLK_S_IOERR
    if (force) await dev.vhost.disconnectFrontend();
    await dev.vhost.close();
    this.devices.delete(dev.name);
    dev.session.devices.delete(dev.name);
    this.names.release(dev.index);
    await rm(dev.socketPath, { force: true });
    await rm(dev.linkPath, { force: true });
    if (dev.state === 'open' && dev.session.state === 'open') {
      await closeDevice(dev.session.native, dev.open.deviceId).catch((e) =>
        this.log(`CLOSE of ${dev.name} on the server failed: ${String(e)}`),
      );
    }
    await this.sessions.releaseIfUnused(dev.session);
  }

  private sessionDevices(session: ClientSession): MappedDevice[] {
    return [...session.devices]
      .map((n) => this.devices.get(n))
      .filter((d): d is MappedDevice => d !== undefined)
      .sort((a, b) => a.index - b.index);
  }

  // RNBD's client: on DISCONNECTED every device goes MAPPED_DISCONNECTED; on RECONNECTED it sends
  // SESS_INFO and re-OPENs each device (docs/protocol.md, "The client's session life"). The server
  // may be a new process that knows none of our device ids, or hands out the old ids to other devices: a device's IO is
  // cut off here, synchronously, before any re-OPEN of this session can be sent.
  private onSessionState(session: ClientSession, state: SessionState): void {
    const devs = this.sessionDevices(session);
    const names = devs.map((d) => d.name).join(', ') || 'no devices';
    if (state === 'closed') {
      for (const dev of devs) dev.markClosed('session disconnected: every path to the server is lost; reconnecting');
      this.log(`session ${session.sessname}: every path lost, devices closed (${names}); their IO fails with IOERR`);
      return;
    }
    this.log(`session ${session.sessname}: connected again; re-opening ${names}`);
    const epoch = session.linkEpoch;
    // serialized with map/unmap: the set of devices and their names cannot change under it
    void this.serial
      .run(() => this.reopenLocked(session, epoch))
      .catch((e) => this.log(`session ${session.sessname}: re-open failed: ${String(e)}`));
  }

  private async reopenLocked(session: ClientSession, epoch: number): Promise<void> {
    // a later disconnect (or the session's close) voids this pass; the next reconnect redoes it
    const stale = () => session.linkEpoch !== epoch || this.sessions.get(session.sessname) !== session;
    if (stale()) return;
    const devs = this.sessionDevices(session);
    try {
      session.protocolVersion = await sessInfo(session.native);
    } catch (e) {
      if (stale()) return;
      const why = `SESS_INFO after reconnect failed: ${errorText(e)}`;
      for (const dev of devs) dev.markClosed(why);
      this.log(`session ${session.sessname}: ${why}; devices stay closed until the next reconnect`);
      return;
    }
    for (const dev of devs) {
      if (stale()) return;
      if (this.devices.get(dev.name) !== dev) continue;
      let open;
      try {
        open = await openDevice(session.native, dev.request.devicePath, dev.request.accessMode, dev.request.ioMode);
      } catch (e) {
        if (stale()) return;
        dev.markClosed(`re-OPEN after reconnect failed: ${errorText(e)}`);
        this.log(`${dev.name}: ${dev.stateReason}; it stays closed (IO fails) until the next reconnect or unmap`);
        continue;
      }
      if (stale()) return; // answered by a connection that is gone again: nothing to rely on
      if (open.logicalBlockSize !== dev.open.logicalBlockSize) {
        // the guest formatted against the old block size: serving it would corrupt its view
        await closeDevice(session.native, open.deviceId).catch(() => undefined);
        dev.markClosed(
          `re-OPEN after reconnect: logical block size changed from ${dev.open.logicalBlockSize} to ${open.logicalBlockSize}`,
        );
        this.log(`${dev.name}: ${dev.stateReason}; it stays closed`);
        continue;
      }
      const newSize = Number(open.nsectors) * 512;
      if (newSize !== dev.sizeBytes) {
        try {
          dev.vhost.setSizeBytes(newSize);
        } catch (e) {
          await closeDevice(session.native, open.deviceId).catch(() => undefined);
          dev.markClosed(`re-OPEN after reconnect: unusable size ${newSize}: ${errorText(e)}`);
          this.log(`${dev.name}: ${dev.stateReason}`);
          continue;
        }
        this.log(`${dev.name}: capacity changed from ${dev.sizeBytes} to ${newSize} bytes`);
      }
      dev.vhost.setServerDeviceId(open.deviceId);
      dev.markReopened(open);
      this.log(`${dev.name}: re-opened ${dev.request.devicePath} as server device ${open.deviceId}`);
    }
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** devices/<device_id>; a second session mapping the same path gets "<device_id>@<sessname>". */
function linkNameFor(deviceId: string, sessname: string, devices: Map<string, MappedDevice>): string {
  for (const d of devices.values()) if (d.deviceId === deviceId) return `${deviceId}@${sessname}`;
  return deviceId;
}

function describeEvent(ev: VhostEvent): string {
  return `front-end ${ev.type}${ev.detail ? `: ${ev.detail}` : ''}`;
}
