// The re-open pass after a session reconnects (docs/client.md, "Path loss and reconnect"): in the
// session's queue, SESS_INFO, then a re-OPEN of each of its devices, in map order. RNBD's client
// does the same on RECONNECTED; here a device keeps its vhost socket and its held requests
// throughout, and goes open again under the id the server gives now (held requests resubmitted
// first, in order), or closed with the reason (OPEN refused, block size changed, an unusable
// size). A later disconnect, the session's close or the daemon's stop voids the pass (stale()).
import { errorText } from '../errors.js';
import type { OpenRspMsg } from '../proto/ibnbd.js';
import { closeDevice, openDevice, sessInfo } from './admin.js';
import type { MappedDevice } from './device.js';
import type { ClientSession } from './session.js';
import type { Logger } from '../logger.js';

export interface ReopenContext {
  /** The session's devices, in map order. */
  devices(): MappedDevice[];
  /** Still this mapping (not unmapped, by a forced unmap, while the pass waited). */
  stillMapped(dev: MappedDevice): boolean;
  /** The pass is void: the link moved on, the session closed, the daemon stops. */
  stale(): boolean;
  /** An OPEN answered after its admin timeout: undo it in the session's turn. */
  undoLateOpen(devicePath: string, late: OpenRspMsg): void;
  /** the session's logger */
  log: Logger;
}

export async function reopenDevices(session: ClientSession, ctx: ReopenContext): Promise<void> {
  // a later disconnect (or the session's close) voids this pass; the next reconnect redoes it
  const { stale, log } = ctx;
  if (stale()) return;
  const devs = ctx.devices();
  try {
    session.protocolVersion = await sessInfo(session);
  } catch (e) {
    if (stale()) return;
    const why = `SESS_INFO after reconnect failed: ${errorText(e)}`;
    for (const dev of devs) dev.markClosed(why);
    log.warn(`session ${session.sessname}: ${why}; devices stay closed until the next reconnect`);
    return;
  }
  for (const dev of devs) {
    if (stale()) return;
    if (!ctx.stillMapped(dev)) continue;
    let open;
    try {
      open = await openDevice(session, dev.request.devicePath, dev.request.accessMode, dev.request.ioMode, (late) =>
        ctx.undoLateOpen(dev.request.devicePath, late),
      );
    } catch (e) {
      if (stale()) return;
      if (!ctx.stillMapped(dev)) continue; // unmapped (forced) meanwhile
      dev.markClosed(`re-OPEN after reconnect failed: ${errorText(e)}`);
      dev.log.warn(`${dev.name}: ${dev.stateReason}; it stays closed (IO fails) until the next reconnect or unmap`);
      continue;
    }
    if (stale()) return; // answered by a connection that is gone again: nothing to rely on
    if (!ctx.stillMapped(dev)) {
      // unmapped (forced) while its OPEN was out: nobody uses what the server opened
      await closeDevice(session, open.deviceId).catch(() => undefined);
      continue;
    }
    if (open.logicalBlockSize !== dev.open.logicalBlockSize) {
      // the guest formatted against the old block size: serving it would corrupt its view
      await closeDevice(session, open.deviceId).catch(() => undefined);
      dev.markClosed(
        `re-OPEN after reconnect: logical block size changed from ${dev.open.logicalBlockSize} to ${open.logicalBlockSize}`,
      );
      dev.log.warn(`${dev.name}: ${dev.stateReason}; it stays closed`);
      continue;
    }
    const newSize = Math.min(Number(open.nsectors) * 512, dev.sizeLimit ?? Infinity);
    if (newSize !== dev.sizeBytes) {
      const was = dev.sizeBytes;
      try {
        dev.sizeChanged(open);
      } catch (e) {
        await closeDevice(session, open.deviceId).catch(() => undefined);
        dev.markClosed(`re-OPEN after reconnect: unusable size ${newSize}: ${errorText(e)}`);
        dev.log.warn(`${dev.name}: ${dev.stateReason}`);
        continue;
      }
      dev.log.info(`${dev.name}: capacity changed from ${was} to ${newSize} bytes`);
    }
    const held = dev.state === 'reconnecting' ? heldRequests(dev) : 0;
    dev.vhost.setServerDeviceId(open.deviceId); // held requests are re-submitted first, in order
    dev.markReopened(open);
    dev.log.info(
      `${dev.name}: re-opened ${dev.request.devicePath} as server device ${open.deviceId}` +
        (held > 0 ? `; ${held} held requests resubmitted` : ''),
    );
  }
}

/** Requests the device holds for its server (for the log only: a failure to read them is 0). */
function heldRequests(dev: MappedDevice): number {
  try {
    return dev.vhost.stats().waiting;
  } catch {
    return 0;
  }
}
