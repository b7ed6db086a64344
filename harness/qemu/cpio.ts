// Minimal writer for the cpio "newc" format, the one the Linux initramfs unpacker reads.
// Written here rather than shelling out to cpio(1) so an archive is built from an in-memory list
// (no staging directory to create and clean up) and its bytes depend only on the entries.
import { gzipSync } from 'node:zlib';

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

function record(ino: number, mode: number, name: string, data: Buffer): Buffer[] {
  const nameBuf = Buffer.from(name + '\0');
  // fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
  // mtime is 0 so identical entries give identical archives (the cache key is the content).
  const header =
    '070701' +
    [ino, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0].map(hex8).join('');
  const head = Buffer.concat([Buffer.from(header, 'ascii'), nameBuf]);
  return [head, pad4(head.length), data, pad4(data.length)];
}

/** One gzip-compressed newc archive holding `entries` in order (parents must come first). */
export function cpioGzip(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    if (!name || name.split('/').includes('..')) throw new Error(`bad archive path: ${e.path}`);
    if (e.kind === 'dir') parts.push(...record(ino++, S_IFDIR | (e.mode ?? 0o755), name, Buffer.alloc(0)));
    else if (e.kind === 'file') parts.push(...record(ino++, S_IFREG | (e.mode ?? 0o644), name, e.data));
    else parts.push(...record(ino++, S_IFLNK | 0o777, name, Buffer.from(e.target)));
  }
  parts.push(...record(0, 0, 'TRAILER!!!', Buffer.alloc(0)));
  return gzipSync(Buffer.concat(parts), { level: 6 });
}
