// The control protocol's messages: one JSON object per line each way (docs/control-socket.md).
// Requests are untrusted: anything that is not a well-formed request becomes an EINVAL reply.
import { IbnbdError, isErrnoName, type ErrnoName } from '../errors.js';

export interface ControlRequest {
  cmd: string;
  [arg: string]: unknown;
}

export type ControlResult = Record<string, unknown>;

export interface ControlErrorReply {
  ok: false;
  error: { code: ErrnoName; message: string };
}

const MAX_CMD_LENGTH = 64;
// The seed's map string begins with a key=value token (usually sessname=...).
const MAP_STRING_START = /^[A-Za-z_][A-Za-z0-9_]*=/;

/** Quotes untrusted text for an error message: escaped and cut short. */
export function quoteForMessage(s: string, max = 64): string {
  const q = JSON.stringify(s.length > max ? `${s.slice(0, max)}...` : s);
  return `'${q.slice(1, -1)}'`;
}

/**
 * Decodes one request line. Blank lines give undefined (no reply: handy with interactive tools).
 * A line that is not JSON but starts like a map string is the shortcut for {"cmd":"map","map":line}.
 */
export function parseRequestLine(line: string): ControlRequest | undefined {
  const text = line.trim();
  if (text === '') return undefined;
  if (!text.startsWith('{') && MAP_STRING_START.test(text)) return { cmd: 'map', map: text };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new IbnbdError('EINVAL', `request: bad JSON (${(e as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new IbnbdError('EINVAL', 'request: not a JSON object');
  }
  const req = value as Record<string, unknown>;
  if (!Object.hasOwn(req, 'cmd')) throw new IbnbdError('EINVAL', 'cmd: missing');
  if (typeof req.cmd !== 'string' || req.cmd === '') throw new IbnbdError('EINVAL', 'cmd: not a non-empty string');
  if (req.cmd.length > MAX_CMD_LENGTH) throw new IbnbdError('EINVAL', `cmd: longer than ${MAX_CMD_LENGTH} characters`);
  return req as ControlRequest;
}

/** The reply line (without "\n") for a handler's result. Throws if the result is not serialisable. */
export function encodeOkReply(result: unknown): string {
  if (typeof result === 'object' && result !== null && !Array.isArray(result)) {
    const { ok: _ok, error: _error, ...rest } = result as Record<string, unknown>;
    return JSON.stringify({ ok: true, ...rest });
  }
  return JSON.stringify(result === undefined ? { ok: true } : { ok: true, result });
}

export function encodeErrorReply(err: IbnbdError): string {
  const reply: ControlErrorReply = { ok: false, error: { code: err.code, message: err.message } };
  return JSON.stringify(reply);
}

/** Client side: a reply line → the result, or the daemon's error rethrown as an IbnbdError. */
export function decodeReply(line: string): ControlResult {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new IbnbdError('EPROTO', `reply is not JSON: ${quoteForMessage(line)}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new IbnbdError('EPROTO', 'reply is not a JSON object');
  }
  const reply = value as Record<string, unknown>;
  if (reply.ok === true) {
    const { ok: _ok, ...result } = reply;
    return result;
  }
  const error = reply.error as { code?: unknown; message?: unknown } | undefined;
  if (reply.ok === false && typeof error === 'object' && error !== null) {
    const code = isErrnoName(error.code) ? error.code : 'EIO';
    throw new IbnbdError(code, typeof error.message === 'string' ? error.message : String(error.code));
  }
  throw new IbnbdError('EPROTO', 'reply has neither "ok":true nor an error');
}
