// Reads tests/support/vectors/ibnbd.json (the golden IBNBD bytes, see make-ibnbd.mjs) for the tests of
// both codecs: hex with its field-separating spaces removed, u64 fields turned into bigints.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../../src/backend/native.js';
import { isErrnoName, type ErrnoName } from '../../../src/errors.js';
import type { Message } from '../../../src/proto/ibnbd.js';

export interface ValidVector { name: string; msg: Message; bytes: Buffer; version: number }
export interface AcceptedVector { name: string; msg: Message; bytes: Buffer; canonical: Buffer }
export interface MalformedVector { name: string; bytes: Buffer; errno: ErrnoName; field: string }
export interface UnencodableVector { name: string; msg: Message; version: number; errno: ErrnoName }

const U64_FIELDS = ['sector', 'nsectors'];

function toMsg(raw: Record<string, unknown>): Message {
  const m: Record<string, unknown> = { ...raw };
  for (const f of U64_FIELDS) if (typeof m[f] === 'string') m[f] = BigInt(m[f] as string);
  return m as unknown as Message;
}
function errno(s: string): ErrnoName {
  if (!isErrnoName(s)) throw new Error(`ibnbd.json: ${s} is not an errno name`);
  return s;
}
const bytes = (hex: string) => Buffer.from(hex.replace(/\s+/g, ''), 'hex');

const file = JSON.parse(readFileSync(join(projectRoot, 'tests', 'support', 'vectors', 'ibnbd.json'), 'utf8')) as {
  valid: { name: string; msg: Record<string, unknown>; hex: string; version?: number }[];
  accepted: { name: string; msg: Record<string, unknown>; hex: string; canonical: string }[];
  malformed: { name: string; hex: string; errno: string; field: string }[];
  unencodable: { name: string; msg: Record<string, unknown>; version?: number; errno: string }[];
};

export const valid: ValidVector[] = file.valid.map((v) => ({ name: v.name, msg: toMsg(v.msg), bytes: bytes(v.hex), version: v.version ?? 2 }));
export const accepted: AcceptedVector[] = file.accepted.map((v) => ({ name: v.name, msg: toMsg(v.msg), bytes: bytes(v.hex), canonical: bytes(v.canonical) }));
export const malformed: MalformedVector[] = file.malformed.map((v) => ({ name: v.name, bytes: bytes(v.hex), errno: errno(v.errno), field: v.field }));
export const unencodable: UnencodableVector[] = file.unencodable.map((v) => ({ name: v.name, msg: toMsg(v.msg), version: v.version ?? 2, errno: errno(v.errno) }));

/** A small deterministic PRNG (mulberry32) so random chunkings and mutations are reproducible. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
