// Helpers shared by every ibnbd command: the control-socket options, talking to the daemon,
// printing results (JSON or readable), and turning any failure into "ibnbd: <ERRNO>: <message>".
import { Command, CommanderError } from 'commander';
import { constants } from 'node:os';
import { IbnbdError, toIbnbdError } from '../errors.js';
import { controlRequest } from '../control/client.js';
import { DEFAULT_CLIENT_SOCKET } from '../control/paths.js';
import type { ControlResult } from '../control/protocol.js';

export interface ControlOptions {
  control: string;
  json: boolean;
  timeout: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;

function parseTimeout(v: string): number {
  if (!/^[0-9]{1,9}$/.test(v) || Number(v) === 0) {
    throw new IbnbdError('EINVAL', `--timeout: '${v}' is not a positive number of milliseconds`);
  }
  return Number(v);
}

/** --control, --json and --timeout, the options of every command that talks to a daemon. */
export function addControlOptions(cmd: Command, defaultSocket = DEFAULT_CLIENT_SOCKET): Command {
  return cmd
    .option('--control <sock>', "the daemon's control socket", defaultSocket)
    .option('--json', 'print the raw JSON result', false)
    .option('--timeout <ms>', 'give up waiting for the daemon after this long', parseTimeout, DEFAULT_TIMEOUT_MS);
}

/** One request to the daemon; its error replies are thrown as IbnbdError with the daemon's code. */
export function sendRequest(opts: ControlOptions, request: Record<string, unknown>): Promise<ControlResult> {
  return controlRequest(opts.control, request, { timeoutMs: opts.timeout });
}

/** A daemon's result on stdout: raw JSON with --json, else `render` or generic key/value lines. */
export function printResult(result: ControlResult, opts: { json: boolean }, render?: (r: ControlResult) => string): void {
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  const text = render ? render(result) : formatKeyValues(unwrapSingle(result));
  if (text !== '') process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** {"device": {...}} reads better as the device's own fields. */
export function unwrapSingle(result: ControlResult): Record<string, unknown> {
  const keys = Object.keys(result);
  const only = keys.length === 1 ? result[keys[0]!] : undefined;
  return isPlainObject(only) ? only : result;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function scalarText(v: unknown): string {
  if (v === null || v === undefined) return '-';
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.every((x) => !isPlainObject(x) && !Array.isArray(x))) return v.map(scalarText).join(', ');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** Nested objects become dotted keys, arrays of objects indexed keys: "paths[0].dst". */
export function flatten(obj: Record<string, unknown>, prefix = '', out: Array<[string, string]> = []): Array<[string, string]> {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (isPlainObject(v) && Object.keys(v).length > 0) flatten(v, key, out);
    else if (Array.isArray(v) && v.some(isPlainObject)) {
      v.forEach((el, i) => (isPlainObject(el) ? flatten(el, `${key}[${i}]`, out) : out.push([`${key}[${i}]`, scalarText(el)])));
    } else out.push([key, scalarText(v)]);
  }
  return out;
}

export function formatKeyValues(obj: Record<string, unknown>): string {
  const rows = flatten(obj);
  const width = Math.max(0, ...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${`${k}:`.padEnd(width + 1)} ${v}`).join('\n');
}

/** Rows of objects as an aligned table; columns in order of first appearance. */
export function formatTable(rows: Array<Record<string, unknown>>): string {
  const flat = rows.map((r) => new Map(flatten(r)));
  const columns: string[] = [];
  for (const r of flat) for (const k of r.keys()) if (!columns.includes(k)) columns.push(k);
  const cells = [columns, ...flat.map((r) => columns.map((c) => r.get(c) ?? '-'))];
  const widths = columns.map((_, i) => Math.max(...cells.map((row) => row[i]!.length)));
  return cells.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

/** Any failure (ours, the daemon's, commander's usage errors) as the project's error type. */
export function cliError(e: unknown): IbnbdError {
  if (e instanceof CommanderError) return new IbnbdError('EINVAL', e.message.replace(/^error: /, ''));
  return toIbnbdError(e);
}

/** "ibnbd: EINVAL: ..." — one line, whatever the message contains. */
export function errorLine(err: IbnbdError): string {
  return `ibnbd: ${err.code}: ${err.message.replace(/\s*\n\s*/g, ' ')}`;
}

/** The exit status of a failure is its errno (EINVAL → 22, ENOENT → 2), so scripts can tell them apart. */
export function exitCodeOf(err: IbnbdError): number {
  const n = constants.errno[err.code] ?? 1;
  return n >= 1 && n <= 255 ? n : 1;
}

// Extra help texts for `ibnbd help <topic>` (e.g. the map string grammar), per program.
const helpTopics = new WeakMap<Command, Map<string, string>>();

export function registerHelpTopic(program: Command, topic: string, text: string): void {
  let topics = helpTopics.get(program);
  if (!topics) helpTopics.set(program, (topics = new Map()));
  topics.set(topic, text);
}

export function helpTopic(program: Command, topic: string): string | undefined {
  return helpTopics.get(program)?.get(topic);
}

/** Checks a device argument (a mapping's name or device_id) before it goes to the daemon. */
export function checkDeviceArg(device: string): string {
  if (device === '') throw new IbnbdError('EINVAL', 'device: empty');
  if (Buffer.byteLength(device) > 255) throw new IbnbdError('EINVAL', 'device: longer than 255 bytes');
  if (/[\u0000-\u001f\u007f]/.test(device)) throw new IbnbdError('EINVAL', 'device: contains control characters');
  return device;
}
