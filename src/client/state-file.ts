// The client daemon's state file (docs/client.md, "Mappings across restarts"): every mapping, so
// a restarted daemon serves each one again on the same socket. <state-dir>/mappings.json, written
// whole and atomically (a temporary file written and fsynced, renamed over the old one, then the
// directory fsynced) before a map or unmap is acknowledged. The file is read back as untrusted
// input: a file that cannot be used is moved aside (never deleted) and named in the report, and
// each mapping is checked on its own, so one bad entry costs only itself.
import { mkdir, open, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { IbnbdError, toIbnbdError } from '../errors.js';
import { MAPPING_NAME_PATTERN, parseMapString, type MapRequest } from '../proto/map-string.js';

export const STATE_FORMAT = 'ibnbd-client-state';
export const STATE_VERSION = 1;
export const STATE_FILE = 'mappings.json';
/** A state file larger than this is not ours (4096 mappings of 4 KiB map strings, roughly). */
const STATE_MAX_BYTES = 16 * 1024 * 1024;

/** One mapping as the file keeps it: its name (hence its socket) and the map string it was made
 *  with, the daemon's decisions (transport, the policy) written into it. */
export interface PersistedMapping {
  name: string;
  map: string;
}

export interface LoadedState {
  mappings: { name: string; request: MapRequest }[];
  /** Entries that could not be used, with why and as they were (the rest of the file counts). */
  rejected: { entry: string; reason: string; raw: unknown }[];
  /** Where a file that could not be read at all was moved, and why; undefined when it was fine. */
  quarantined?: { path: string; reason: string };
}


export class StateFile {
  readonly path: string;
  /** Saves in order, one at a time: the last one written is the last one asked for. */
  #chain: Promise<void> = Promise.resolve();

  constructor(readonly dir: string) {
    this.path = join(dir, STATE_FILE);
  }

  /** Reads the file (none yet: no mappings). Never throws for the file's content. */
  async load(): Promise<LoadedState> {
    let text: string;
    try {
      const fh = await open(this.path, 'r');
      try {
        const st = await fh.stat();
        if (st.size > STATE_MAX_BYTES) return await this.#quarantine(`larger than ${STATE_MAX_BYTES} bytes`);
        text = await fh.readFile('utf8');
      } finally {
        await fh.close();
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { mappings: [], rejected: [] };
      throw new IbnbdError('EIO', `state file ${this.path}: ${toIbnbdError(e).message}`);
    }
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      return this.#quarantine(`not JSON (truncated or corrupt): ${(e as Error).message}`);
    }
    if (typeof doc !== 'object' || doc === null || (doc as { format?: unknown }).format !== STATE_FORMAT) {
      return this.#quarantine(`not an ${STATE_FORMAT} file`);
    }
    const version = (doc as { version?: unknown }).version;
    if (version !== STATE_VERSION) {
      const what = typeof version === 'number' && version > STATE_VERSION ? 'a newer daemon' : 'an unknown format';
      return this.#quarantine(`version ${JSON.stringify(version)} is from ${what}; this daemon reads version ${STATE_VERSION}`);
    }
    const list = (doc as { mappings?: unknown }).mappings;
    if (!Array.isArray(list)) return this.#quarantine('"mappings" is not a list');
    const out: LoadedState = { mappings: [], rejected: [] };
    const names = new Set<string>();
    for (const [i, m] of list.entries()) {
      const entry = typeof m === 'object' && m !== null && typeof (m as PersistedMapping).name === 'string' ? (m as PersistedMapping).name : `#${i}`;
      try {
        const { name, map } = (m ?? {}) as Partial<PersistedMapping>;
        if (typeof name !== 'string' || !MAPPING_NAME_PATTERN.test(name)) throw new IbnbdError('EINVAL', 'bad or missing name');
        if (names.has(name)) throw new IbnbdError('EEXIST', 'name given twice');
        if (typeof map !== 'string') throw new IbnbdError('EINVAL', 'missing map string');
        const request = parseMapString(map);
        if (request.name !== undefined && request.name !== name) throw new IbnbdError('EINVAL', `map string names '${request.name}'`);
        names.add(name);
        out.mappings.push({ name, request: { ...request, name } });
      } catch (e) {
        out.rejected.push({ entry: entry.slice(0, 80), reason: toIbnbdError(e).message, raw: m });
      }
    }
    return out;
  }

  /** Writes these mappings as the whole file, atomically and durably, after any save before. */
  save(mappings: PersistedMapping[]): Promise<void> {
    const doc = `${JSON.stringify({ format: STATE_FORMAT, version: STATE_VERSION, mappings }, null, 1)}\n`;
    const run = this.#chain.then(() => this.#write(doc));
    this.#chain = run.catch(() => undefined);
    return run;
  }

  async #write(doc: string): Promise<void> {
    const tmp = `${this.path}.tmp`;
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(doc);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.path);
      const dh = await open(this.dir, 'r');
      try {
        await dh.sync();
      } finally {
        await dh.close();
      }
    } catch (e) {
      throw new IbnbdError('EIO', `cannot write the state file ${this.path}: ${toIbnbdError(e).message}`);
    }
  }

  /** The file as it is goes aside, for a person to look at; the daemon starts with no mappings. */
  async #quarantine(reason: string): Promise<LoadedState> {
    const aside = `${this.path}.bad-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    try {
      await rename(this.path, aside);
    } catch (e) {
      throw new IbnbdError('EIO', `state file ${this.path} is unusable (${reason}) and cannot be moved aside: ${toIbnbdError(e).message}`);
    }
    return { mappings: [], rejected: [], quarantined: { path: aside, reason } };
  }
}
