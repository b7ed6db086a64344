// Geometry of an open device for OPEN_RSP: size, block sizes, discard / write-zeroes limits,
// cache policy. The native probeDevice(fd) (native/server/probe.cc) asks the kernel through the
// descriptor itself, on libuv's thread pool: a block device by its ioctls and its own sysfs queue
// (the kernel's limits); a regular file by its size, with discard (punch hole) and write-zeroes
// (zero range) advertised only when a real fallocate just past its end succeeds.
import { probeDevice, type DeviceGeometry } from '../backend/server-native.js';

/**
 * Probes through `fd`. Pass a writable descriptor when the mapping is writable: discard and
 * write-zeroes of a file are found by a real fallocate, which a read-only descriptor cannot do
 * (and a read-only mapping must not advertise them anyway). The descriptor's own type decides
 * how; `blockDevice` is what the caller expects of it, and a mismatch is EIO.
 */
export async function probe(fd: number, blockDevice: boolean): Promise<DeviceGeometry> {
  const { isBlockDevice, ...geometry } = await probeDevice(fd);
  if (isBlockDevice !== blockDevice) throw new Error(`the descriptor is ${isBlockDevice ? '' : 'not '}a block device any more`);
  return geometry;
}
