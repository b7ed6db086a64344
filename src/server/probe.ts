// Geometry of an open device for OPEN_RSP: size, block sizes, discard / write-zeroes limits,
// cache policy. Block devices are described by their own sysfs queue (the kernel's limits);
// a regular file by its size and the queue of the block device under its filesystem, with
// discard (punch hole) and write-zeroes (zero range) advertised only on filesystems that have
// both. The native probeDevice(fd) asks the kernel through the descriptor itself (ioctls, a real
// fallocate test); sysfs fills in only the fields it leaves out.
import { fstatSync, readFileSync, readlinkSync, statfsSync } from 'node:fs';
import { probeDevice, type DeviceGeometry } from '../backend/server-native.js';
import { IbnbdError } from '../errors.js';

const SECTOR = 512;
/** Discard / write-zeroes on a file need no data transfer: 1 GiB per request. */
const FILE_RANGE_SECTORS = (1 << 30) / SECTOR;

/** statfs f_type of filesystems with FALLOC_FL_PUNCH_HOLE and FALLOC_FL_ZERO_RANGE. */
const PUNCH_AND_ZERO_FS = new Set([
  0xef53, // ext2/3/4
  0x58465342, // xfs
  0x9123683e, // btrfs
  0x01021994, // tmpfs
  0xf2f52010, // f2fs
]);

/**
 * Probes through `fd`. Pass a writable descriptor when the mapping is writable: discard and
 * write-zeroes of a file are found by a real fallocate, which a read-only descriptor cannot do
 * (and a read-only mapping must not advertise them anyway).
 */
export function probe(fd: number, blockDevice: boolean): DeviceGeometry {
  const g = probeDevice(fd);
  const fallback = (): DeviceGeometry => sysfsProbe(fd, blockDevice);
  let fb: DeviceGeometry | undefined;
  const pick = <K extends keyof DeviceGeometry>(k: K): DeviceGeometry[K] =>
    (g[k] !== undefined ? g[k] : (fb ??= fallback())[k]) as DeviceGeometry[K];
  return {
    sizeBytes: pick('sizeBytes'),
    logicalBlockSize: pick('logicalBlockSize'),
    physicalBlockSize: pick('physicalBlockSize'),
    maxHwSectors: pick('maxHwSectors'),
    maxDiscardSectors: pick('maxDiscardSectors'),
    discardGranularity: pick('discardGranularity'),
    discardAlignment: pick('discardAlignment'),
    maxWriteZeroesSectors: pick('maxWriteZeroesSectors'),
    secureDiscard: pick('secureDiscard'),
    rotational: pick('rotational'),
    writeCache: pick('writeCache'),
    fua: pick('fua'),
  };
}

export function sysfsProbe(fd: number, blockDevice: boolean): DeviceGeometry {
  const st = fstatSync(fd);
  if (blockDevice) {
    const q = queueDir(st.rdev);
    if (!q) throw new IbnbdError('ENODEV', 'block device without a sysfs queue');
    const sectors = num(`${q.dev}/size`, 0);
    const lbs = num(`${q.queue}/logical_block_size`, SECTOR);
    const pbs = Math.max(num(`${q.queue}/physical_block_size`, lbs), lbs);
    const discardBytes = num(`${q.queue}/discard_max_bytes`, 0);
    const wc = str(`${q.queue}/write_cache`, 'write through') === 'write back';
    return {
      sizeBytes: sectors * SECTOR,
      logicalBlockSize: lbs,
      physicalBlockSize: pbs,
      maxHwSectors: Math.min(num(`${q.queue}/max_hw_sectors_kb`, 128) * 2, 0xffffffff),
      maxDiscardSectors: Math.min(Math.floor(discardBytes / SECTOR), 0xffffffff),
      discardGranularity: discardBytes > 0 ? num(`${q.queue}/discard_granularity`, lbs) : 0,
      discardAlignment: discardBytes > 0 ? num(`${q.dev}/discard_alignment`, 0) : 0,
      maxWriteZeroesSectors: Math.min(Math.floor(num(`${q.queue}/write_zeroes_max_bytes`, 0) / SECTOR), 0xffffffff),
      secureDiscard: false,
      rotational: num(`${q.queue}/rotational`, 0) === 1,
      writeCache: wc,
      fua: wc && num(`${q.queue}/fua`, 0) === 1,
    };
  }
  // regular file: the filesystem's device gives block sizes and cache
  const q = queueDir(st.dev);
  const lbs = q ? num(`${q.queue}/logical_block_size`, SECTOR) : SECTOR;
  const pbs = Math.max(q ? num(`${q.queue}/physical_block_size`, 4096) : 4096, lbs, 4096);
  const wc = q ? str(`${q.queue}/write_cache`, 'write back') === 'write back' : true;
  let holes = false;
  try {
    holes = PUNCH_AND_ZERO_FS.has(statfsPath(fd).type);
  } catch {
    holes = false;
  }
  return {
    sizeBytes: st.size,
    logicalBlockSize: lbs,
    physicalBlockSize: pbs,
    maxHwSectors: 0xffff,
    maxDiscardSectors: holes ? FILE_RANGE_SECTORS : 0,
    discardGranularity: holes ? pbs : 0,
    discardAlignment: 0,
    maxWriteZeroesSectors: holes ? FILE_RANGE_SECTORS : 0,
    secureDiscard: false,
    rotational: q ? num(`${q.queue}/rotational`, 0) === 1 : false,
    writeCache: wc,
    fua: wc && (q ? num(`${q.queue}/fua`, 0) === 1 : false),
  };
}

function statfsPath(fd: number) {
  return statfsSync(readlinkSync(`/proc/self/fd/${fd}`));
}

/** sysfs dirs of a device number: the device (size) and its queue (a partition: the parent's). */
function queueDir(devt: number): { dev: string; queue: string } | null {
  const major = Math.floor(devt / 256) & 0xfff;
  const minor = (devt & 0xff) | (Math.floor(devt / 4096) & 0xfff00);
  const dev = `/sys/dev/block/${major}:${minor}`;
  try {
    readlinkSync(dev);
  } catch {
    return null;
  }
  for (const queue of [`${dev}/queue`, `${dev}/../queue`]) {
    try {
      readFileSync(`${queue}/logical_block_size`);
      return { dev, queue };
    } catch {
      /* try the parent */
    }
  }
  return null;
}

function str(path: string, dflt: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return dflt;
  }
}

function num(path: string, dflt: number): number {
  const n = Number(str(path, ''));
  return Number.isFinite(n) && str(path, '') !== '' ? n : dflt;
}

