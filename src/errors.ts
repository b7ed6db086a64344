// One error type for the whole project: a stable errno-name code (EINVAL, EEXIST, ENOENT, EBUSY,
// EIO, EPERM, EPROTO, ...) and a message. Native code throws errors with the same .code
// (native/common/errors.h); toIbnbdError() adopts them.
import { constants } from 'node:os';

export type ErrnoName = keyof typeof constants.errno;

export class IbnbdError extends Error {
  readonly code: ErrnoName;
  readonly errno: number;

  constructor(code: ErrnoName, message: string) {
    super(message);
    this.name = 'IbnbdError';
    this.code = code;
    this.errno = -(constants.errno[code] ?? 0);
  }

  override toString(): string {
    return `${this.code}: ${this.message}`;
  }
}

export function isErrnoName(s: unknown): s is ErrnoName {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(constants.errno, s);
}

/** Errno number (positive or negative) → name, e.g. 22 → "EINVAL". */
export function errnoName(n: number): ErrnoName | `E${number}` {
  const abs = Math.abs(n);
  for (const [name, value] of Object.entries(constants.errno)) if (value === abs) return name as ErrnoName;
  return `E${abs}`;
}

export function toIbnbdError(e: unknown): IbnbdError {
  if (e instanceof IbnbdError) return e;
  const err = e as { code?: unknown; message?: unknown };
  if (err && isErrnoName(err.code)) {
    const msg = String(err.message ?? '').replace(new RegExp(`^${err.code}: `), '');
    return new IbnbdError(err.code, msg);
  }
  return new IbnbdError('EIO', String(err?.message ?? e));
}

/** The message of anything thrown, for logs and reasons. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
