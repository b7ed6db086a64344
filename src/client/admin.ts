// The client's side of IBNBD's admin messages (docs/protocol.md, "RNBD/IBNBD messages"):
// SESS_INFO once per session, OPEN per mapped device, CLOSE on unmap. They travel as transport requests like any IO: SESS_INFO
// and OPEN as READs whose data buffer receives the response, CLOSE as a WRITE with no data.
// Each waits for its answer at most the session's admin timeout (--admin-timeout), then fails with
// ETIMEDOUT; the request itself may still be answered later (the transport has no way to take it
// back): a late OPEN_RSP goes to the caller's onLate (the client CLOSEs the device again), any
// other late answer is dropped.
import { IbnbdError, errnoName } from '../errors.js';
import type { ClientSession as TransportSession, RequestResult, RequestSpec } from '../backend/transport.js';
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

/** What an admin request needs of a session (ClientSession in session.ts is one). */
export interface AdminChannel {
  readonly native: Pick<TransportSession, 'request'>;
  readonly sessname: string;
  /** How long a request waits for its answer before it fails with ETIMEDOUT (ms). */
  readonly adminTimeoutMs: number;
}

/** "30 s", "2.5 s": the timeout as the messages say it. */
function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))} s`;
}

/** The transport's answer within timeoutMs, else ETIMEDOUT naming the request and the session; an
 *  answer after that goes to onLate (never throws, never rejects unhandled). */
function answered(
  ch: AdminChannel,
  what: string,
  spec: RequestSpec,
  timeoutMs: number,
  onLate?: (rsp: RequestResult) => void,
): Promise<RequestResult> {
  return new Promise((resolve, reject) => {
    let sent: Promise<RequestResult>;
    try {
      sent = ch.native.request(spec);
    } catch (e) {
      reject(e);
      return;
    }
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      reject(new IbnbdError('ETIMEDOUT', `${what} on session '${ch.sessname}': no answer from the server within ${seconds(timeoutMs)}`));
    }, timeoutMs);
    sent.then(
      (rsp) => {
        if (!late) {
          clearTimeout(timer);
          resolve(rsp);
          return;
        }
        try {
          onLate?.(rsp);
        } catch {
          // a late answer has no one left to tell
        }
      },
      (e: unknown) => {
        if (late) return;
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** Sends SESS_INFO and returns the negotiated protocol version (min of both sides). */
export async function sessInfo(ch: AdminChannel): Promise<number> {
  const rsp = await answered(
    ch,
    'SESS_INFO',
    { dir: 'read', usr: encode({ type: 'SESS_INFO', ver: PROTO_VER_MAJOR }), readLen: SESS_INFO_SIZE },
    ch.adminTimeoutMs,
  );
  if (rsp.errno !== 0) throw serverError(rsp.errno, 'SESS_INFO');
  const d = decode(rsp.data ?? Buffer.alloc(0));
  if (!d.ok) throw new IbnbdError('EPROTO', `SESS_INFO_RSP from the server: ${d.error.message}`);
  if (d.msg.type !== 'SESS_INFO_RSP') throw new IbnbdError('EPROTO', `SESS_INFO answered with ${d.msg.type}`);
  return Math.min(d.msg.ver, PROTO_VER_MAJOR);
}

/** Opens devicePath on the server; ENOENT / EPERM / EINVAL come back as the server's errno,
 *  no answer within the admin timeout as ETIMEDOUT. A successful OPEN_RSP that comes after the
 *  timeout goes to onLate: the server has the device open for nobody, the caller undoes it. */
export async function openDevice(
  ch: AdminChannel,
  devicePath: string,
  accessMode: AccessMode,
  ioMode: IoMode,
  onLate?: (open: OpenRspMsg) => void,
): Promise<OpenRspMsg> {
  const what = `OPEN of '${devicePath}'`;
  const rsp = await answered(
    ch,
    what,
    { dir: 'read', usr: encode({ type: 'OPEN', accessMode, ioMode, devName: devicePath }), readLen: OPEN_RSP_SIZE },
    ch.adminTimeoutMs,
    (late) => {
      if (late.errno !== 0 || !onLate) return;
      const d = decode(late.data ?? Buffer.alloc(0));
      if (d.ok && d.msg.type === 'OPEN_RSP') onLate(d.msg);
    },
  );
  if (rsp.errno !== 0) throw serverError(rsp.errno, what);
  const d = decode(rsp.data ?? Buffer.alloc(0));
  if (!d.ok) throw new IbnbdError('EPROTO', `OPEN_RSP from the server: ${d.error.message}`);
  if (d.msg.type !== 'OPEN_RSP') throw new IbnbdError('EPROTO', `OPEN answered with ${d.msg.type}`);
  return d.msg;
}

/** CLOSE of a server device id; timeoutMs: a shorter bound than the admin timeout (a forced
 *  unmap's or the shutdown's what is left of it). A late answer is dropped. */
export async function closeDevice(ch: AdminChannel, deviceId: number, timeoutMs = ch.adminTimeoutMs): Promise<void> {
  const what = `CLOSE of device ${deviceId}`;
  const rsp = await answered(ch, what, { dir: 'write', usr: encode({ type: 'CLOSE', deviceId }) }, timeoutMs);
  if (rsp.errno !== 0) throw serverError(rsp.errno, what);
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
