// One mapped device: the server's OPEN_RSP, the vhost-user-blk socket serving it, and what
// `ibnbd show` reports. IBNBD made /dev/ibnbd<N> and a devices/<device_id> link; we make
// <run-dir>/vhost/ibnbd<N>.sock and <run-dir>/devices/<device_id> → that socket.
import type { VhostBlk } from '../backend/vhost.js';
import type { OpenRspMsg } from '../proto/ibnbd.js';
import type { MapRequest } from '../proto/map-string.js';
import type { ClientSession } from './session.js';

export type DeviceState = 'open' | 'closed';

export interface DeviceInfo {
  name: string;
  device_id: string;
  socket: string;
  state: DeviceState;
  session: string;
  mapping_path: string;
  access_mode: MapRequest['accessMode'];
  io_mode: MapRequest['ioMode'];
  transport: MapRequest['transport'];
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
  constructor(
    readonly index: number,
    readonly name: string,
    readonly deviceId: string,
    readonly socketPath: string,
    readonly linkPath: string,
    readonly request: MapRequest,
    readonly session: ClientSession,
    readonly open: OpenRspMsg,
    readonly vhost: VhostBlk,
  ) {}

  get state(): DeviceState {
    return this.session.state;
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
      session: this.session.sessname,
      mapping_path: this.request.devicePath,
      access_mode: this.request.accessMode,
      io_mode: this.request.ioMode,
      transport: this.request.transport,
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
