// The admin messages of one session, bytes in, bytes out: SESS_INFO, OPEN and CLOSE decoded with
// the IBNBD codec (src/proto/ibnbd.ts), applied to the session (session.ts), answered with an errno
// and, for SESS_INFO and OPEN, the response the client's READ buffer receives. Every error —
// malformed bytes, refused path, access mode — becomes the errno; nothing thrown escapes.
import { constants } from 'node:os';
import { toIbnbdError } from '../errors.js';
import {
  OPEN_RSP_SIZE,
  SECTOR_SIZE,
  SESS_INFO_SIZE,
  decode,
  encode,
  type OpenRspMsg,
} from '../proto/ibnbd.js';
import type { DeviceGeometry } from '../backend/server-native.js';
import type { Logger } from '../logger.js';
import type { ExportSession } from './session.js';

/** errno: 0 or a positive errno number; data: the response for a READ-carried message;
 *  noReply: the request is left unanswered (the test-only fault hook below). */
export interface AdminReply {
  errno: number;
  data?: Buffer;
  noReply?: true;
}

/** Test-only fault hook (docs/server.md, "Test-only fault hooks"): an OPEN whose device_path is
 *  IBNBD_FAULT_DROP_OPEN is never answered, a server that answers heartbeats but not OPEN. Read
 *  once, when the module loads. */
const DROP_OPEN = process.env.IBNBD_FAULT_DROP_OPEN || undefined;

/** RTRS's max_segments; the client uses its own transport limit, as in RNBD. */
const MAX_SEGMENTS = 128;

export function errnoNumber(code: string): number {
  return (constants.errno as Record<string, number>)[code] ?? constants.errno.EIO;
}

/** `givenUp`: resolves when the caller stopped waiting for the answer (an OPEN past
 *  --open-timeout-ms, server.ts); the OPEN then gives back what it took. */
export async function handleAdmin(
  s: ExportSession,
  usr: Buffer,
  dir: 'read' | 'write',
  dataLen: number,
  log: Logger,
  givenUp?: Promise<void>,
): Promise<AdminReply> {
  const r = decode(usr);
  if (!r.ok) return { errno: errnoNumber(r.error.code) };
  const msg = r.msg;
  try {
    switch (msg.type) {
      case 'SESS_INFO': {
        needReadBuffer(dir, dataLen, SESS_INFO_SIZE);
        const ver = s.sessInfo(msg.ver);
        return { errno: 0, data: encode({ type: 'SESS_INFO_RSP', ver }) };
      }
      case 'OPEN': {
        if (DROP_OPEN !== undefined && msg.devName === DROP_OPEN) {
          log.warn(`session ${s.sessname}: OPEN ${JSON.stringify(msg.devName)} left unanswered (IBNBD_FAULT_DROP_OPEN, a test hook)`, { device: msg.devName });
          return { errno: 0, noReply: true };
        }
        needReadBuffer(dir, dataLen, OPEN_RSP_SIZE);
        const res = await s.open({ accessMode: msg.accessMode, ioMode: msg.ioMode, devName: msg.devName }, givenUp);
        if (!res.reused) {
          log.info(`session ${s.sessname}: opened ${msg.devName} as device ${res.deviceId} (${msg.accessMode}, ${res.ioMode})`, { device: msg.devName });
        }
        return { errno: 0, data: encode(openRsp(res.deviceId, res.geometry)) };
      }
      case 'CLOSE':
        s.close(msg.deviceId);
        return { errno: 0 };
      case 'IO':
        // IO is served natively; one that reaches JS names no attached device (RNBD: -ENOTCONN).
        return { errno: constants.errno.ENOTCONN };
      default:
        // a response type sent by a client
        return { errno: constants.errno.EINVAL };
    }
  } catch (e) {
    const err = toIbnbdError(e);
    if (msg.type === 'OPEN') log.warn(`session ${s.sessname}: OPEN ${JSON.stringify(msg.devName)} refused: ${err.toString()}`, { device: msg.devName });
    return { errno: errnoNumber(err.code) };
  }
}

function needReadBuffer(dir: 'read' | 'write', dataLen: number, size: number): void {
  if (dir !== 'read' || dataLen < size) {
    throw Object.assign(new Error(`response needs a READ buffer of ${size} bytes (got ${dir}, ${dataLen})`), {
      code: 'EINVAL',
    });
  }
}

export function openRsp(deviceId: number, g: DeviceGeometry): OpenRspMsg {
  return {
    type: 'OPEN_RSP',
    deviceId,
    nsectors: BigInt(Math.floor(g.sizeBytes / SECTOR_SIZE)),
    maxHwSectors: g.maxHwSectors,
    maxWriteZeroesSectors: g.maxWriteZeroesSectors,
    maxDiscardSectors: g.maxDiscardSectors,
    discardGranularity: g.discardGranularity,
    discardAlignment: g.discardAlignment,
    physicalBlockSize: g.physicalBlockSize,
    logicalBlockSize: g.logicalBlockSize,
    maxSegments: MAX_SEGMENTS,
    secureDiscard: g.secureDiscard ? 1 : 0,
    rotational: g.rotational,
    cachePolicy: { writeback: g.writeCache, fua: g.fua },
  };
}

