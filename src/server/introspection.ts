// The server's introspection tree: IBNBD's server sysfs layout (docs/server.md, "Introspection")
//   devices/<device_name>/block_dev
//   devices/<device_name>/sessions/<sessname>/{read_only,mapping_path}
// plus, per session, its paths (client addresses), device ids and in-flight counts. Plain data
// (what the control socket sends as JSON) and a text rendering in the same path: value form.
import type { ExportSession } from './session.js';
import type { ExportTable } from './exports.js';

export interface DeviceSessionEntry {
  sessname: string;
  read_only: 0 | 1;
  mapping_path: string;
  device_id: number;
  access_mode: string;
  io_mode: string;
}

export interface DeviceEntry {
  name: string;
  block_dev: string;
  type: 'block' | 'file';
  size_bytes: number;
  /** opens of this device across all sessions (ro ones too): the export closes with the last */
  opens: number;
  /** opens that count against "rw only once" (rw and migration) */
  writers: number;
  sessions: DeviceSessionEntry[];
}

export interface SessionPathEntry {
  src: string;
  dst: string;
  state: string;
  inflight: number;
}

export interface SessionDeviceEntry {
  device_id: number;
  device_name: string;
  mapping_path: string;
  access_mode: string;
  io_mode: string;
  read_only: 0 | 1;
  inflight: number;
}

export interface SessionEntry {
  sessname: string;
  id: string;
  ver: number | null;
  paths: SessionPathEntry[];
  devices: SessionDeviceEntry[];
  /** ids force-closed on the server and not yet CLOSEd by the client */
  closed_ids: number[];
}

/** In-flight IO per (session, device id), from the native data path. */
export type InflightOf = (sessionId: string, deviceId: number) => number;

export function devicesTree(exports: ExportTable): DeviceEntry[] {
  return exports
    .list()
    .map((exp) => ({
      name: exp.name,
      block_dev: exp.realPath,
      type: exp.blockDevice ? ('block' as const) : ('file' as const),
      size_bytes: exp.geometry?.sizeBytes ?? 0,
      opens: exp.refs,
      writers: exp.access.writers,
      sessions: [...exp.holders.values()]
        .map((h) => ({
          sessname: h.sessname,
          read_only: h.mode === 'ro' ? (1 as const) : (0 as const),
          mapping_path: h.mappingPath,
          device_id: h.deviceId,
          access_mode: h.mode,
          io_mode: h.ioMode,
        }))
        .sort((a, b) => a.sessname.localeCompare(b.sessname)),
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

export function sessionsTree(
  sessions: Iterable<ExportSession>,
  inflightOf: InflightOf,
  pathsOf: (s: ExportSession) => SessionPathEntry[],
): SessionEntry[] {
  return [...sessions]
    .map((s) => ({
      sessname: s.sessname,
      id: s.id,
      ver: s.ver,
      paths: pathsOf(s),
      devices: [...s.devices.values()]
        .map((d) => ({
          device_id: d.deviceId,
          device_name: d.exp.name,
          mapping_path: d.mappingPath,
          access_mode: d.mode,
          io_mode: d.ioMode,
          read_only: d.mode === 'ro' ? (1 as const) : (0 as const),
          inflight: inflightOf(s.id, d.deviceId),
        }))
        .sort((a, b) => a.device_id - b.device_id),
      closed_ids: [...s.reservedIds].sort((a, b) => a - b),
    }))
    .sort((a, b) => a.sessname.localeCompare(b.sessname) || a.id.localeCompare(b.id));
}

/** The devices tree as sysfs-like lines: `devices/loop0/sessions/blya/read_only: 0`. */
export function renderDevices(tree: DeviceEntry[]): string {
  const out: string[] = [];
  for (const d of tree) {
    out.push(`devices/${d.name}/block_dev: ${d.block_dev}`);
    for (const s of d.sessions) {
      const base = `devices/${d.name}/sessions/${s.sessname}`;
      out.push(`${base}/read_only: ${s.read_only}`);
      out.push(`${base}/mapping_path: ${s.mapping_path}`);
    }
  }
  return out.join('\n');
}

/** The sessions tree as lines: paths, then each device id with its mapping and in-flight count;
 *  then the daemon's IO threads, when the answer has them (poll_us, polls, poll_hits). */
export function renderSessions(tree: SessionEntry[], ioThreads?: Record<string, number>): string {
  const out: string[] = [];
  for (const s of tree) {
    const base = `sessions/${s.sessname}`;
    out.push(`${base}/ver: ${s.ver ?? '-'}`);
    s.paths.forEach((p, i) => out.push(`${base}/paths/${i}: ${p.src} -> ${p.dst} ${p.state} inflight=${p.inflight}`));
    for (const d of s.devices) {
      out.push(
        `${base}/devices/${d.device_id}: ${d.device_name} mapping_path=${d.mapping_path} ` +
          `access_mode=${d.access_mode} io_mode=${d.io_mode} inflight=${d.inflight}`,
      );
    }
    for (const id of s.closed_ids) out.push(`${base}/devices/${id}: force-closed`);
  }
  for (const [k, v] of Object.entries(ioThreads ?? {})) out.push(`io_threads/${k}: ${v}`);
  return out.join('\n');
}
