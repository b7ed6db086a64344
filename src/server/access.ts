// The "RW only once" rule (docs/protocol.md, "Access modes"; docs/server.md, "Access modes"),
// counted per exported device across all sessions. ro never counts; rw needs no writer; migration needs fewer than two, so a VM
// can be live-migrated: the source holds rw and the destination opens with migration.
import { IbnbdError } from '../errors.js';
import { ACCESS_MODES, type AccessMode } from '../proto/ibnbd.js';

/** ACCESS_MODES is indexed by the wire value of rnbd_access_mode. */
export function accessModeFromWire(v: number): AccessMode {
  const m = ACCESS_MODES[v];
  if (m === undefined) throw new IbnbdError('EINVAL', `unknown access_mode ${v}`);
  return m;
}

export function isWriter(mode: AccessMode): boolean {
  return mode !== 'ro';
}

/** Writers of one device. Not thread-shared: the JS event loop serialises every OPEN/CLOSE. */
export class WriterCount {
  #writers = 0;

  get writers(): number {
    return this.#writers;
  }

  /** Takes the permission for `mode` or throws EPERM; ro always succeeds. */
  acquire(mode: AccessMode): void {
    if (mode === 'ro') return;
    const limit = mode === 'rw' ? 1 : 2;
    if (this.#writers >= limit) {
      throw new IbnbdError(
        'EPERM',
        `${mode} refused: device already has ${this.#writers} writer${this.#writers === 1 ? '' : 's'}`,
      );
    }
    this.#writers++;
  }

  /** Gives back what acquire(mode) took. */
  release(mode: AccessMode): void {
    if (mode === 'ro') return;
    if (this.#writers === 0) throw new Error('WriterCount.release without a writer (bug)');
    this.#writers--;
  }
}
