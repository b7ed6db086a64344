// Restoring the state file's mappings when the client daemon starts (docs/client.md, "Mappings
// across restarts"), before its control socket answers: the file read (a bad one is moved aside
// by state-file.ts), every name reserved first, then every mapping made again under its name, in
// parallel; what cannot be made yet is kept and retried (pending.ts). Entries the file holds but
// no daemon could use are written aside as they were, never dropped; each outcome is logged.
import { writeFile } from 'node:fs/promises';
import { errorText } from '../errors.js';
import type { MapRequest } from '../proto/map-string.js';
import type { MappedRequest } from './device.js';
import type { Logger } from '../logger.js';
import type { StateFile } from './state-file.js';

export interface RestoreHost {
  state: StateFile;
  /** The request with the daemon's decisions (transport, policy); throws when it cannot be. */
  resolve(req: MapRequest): MappedRequest;
  /** Reserves a name; false when taken. */
  claim(name: string): boolean;
  /** One mapping made again under its (reserved) name; throws why it could not be. */
  restoreOne(name: string, req: MappedRequest): Promise<void>;
  /** Kept, listed and retried (pending.ts). */
  keepPending(name: string, req: MappedRequest, error: unknown): void;
  /** The state file rewritten as the mappings are now. */
  persist(): Promise<void>;
}

export async function restoreMappings(log: Logger, host: RestoreHost): Promise<void> {
  const { state } = host;
  const loaded = await state.load();
  if (loaded.quarantined) {
    log.warn(`state file unusable (${loaded.quarantined.reason}); kept as ${loaded.quarantined.path}; starting with no mappings`);
  }
  if (loaded.rejected.length > 0) {
    const aside = `${state.path}.rejected-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    // as they were, with why: nothing of the user's is dropped
    await writeFile(aside, `${JSON.stringify(loaded.rejected.map((r) => ({ reason: r.reason, entry: r.raw })), null, 1)}\n`, { mode: 0o600 });
    for (const r of loaded.rejected) log.warn(`mapping ${r.entry} not restored: ${r.reason} (kept in ${aside})`, { device: r.entry });
  }
  const todo: Array<{ name: string; request: MappedRequest }> = [];
  for (const m of loaded.mappings) {
    let request: MappedRequest;
    try {
      request = host.resolve(m.request);
    } catch (e) {
      log.warn(`mapping ${m.name} not restored: ${errorText(e)}`, { device: m.name });
      continue;
    }
    if (!host.claim(m.name)) continue; // a duplicate: load() refuses those already
    todo.push({ name: m.name, request });
  }
  await Promise.all(
    todo.map(async ({ name, request }) => {
      try {
        await host.restoreOne(name, request);
        log.info(`mapping ${name} restored: ${request.devicePath} of session ${request.sessname}`, { device: name, session: request.sessname });
      } catch (e) {
        host.keepPending(name, request, e);
        log.warn(`mapping ${name} not restored yet: ${errorText(e)}; kept, retried every reconnect_delay`, { device: name, session: request.sessname });
      }
    }),
  );
  await host.persist();
}
