// The keys file of `--auth-keys` (docs/security.md), for both daemons: one session per line,
//   <sessname> <secret>                 the session's secret: at least 32 bytes, in hex or base64
//   <sessname> rdma-unauthenticated     (server only) a session let in over RDMA without a proof:
//                                       the kernel's RNBD client cannot give one
// with `#` comments and blank lines. A file readable by group or others is refused: a secret
// that every local user can read protects nothing. Every error names the file and the line.
import { readFileSync, statSync } from 'node:fs';
import { IbnbdError } from '../errors.js';
import { checkSessname } from '../proto/map-string.js';

export const MIN_SECRET_BYTES = 32;
export const MAX_SECRET_BYTES = 1024;
export const RDMA_UNAUTHENTICATED = 'rdma-unauthenticated';

export interface AuthKeys {
  /** the file they came from */
  file: string;
  secrets: Map<string, Buffer>;
  /** names let in over RDMA without a proof (server) */
  openOverRdma: Set<string>;
}

const HEX = /^(?:[0-9a-fA-F]{2})+$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** hex when it is hex, else strict base64; null when neither. */
export function decodeSecret(text: string): Buffer | null {
  if (HEX.test(text)) return Buffer.from(text, 'hex');
  if (BASE64.test(text)) return Buffer.from(text, 'base64');
  return null;
}

/** Reads and checks a keys file; `allowOpen`: whether rdma-unauthenticated lines are allowed. */
export function loadKeysFile(file: string, allowOpen: boolean): AuthKeys {
  let st;
  try {
    st = statSync(file);
  } catch (e) {
    throw new IbnbdError('ENOENT', `keys file ${file}: ${(e as Error).message}`);
  }
  if (!st.isFile()) throw new IbnbdError('EINVAL', `keys file ${file}: not a regular file`);
  if ((st.mode & 0o077) !== 0) {
    throw new IbnbdError(
      'EACCES',
      `keys file ${file} is readable or writable by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); ` +
        `make it the owner's alone: chmod 600 ${file}`,
    );
  }
  return parseKeys(readFileSync(file, 'utf8'), file, allowOpen);
}

export function parseKeys(text: string, file: string, allowOpen: boolean): AuthKeys {
  const secrets = new Map<string, Buffer>();
  const openOverRdma = new Set<string>();
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const at = `keys file ${file}, line ${i + 1}`;
    const line = raw.replace(/#.*$/, '').trim();
    if (line === '') return;
    const fields = line.split(/\s+/);
    if (fields.length !== 2) throw new IbnbdError('EINVAL', `${at}: expected "<sessname> <secret>"`);
    const [name, value] = fields as [string, string];
    try {
      checkSessname(name);
    } catch (e) {
      throw new IbnbdError('EINVAL', `${at}: ${(e as Error).message}`);
    }
    if (secrets.has(name) || openOverRdma.has(name)) throw new IbnbdError('EINVAL', `${at}: session ${name} is listed twice`);
    if (value === RDMA_UNAUTHENTICATED) {
      if (!allowOpen) throw new IbnbdError('EINVAL', `${at}: ${RDMA_UNAUTHENTICATED} is a server's entry`);
      openOverRdma.add(name);
      return;
    }
    const secret = decodeSecret(value);
    if (!secret) throw new IbnbdError('EINVAL', `${at}: the secret of ${name} is neither hex nor base64`);
    if (secret.length < MIN_SECRET_BYTES || secret.length > MAX_SECRET_BYTES) {
      throw new IbnbdError('EINVAL', `${at}: the secret of ${name} is ${secret.length} bytes; ${MIN_SECRET_BYTES}..${MAX_SECRET_BYTES} are needed`);
    }
    secrets.set(name, secret);
  });
  return { file, secrets, openOverRdma };
}
