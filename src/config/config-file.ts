// A daemon's TOML config file (docs/operations.md, "Config files"): one key per command-line
// option, the option's name without its dashes (`max-sessions = 2048`). The file is parsed by
// smol-toml; every key is then checked against the daemon's table (unknown keys, types) and its
// value by the daemon's own option checks, and every problem is reported at once, each naming
// the file, the line and the key. The command line wins over the file (cli.ts merges them).
import { readFileSync } from 'node:fs';
import { parse, TomlError } from 'smol-toml';
import { errorText, IbnbdError } from '../errors.js';

export type ConfigType = 'string' | 'integer' | 'size' | 'strings' | 'boolean' | 'table';

export interface ConfigKey {
  /** the key in the file: the command-line option without its leading dashes */
  key: string;
  /** the daemon's option property it sets */
  prop: string;
  type: ConfigType;
}

/** What a file set: values by option property, and where each came from. */
export interface ConfigValues {
  file: string;
  values: Record<string, unknown>;
  /** key → line (1-based) */
  lines: Map<string, number>;
}

/** A value's own check: throws (EINVAL, …) when the daemon would refuse it. */
export type CheckValue = (prop: string, value: unknown) => void;

function typeName(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Date) return 'a date';
  if (v !== null && typeof v === 'object') return 'a table';
  if (typeof v === 'number' || typeof v === 'bigint') return Number.isInteger(Number(v)) ? 'an integer' : 'a float';
  return `a ${typeof v}`;
}

function typeOk(type: ConfigType, v: unknown): boolean {
  switch (type) {
    case 'string': return typeof v === 'string';
    case 'integer': return (typeof v === 'number' && Number.isInteger(v)) || typeof v === 'bigint';
    case 'size': return (typeof v === 'number' && Number.isInteger(v)) || typeof v === 'bigint' || typeof v === 'string';
    case 'strings': return Array.isArray(v) && v.every((x) => typeof x === 'string');
    case 'boolean': return typeof v === 'boolean';
    case 'table': return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date);
  }
}

const EXPECTED: Record<ConfigType, string> = {
  string: 'a string',
  integer: 'an integer',
  size: 'an integer of bytes or a string such as "8G"',
  strings: 'an array of strings',
  boolean: 'true or false',
  table: 'a table',
};

/** The line a top-level key is set on (the first, as TOML allows one). */
function lineOf(text: string, key: string): number {
  const esc = key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const re = new RegExp(`^\\s*(?:${esc}|"${esc}"|'${esc}')\\s*=`);
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) if (re.test(lines[i]!)) return i + 1;
  const table = new RegExp(`^\\s*\\[\\s*(?:${esc}|"${esc}")\\s*[\\].]`);
  for (let i = 0; i < lines.length; i++) if (table.test(lines[i]!)) return i + 1;
  return 0;
}

/**
 * Reads `file` against the daemon's keys. `required`: the file was named (--config), so a missing
 * one is ENOENT; otherwise (the default path) a missing file is no config (null).
 */
export function readConfigFile(file: string, keys: readonly ConfigKey[], check: CheckValue, required: boolean): ConfigValues | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !required) return null;
    throw new IbnbdError(code === 'ENOENT' ? 'ENOENT' : code === 'EACCES' ? 'EACCES' : 'EIO', `config file ${file}: ${errorText(e)}`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (e) {
    if (e instanceof TomlError) {
      throw new IbnbdError('EINVAL', `${file}:${e.line}:${e.column}: not TOML: ${e.message.split('\n')[0]}`);
    }
    throw new IbnbdError('EINVAL', `${file}: not TOML: ${errorText(e)}`);
  }
  const byKey = new Map(keys.map((k) => [k.key, k]));
  const problems: string[] = [];
  const values: Record<string, unknown> = {};
  const lines = new Map<string, number>();
  for (const [key, raw] of Object.entries(doc)) {
    const line = lineOf(text, key);
    lines.set(key, line);
    const at = `${file}:${line}: key '${key}'`;
    const spec = byKey.get(key);
    if (!spec) {
      problems.push(`${at}: unknown key (the keys are the daemon's command-line options without their dashes)`);
      continue;
    }
    if (!typeOk(spec.type, raw)) {
      problems.push(`${at}: expected ${EXPECTED[spec.type]}, got ${typeName(raw)}`);
      continue;
    }
    const value = typeof raw === 'bigint' ? Number(raw) : raw;
    try {
      check(spec.prop, value);
    } catch (e) {
      problems.push(`${at}: ${e instanceof IbnbdError ? e.message : errorText(e)}`);
      continue;
    }
    values[spec.prop] = value;
  }
  if (problems.length) throw new IbnbdError('EINVAL', `config file ${file}:\n  ${problems.join('\n  ')}`);
  return { file, values, lines };
}
