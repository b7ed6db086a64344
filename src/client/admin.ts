// The client's side of IBNBD's admin messages (docs/protocol.md, "RNBD/IBNBD messages"):
// SESS_INFO once per session, OPEN per mapped device, CLOSE on unmap. They travel as transport requests like any IO: SESS_INFO
// and OPEN as READs whose data buffer receives the response, CLOSE as a WRITE with no data.
import { IbnbdError, errnoName } from '../errors.js';
import type { ClientSession as TransportSession } from '../backend/transport.js';
import {
  decode,
  encode,
  OPEN_RSP_SIZE,
  PROTO_VER_MAJOR,
  SESS_INFO_SIZE,
  type AccessMode,
  type IoMode,
  type OpenRspMsg,
} from '../proto/ibnbd.js';

/** Sends SESS_INFO and returns the negotiated protocol version (min of both sides). */
export async function sessInfo(session: TransportSession): Promise<number> {
  const rsp = await session.request({
    dir: 'read',
    usr: encode({ type: 'SESS_INFO', ver: PROTO_VER_MAJOR }),
    readLen: SESS_INFO_SIZE,
  });
  if (rsp.errno !== 0) throw serverError(rsp.errno, 'SESS_INFO');
  const d = decode(rsp.data ?? Buffer.alloc(0));
  if (!d.ok) throw new IbnbdError('EPROTO', `SESS_INFO_RSP from the server: ${d.error.message}`);
  if (d.msg.type !== 'SESS_INFO_RSP') throw new IbnbdError('EPROTO', `SESS_INFO answered with ${d.msg.type}`);
  return Math.min(d.msg.ver, PROTO_VER_MAJOR);
}

/** Opens devicePath on the server; ENOENT / EPERM / EINVAL come back as the server's errno. */
export async function openDevice(
  session: TransportSession,
  devicePath: string,
  accessMode: AccessMode,
  ioMode: IoMode,
): Promise<OpenRspMsg> {
  const rsp = await session.request({
    dir: 'read',
    usr: encode({ type: 'OPEN', accessMode, ioMode, devName: devicePath }),
    readLen: OPEN_RSP_SIZE,
  });
  if (rsp.errno !== 0) throw serverError(rsp.errno, `OPEN of '${devicePath}'`);
  const d = decode(rsp.data ?? Buffer.alloc(0));
  if (!d.ok) throw new IbnbdError('EPROTO', `OPEN_RSP from the server: ${d.error.message}`);
  if (d.msg.type !== 'OPEN_RSP') throw new IbnbdError('EPROTO', `OPEN answered with ${d.msg.type}`);
  return d.msg;
}

export async function closeDevice(session: TransportSession, deviceId: number): Promise<void> {
  const rsp = await session.request({ dir: 'write', usr: encode({ type: 'CLOSE', deviceId }) });
  if (rsp.errno !== 0) throw serverError(rsp.errno, `CLOSE of device ${deviceId}`);
}

function serverError(errno: number, what: string): IbnbdError {
  const name = errnoName(errno);
  const code = name.startsWith('E') && !/^E\d+$/.test(name) ? (name as IbnbdError['code']) : 'EIO';
  const why: Partial<Record<string, string>> = {
    ENOENT: 'no such device on the server',
    EPERM: 'access mode conflict: the device is already open for writing',
    EINVAL: 'the server refused the request as invalid',
    ENOTCONN: 'the session is not connected',
  };
  return new IbnbdError(code, `${what} failed: ${why[code] ?? `server answered ${name}`}`);
}
