// The host's side of harness/guest/verify-writer.c: the binary as an initramfs file, its console
// lines parsed, and its blocks read back from the server's file (the block format is described at
// the top of the C source; a change there must be made here too).
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import type { GuestFile } from './initramfs.js';
import { guestTool } from './static-tool.js';

export const VW_BLOCK = 4096;
const MAGIC = 0x31425756;

/** The static verify-writer for GuestOptions.files, at /bin/verify-writer in the guest. */
export function verifyWriterFile(): GuestFile {
  return { path: 'bin/verify-writer', data: readFileSync(guestTool('verify-writer')), mode: 0o755 };
}

export interface VwCounts {
  /** VW (progress), VW-STOP or VW-FINAL */
  tag: string;
  t?: number;
  writes: number;
  reads: number;
  errors: number;
  mismatches: number;
  blocks?: number;
  digest?: string;
}

/** A progress or final line of the verifier; undefined for any other line. */
export function parseVwLine(line: string): VwCounts | undefined {
  const m = /^(VW|VW-STOP|VW-FINAL) (.*)$/.exec(line.trim());
  if (!m) return undefined;
  const kv = new Map(m[2].split(' ').map((w) => w.split('=') as [string, string]));
  const num = (k: string) => (kv.has(k) ? Number(kv.get(k)) : undefined);
  const writes = num('writes'), reads = num('reads'), errors = num('errors'), mismatches = num('mismatches');
  if (writes === undefined || reads === undefined || errors === undefined || mismatches === undefined) return undefined;
  return { tag: m[1], t: num('t'), writes, reads, errors, mismatches, blocks: num('blocks'), digest: kv.get('digest') };
}

function fnv1a32(b: Buffer, start: number, end: number): number {
  let h = 0x811c9dc5;
  for (let i = start; i < end; i++) h = Math.imul(h ^ b[i], 0x01000193) >>> 0;
  return h >>> 0;
}

export interface VwFileCheck {
  /** FNV-1a 64 of the generations, as VW-FINAL prints it */
  digest: string;
  /** blocks whose magic, index, seed or checksum is wrong (at most 20 listed) */
  bad: string[];
  badCount: number;
}

/** Reads blocks [0, nblocks) of a file (the server's export) as the verifier wrote them. */
export function checkVerifierBlocks(path: string, nblocks: number, seed: bigint): VwFileCheck {
  const fd = openSync(path, 'r');
  const buf = Buffer.alloc(VW_BLOCK);
  let digest = 0xcbf29ce484222325n;
  const bad: string[] = [];
  let badCount = 0;
  try {
    for (let b = 0; b < nblocks; b++) {
      readSync(fd, buf, 0, VW_BLOCK, b * VW_BLOCK);
      const why = [
        buf.readUInt32LE(0) !== MAGIC && 'magic',
        buf.readBigUInt64LE(8) !== BigInt(b) && 'index',
        buf.readBigUInt64LE(24) !== seed && 'seed',
        fnv1a32(buf, 0, VW_BLOCK - 4) !== buf.readUInt32LE(VW_BLOCK - 4) && 'checksum',
      ].filter(Boolean);
      if (why.length > 0 && badCount++ < 20) bad.push(`block ${b}: ${why.join(',')}`);
      // the generation's 8 bytes (offset 16), as the guest hashes its table
      for (let i = 16; i < 24; i++) digest = BigInt.asUintN(64, (digest ^ BigInt(buf[i])) * 0x100000001b3n);
    }
  } finally {
    closeSync(fd);
  }
  return { digest: digest.toString(16).padStart(16, '0'), bad, badCount };
}

/**
 * The guest script of a migration run: fill `blocks` blocks with generation 1, run the verifier
 * with `threads` threads in the background, mark "running", and on the host's "stop" line mark
 * "stopping", stop it and exit with its status (it reads every block back first).
 */
export function verifyWriterScript(blocks: number, seed: bigint | number, threads = 8): string {
  return `
verify-writer fill /dev/vda ${blocks} ${seed} || exit 10
verify-writer run /dev/vda ${blocks} ${seed} /tmp/stop ${threads} &
vw=$!
mark running
host_wait stop
mark stopping
touch /tmp/stop
wait $vw
rc=$?
echo "vw-exit=$rc"
exit $rc
`;
}
