// Named exports: the server's alternative to a bare search path. An operator lists what clients
// may map — a name, the file or block device behind it, read-only or not — and a client's
// device_path is then one of those names, nothing else under the filesystem (docs/server.md,
// "Named exports"). From the command line (`--export NAME=PATH`, `,ro` at the end for read-only)
// or the config file's [export] table; both become the same list here.
import { IbnbdError } from '../errors.js';
import type { AccessMode } from '../proto/ibnbd.js';
import { DEV_NAME_MAX, PATH_MAX, resolveDevicePath, resolveNamedPath, type ResolvedDevicePath } from './device-path.js';

export interface NamedExport {
  name: string;
  /** absolute; symlinks are resolved when a client opens it, as for a search path */
  path: string;
  /** every OPEN for writing is refused (EACCES); ro mappings only */
  readOnly: boolean;
}

/** name → export, in the order given */
export type ExportList = ReadonlyMap<string, NamedExport>;

const RO_SUFFIX = ',ro';

function invalid(what: string, why: string): IbnbdError {
  return new IbnbdError('EINVAL', `export ${what}: ${why}`);
}

function checked(name: string, path: unknown, readOnly: unknown): NamedExport {
  const label = JSON.stringify(name);
  // the name is what a client sends as device_path: one component, as the kernel client allows
  if (name.length === 0 || Buffer.byteLength(name) > DEV_NAME_MAX) throw invalid(label, `a name is 1..${DEV_NAME_MAX} bytes`);
  if (name.includes('/') || name.includes('\0') || name === '.' || name === '..') {
    throw invalid(label, 'a name is one path component (no "/", no NUL, not "." or "..")');
  }
  if (typeof path !== 'string') throw invalid(label, 'path must be a string');
  if (!path.startsWith('/')) throw invalid(label, `path ${JSON.stringify(path)} must be absolute`);
  if (path.includes('\0') || Buffer.byteLength(path) >= PATH_MAX) throw invalid(label, 'path is not a usable file name');
  if (readOnly !== undefined && typeof readOnly !== 'boolean') throw invalid(label, 'read-only must be true or false');
  return { name, path, readOnly: readOnly === true };
}

/** `NAME=PATH` or `NAME=PATH,ro` (the --export option) */
export function parseExportOption(s: string): NamedExport {
  const eq = s.indexOf('=');
  if (eq <= 0) throw invalid(JSON.stringify(s), 'expected NAME=PATH or NAME=PATH,ro');
  const name = s.slice(0, eq);
  let path = s.slice(eq + 1);
  const readOnly = path.endsWith(RO_SUFFIX);
  if (readOnly) path = path.slice(0, -RO_SUFFIX.length);
  return checked(name, path, readOnly);
}

/**
 * The config file's [export] table: `name = "PATH"` (read-write) or
 * `name = { path = "PATH", read-only = true }`.
 */
function fromTable(table: Record<string, unknown>): NamedExport[] {
  return Object.entries(table).map(([name, v]) => {
    if (typeof v === 'string') return checked(name, v, false);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      throw invalid(JSON.stringify(name), 'expected a path or a table { path = "...", read-only = true }');
    }
    const { path, 'read-only': readOnly, ...rest } = v as Record<string, unknown>;
    const unknown = Object.keys(rest);
    if (unknown.length) throw invalid(JSON.stringify(name), `unknown key ${JSON.stringify(unknown[0])} (path, read-only)`);
    return checked(name, path, readOnly);
  });
}

/** The list from either form: --export strings, or the file's table. Names are unique. */
export function parseExportList(raw: readonly string[] | Record<string, unknown> | undefined): ExportList {
  if (raw === undefined) return new Map();
  const entries = Array.isArray(raw) ? raw.map((s) => parseExportOption(s as string)) : fromTable(raw as Record<string, unknown>);
  const list = new Map<string, NamedExport>();
  for (const e of entries) {
    if (list.has(e.name)) throw invalid(JSON.stringify(e.name), 'listed twice');
    list.set(e.name, e);
  }
  return list;
}

/** Where a server finds what a client's device_path names. */
export interface DeviceLocator {
  exports: ExportList;
  searchPath?: string;
}

/**
 * device_path → the file to open: a named export first, then the search path. A read-only
 * export refuses every mode but ro (EACCES); a name found nowhere is ENOENT.
 */
export async function locateDevice(where: DeviceLocator, sessname: string, devName: string, mode: AccessMode): Promise<ResolvedDevicePath> {
  const named = where.exports.get(devName);
  if (named) {
    if (named.readOnly && mode !== 'ro') {
      throw new IbnbdError('EACCES', `export ${JSON.stringify(devName)} is read-only: map it with access_mode=ro`);
    }
    return resolveNamedPath(named.path);
  }
  if (where.searchPath === undefined) throw new IbnbdError('ENOENT', `no export named ${JSON.stringify(devName)}`);
  return resolveDevicePath(where.searchPath, sessname, devName);
}
