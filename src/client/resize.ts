// `ibnbd resize` (docs/client.md, "Resize"): a mapped device takes a new size while its guest
// runs. The size comes from the server — a re-OPEN of the device in its own session, which our
// server answers with the same id and a fresh geometry (and from then on checks IO against it) —
// or from the command line, as RNBD's sysfs `resize` takes it, never beyond what the server
// has. The guest hears of it through the front-end: a CONFIG_CHANGE_MSG on the vhost-user
// back-end channel, after which QEMU reads the config space again and tells the guest driver.
import { IbnbdError } from '../errors.js';
import { closeDevice, openDevice } from './admin.js';
import type { MappedDevice } from './device.js';

export interface ResizeOptions {
  /** bytes; undefined: all the server has */
  sizeBytes?: number;
  /** shrink below what the guest has written */
  force?: boolean;
}

export interface ResizeResult {
  from: number;
  to: number;
  /** the front-end was told (else the guest sees the new size at its next GET_CONFIG) */
  frontendTold: boolean;
}

/** In the device's session queue (client.ts), so it never crosses a map, unmap or re-open pass. */
export async function resizeMapped(dev: MappedDevice, o: ResizeOptions): Promise<ResizeResult> {
  if (dev.state !== 'open') {
    throw new IbnbdError('EBUSY', `${dev.name} is ${dev.state}: resize it once it is open again`);
  }
  const session = dev.session;
  // a late answer is the same device (a re-OPEN reuses it): nothing to undo
  const open = await openDevice(session, dev.request.devicePath, dev.request.accessMode, dev.request.ioMode, () => undefined);
  if (open.deviceId !== dev.open.deviceId) {
    // a server that opened it a second time instead of answering for the open one
    await closeDevice(session, open.deviceId).catch(() => undefined);
    throw new IbnbdError('EIO', `the server opened ${dev.request.devicePath} again as device ${open.deviceId} instead of reporting device ${dev.open.deviceId}: size unchanged`);
  }
  if (open.logicalBlockSize !== dev.open.logicalBlockSize) {
    throw new IbnbdError('EIO', `the server reports a logical block size of ${open.logicalBlockSize}, not ${dev.open.logicalBlockSize}: size unchanged`);
  }
  const serverSize = Number(open.nsectors) * 512;
  const lbs = dev.open.logicalBlockSize;
  if (o.sizeBytes !== undefined) {
    if (!Number.isSafeInteger(o.sizeBytes) || o.sizeBytes <= 0 || o.sizeBytes % lbs !== 0) {
      throw new IbnbdError('EINVAL', `--size ${o.sizeBytes} must be a positive multiple of the logical block size ${lbs}`);
    }
    if (o.sizeBytes > serverSize) {
      throw new IbnbdError('EINVAL', `--size ${o.sizeBytes} is beyond what the server has (${serverSize} bytes)`);
    }
  }
  const to = o.sizeBytes ?? serverSize;
  const written = dev.vhost.writtenEnd();
  if (to < written && !o.force) {
    throw new IbnbdError('EBUSY', `the guest has written up to byte ${written}: a size of ${to} would cut it (--force to shrink anyway)`);
  }
  const from = dev.sizeBytes;
  const before = dev.sizeLimit;
  dev.sizeLimit = o.sizeBytes !== undefined && o.sizeBytes < serverSize ? o.sizeBytes : undefined;
  if (to === from) {
    dev.open = open; // the server's size as it is now, for the next resize or re-OPEN
    return { from, to, frontendTold: false };
  }
  try {
    const frontendTold = dev.sizeChanged(open);
    return { from, to: dev.sizeBytes, frontendTold };
  } catch (e) {
    dev.sizeLimit = before; // e.g. a server size that is no multiple of the block size
    throw e;
  }
}
