// One mapped device: the server's OPEN_RSP, the vhost-user-blk socket serving it, and what
// `ibnbd show` reports. IBNBD made /dev/ibnbd<N> and a devices/<device_id> link; we make
// <run-dir>/vhost/ibnbd<N>.sock and <run-dir>/devices/<device_id> → that socket.
// State (RNBD's MAPPED / MAPPED_DISCONNECTED): open, or closed with the reason why.
import type { VhostBlk } from '../backend/vhost.js';
import type { OpenRspMsg } from '../proto/ibnbd.js';
import type { MapRequest } from '../proto/map-string.js';
import type { TransportKind as Transport } from '../transport/paths.js';
import type { ClientSession } from './session.js';

export type DeviceState = 'open' | 'closed';

export interface DeviceInfo {
  name: string;
  device_id: string;
  socket: string;
  state: DeviceState;
  /** Why the device is closed ('' while open): path loss, a failed re-OPEN, ... */
  state_reason: string;
  session: string;
  mapping_path: string;
  access_mode: MapRequest['accessMode'];
  io_mode: MapRequest['ioMode'];
  transport: Transport;
  size: number;
  logical_block_size: number;
  physical_block_size: number;
  queues: number;
  read_only: boolean;
  frontend_connected: boolean;
  server_device_id: number;
  paths: string[];
}

export class MappedDevice {
  #state: DeviceState = 'open';
  #reason = '';

  constructor(
    readonly index: number,
    readonly name: string,
    readonly deviceId: string,
    readonly socketPath: string,
    readonly linkPath: string,
    readonly request: MapRequest,
    readonly session: ClientSession,
    /** The last successful OPEN_RSP (the map's, then each re-OPEN's). */
    public open: OpenRspMsg,
    readonly vhost: VhostBlk,
  ) {}

  /** open: the server knows the device under open.deviceId and the vhost IO path uses it. */
  get state(): DeviceState {
    return this.#state;
  }

  get stateReason(): string {
    if (this.#state === 'closed' && this.session.state === 'closed') {
      const paths = this.session.native.paths();
      if (paths.length > 0 && paths.every((p) => p.state === 'closed')) {
        return 'session disconnected and every path gave up reconnecting (--max-reconnect-attempts): unmap the device';
      }
    }
    return this.#reason;
  }

  /** Not open on the server any more: its IO is answered IOERR until a re-OPEN succeeds. */
  markClosed(reason: string): void {
    try {
      this.vhost.setServerDeviceId(null);
    } catch {
      // EBADF: the vhost device is already closed (an unmap in progress); no IO can come
    }
    this.#state = 'closed';
    this.#reason = reason;
  }

  /** A re-OPEN succeeded (the vhost device already carries the new id). */
  markReopened(open: OpenRspMsg): void {
    this.open = open;
    this.#state = 'open';
    this.#reason = '';
  }

  get sizeBytes(): number {
    return Number(this.open.nsectors) * 512;
  }

  info(): DeviceInfo {
    return {
      name: this.name,
      device_id: this.deviceId,
      socket: this.socketPath,
      state: this.state,
      state_reason: this.stateReason,
      session: this.session.sessname,
      mapping_path: this.request.devicePath,
      access_mode: this.request.accessMode,
      io_mode: this.request.ioMode,
      transport: this.session.transport,
      size: this.sizeBytes,
      logical_block_size: this.open.logicalBlockSize,
      physical_block_size: this.open.physicalBlockSize,
      queues: this.request.queues,
      read_only: this.request.accessMode === 'ro',
      frontend_connected: this.vhost.frontendConnected,
      server_device_id: this.open.deviceId,
      paths: this.session.describePaths(),
    };
  }
}
