// IBNBD's map_device grammar (docs/client.md, "The map string"), plus the extensions of ibnbd-vhost:
//
//   sessname=<name> path=<[src,]dst> [path=...] device_path=<path>
//   [access_mode=ro|rw|migration] [io_mode=fileio|blockio]
//   [transport=tcp|rdma] [queues=<1..16>] [mp_policy=round-robin|min-inflight|min-latency]
//   [reconnect_delay=<1..3600>] [ctrl_loss_tmo=<-1|0..86400>] [fast_io_fail_tmo=<-1|0..86400>]
//   [io_timeout=<0..3600>] [name=<mapping name>]
//
// The string is untrusted (it arrives on the control socket), so every rule is checked here and a
// violation is an EINVAL whose message starts with the key at fault ("sessname: ..."), the way a
// user fixes it. The same rules serve the CLI's flag form (mapRequestFromFields).
import { isIP } from 'node:net';
import { IbnbdError } from '../errors.js';
import type { Endpoint, MpPolicy, PathSpec, TransportKind } from '../transport/paths.js';
import { ACCESS_MODES, IO_MODES, type AccessMode, type IoMode } from './ibnbd.js';

export interface MapRequest {
  sessname: string;
  paths: PathSpec[];
  devicePath: string;
  accessMode: AccessMode;
  ioMode: IoMode;
  /** Extension: the wire under the session (TCP framing of ours, or RTRS over RDMA). Absent:
   *  the client daemon decides at map time (rdma when its host has an RDMA device, else tcp). */
  transport?: TransportKind;
  /** Extension: number of vhost-user-blk virtqueues offered to the VM. */
  queues: number;
  /** Extension: RTRS multipath policy for sessions with several paths. */
  mpPolicy: MpPolicy;
  // The reconnect policy (NVMe-oF host's names and meanings; docs/client.md, "Path loss, waiting
  // and the reconnect policy"). Absent: the client daemon's default, decided at map time, so the
  // CLI never bakes its own idea of the default into the string it sends.
  /** Extension: the longest pause in seconds between reconnect attempts of the session (a
   *  property of the session: set by the map that creates it). */
  reconnectDelay?: number;
  /** Extension: seconds guest IO waits after every path is lost before the device is closed;
   *  -1: waits for ever; 0: closed at once, IO fails (RNBD). */
  ctrlLossTmo?: number;
  /** Extension: seconds after every path is lost until waiting IO fails (the device still
   *  reconnecting); -1: off. */
  fastIoFailTmo?: number;
  /** Extension: seconds a path with requests outstanding may complete none of them before it is
   *  declared dead (failover, reconnect); 0: off. A property of the session, like reconnectDelay. */
  ioTimeout?: number;
  /** Extension: the mapping's name, hence its socket <run-dir>/vhost/<name>.sock, for its whole
   *  life (across daemon restarts). Absent: the client daemon picks ibnbd<N>, the smallest free N. */
  name?: string;
}

/** A mapping's name (the `name` key): a socket file name of a few safe characters. */
export const MAPPING_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$/;

/** RTRS_PORT / IBTRS_PORT. */
export const DEFAULT_PORT = 1234;
/** IBNBD's limit on sessname (docs/client.md, "The map string"). */
export const SESSNAME_MAX_BYTES = 256;
/** NAME_MAX: size of the dev_name field of the OPEN message. */
export const DEVICE_PATH_MAX_BYTES = 255;
/** A sysfs store is at most one page; a longer map string is certainly not a map string. */
export const MAP_STRING_MAX_BYTES = 4096;
/** Virtqueues a device offers at most, and by default: a queue costs nothing until the front-end
 *  enables it, and QEMU asks for one per vCPU unless told (docs/client.md, "Queues"). */
export const MAX_QUEUES = 16;
/** No RTRS limit, but untrusted input must be bounded: more paths than this is a typo or an attack. */
export const MAX_PATHS = 16;

export const RECONNECT_DELAY_MAX = 3600;
/** Upper bound of io_timeout (0 turns it off). */
export const IO_TIMEOUT_MAX = 3600;
/** Upper bound of ctrl_loss_tmo and fast_io_fail_tmo: a day; -1 says "for ever" / "off". */
export const TMO_MAX = 86_400;

/** The client daemon's defaults for keys of the reconnect policy absent from a map string
 *  (`ibnbd client --reconnect-delay/--ctrl-loss-tmo/--fast-io-fail-tmo/--io-timeout` change them). */
export const RECONNECT_DEFAULTS = {
  reconnectDelay: 2,
  ctrlLossTmo: 600, // NVMe-oF's default: a server restart is waited out, a dead server fails in 10 min
  fastIoFailTmo: -1,
  ioTimeout: 30, // the Linux block layer's default request timeout
} as const;

export const MAP_DEFAULTS = {
  accessMode: 'rw',
  ioMode: 'blockio',
  queues: MAX_QUEUES,
  mpPolicy: 'min-inflight', // RTRS' own default (alloc_clt)
} as const satisfies Partial<MapRequest>;

const TRANSPORTS: readonly TransportKind[] = ['tcp', 'rdma'];
const MP_POLICIES: readonly MpPolicy[] = ['round-robin', 'min-inflight', 'min-latency'];

const KNOWN_KEYS = [
  'sessname', 'path', 'device_path', 'access_mode', 'io_mode', 'transport', 'queues', 'mp_policy',
  'reconnect_delay', 'ctrl_loss_tmo', 'fast_io_fail_tmo', 'io_timeout', 'name',
] as const;
type MapKey = (typeof KNOWN_KEYS)[number];

export const MAP_USAGE = `Usage: ibnbd map "sessname=<name of the ibtrs session> path=<[srcaddr,]dstaddr>
[path=<[srcaddr,]dstaddr>] device_path=<full path on remote side>
[access_mode=<ro|rw|migration>]
[io_mode=<fileio|blockio>]
[transport=<tcp|rdma>] [queues=<1..${MAX_QUEUES}>]
[mp_policy=<round-robin|min-inflight|min-latency>]
[reconnect_delay=<1..${RECONNECT_DELAY_MAX}>] [ctrl_loss_tmo=<-1|0..${TMO_MAX}>]
[fast_io_fail_tmo=<-1|0..${TMO_MAX}>] [io_timeout=<0..${IO_TIMEOUT_MAX}>]
[name=<mapping name>]"

addr ::= [ ip:<ipv4> | ip:<ipv6> | gid:<gid> ]

Extensions of ibnbd-vhost (not in IBNBD):
  path=<srcaddr@dstaddr>      same as <srcaddr,dstaddr>
  ip:<ipv4>:<port>            destination port, default ${DEFAULT_PORT}
  ip:[<ipv6>]:<port>          (an IPv6 address takes a port only in brackets)
  gid:[<gid>]:<port>
  gid:::ffff:<ipv4>           a RoCEv2 GID written IPv4-mapped
  gid:<fe80::gid>%<netdev>    a link-local GID scoped to an interface (RoCE)
  transport=<tcp|rdma>        default: rdma when the client host has an RDMA device,
                              else tcp (decided by the client daemon at map time);
                              gid: addresses need rdma
  queues=<1..${MAX_QUEUES}>              vhost-user-blk queues offered to the VM at most,
                              default ${MAX_QUEUES} (QEMU takes one per vCPU)
  mp_policy=<...>             multipath policy, default min-inflight
  reconnect_delay=<s>         once every path is lost: the longest pause between
                              reconnect attempts (the first is at once, then 0.1 s
                              doubling up to this); a property of the session, set
                              by the map that creates it
  ctrl_loss_tmo=<s>           once every path is lost, guest IO waits this long for
                              the server, then the device is closed and IO fails;
                              -1 = wait for ever, 0 = fail at once (RNBD's behaviour)
  fast_io_fail_tmo=<s>        waiting IO fails after this long, while reconnecting
                              goes on; -1 = off; at most ctrl_loss_tmo
  io_timeout=<s>              a path with requests outstanding that completes none
                              of them for this long is declared dead (failover,
                              reconnect); 0 = off (heartbeats alone decide); a
                              property of the session, set by the map that creates it
  name=<name>                 the mapping's name and socket <run-dir>/vhost/<name>.sock,
                              kept for the mapping's life, across daemon restarts;
                              1..64 of A-Z a-z 0-9 _ . + -, not starting with one of
                              the last four; default ibnbd<N>, the smallest N free
  Absent, these four take the client daemon's defaults (ibnbd client
  --reconnect-delay, --ctrl-loss-tmo, --fast-io-fail-tmo, --io-timeout:
  ${RECONNECT_DEFAULTS.reconnectDelay}, ${RECONNECT_DEFAULTS.ctrlLossTmo}, ${RECONNECT_DEFAULTS.fastIoFailTmo}, ${RECONNECT_DEFAULTS.ioTimeout} unless changed).

Defaults: access_mode=rw io_mode=blockio.
sessname: at most ${SESSNAME_MAX_BYTES} bytes, no '/', not '.' or '..'.
device_path: at most ${DEVICE_PATH_MAX_BYTES} bytes, relative to the server's dev_search_path.
The device_id of a mapping is its device_path with every '/' replaced by '!'.
`;

function invalid(key: string, message: string): IbnbdError {
  return new IbnbdError('EINVAL', `${key}: ${message}`);
}

function byteLength(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

// Control characters (and NUL) have no business in a name and would corrupt logs and listings.
const CONTROL_CHAR = /[\u0000-\u001f\u007f]/;
const WHITESPACE = /\s/;

/** IBNBD's device_id rule (docs/client.md, "The map string"): every "/" of device_path becomes "!". */
export function deviceIdOf(devicePath: string): string {
  return devicePath.replaceAll('/', '!');
}

/** A session name by the map string's rules (EINVAL naming what is wrong); also the keys file's. */
export function checkSessname(v: string): string {
  if (v === '') throw invalid('sessname', 'empty');
  if (byteLength(v) > SESSNAME_MAX_BYTES) throw invalid('sessname', `longer than ${SESSNAME_MAX_BYTES} bytes`);
  if (v.includes('\0')) throw invalid('sessname', 'contains a NUL byte');
  if (v.includes('/')) throw invalid('sessname', "contains '/'");
  if (v === '.' || v === '..') throw invalid('sessname', `'${v}' is not a session name`);
  if (WHITESPACE.test(v) || CONTROL_CHAR.test(v)) throw invalid('sessname', 'contains whitespace or control characters');
  return v;
}

function checkDevicePath(v: string): string {
  if (v === '') throw invalid('device_path', 'empty');
  if (byteLength(v) > DEVICE_PATH_MAX_BYTES) throw invalid('device_path', `longer than ${DEVICE_PATH_MAX_BYTES} bytes`);
  if (v.includes('\0')) throw invalid('device_path', 'contains a NUL byte');
  if (WHITESPACE.test(v) || CONTROL_CHAR.test(v)) throw invalid('device_path', 'contains whitespace or control characters');
  return v;
}

function checkChoice<T extends string>(key: string, v: string, choices: readonly T[]): T {
  if ((choices as readonly string[]).includes(v)) return v as T;
  throw invalid(key, `'${v}' is not one of ${choices.join('|')}`);
}

function checkQueues(v: string): number {
  if (!/^[0-9]{1,3}$/.test(v)) throw invalid('queues', `'${v}' is not a number of queues (1..${MAX_QUEUES})`);
  const n = Number(v);
  if (n < 1 || n > MAX_QUEUES) throw invalid('queues', `${n} is out of range 1..${MAX_QUEUES}`);
  return n;
}

/** A whole number of seconds, or -1 where allowed (the "for ever" / "off" of ctrl_loss_tmo and
 *  fast_io_fail_tmo); digits only, so "1e3", "0x10" and " 5" are refused. */
function checkSeconds(key: string, v: string, min: number, max: number): number {
  const what = min < 0 ? `-1 or a number of seconds 0..${max}` : `a number of seconds ${min}..${max}`;
  if (!/^(-1|[0-9]{1,6})$/.test(v)) throw invalid(key, `'${v}' is not ${what}`);
  const n = Number(v);
  if (n < min || n > max) throw invalid(key, `${n} is out of range: ${what}`);
  return n;
}

/** fast_io_fail_tmo can fail IO only before ctrl_loss_tmo closes the device; null when they agree. */
export function policyConflict(fastIoFailTmo: number, ctrlLossTmo: number): string | null {
  if (fastIoFailTmo < 0 || ctrlLossTmo < 0 || fastIoFailTmo <= ctrlLossTmo) return null;
  return `${fastIoFailTmo} s is longer than ctrl_loss_tmo (${ctrlLossTmo} s), which closes the device (failing its IO) first`;
}

function checkPort(text: string): number {
  if (!/^[0-9]{1,5}$/.test(text)) throw invalid('path', `bad port '${text}'`);
  const port = Number(text);
  if (port < 1 || port > 65535) throw invalid('path', `port ${port} is out of range 1..65535`);
  return port;
}

// A GID is 128 bits written like an IPv6 address (full "fe80:0000:...:c0d5" or compressed
// "fe80::2:c903:10:c0d5"). On RoCE a GID is derived from an IP address, so two IP spellings are
// accepted too: a RoCEv2 GID of an IPv4 address as IPv4-mapped "::ffff:10.0.2.15", and a
// link-local GID (fe80::/10) with a "%<netdev>" scope, which RoCE needs for a GID that is not
// one of the client's own (docs/rdma-transport.md, "gid: addresses").
const GID_ZONE = /^[A-Za-z0-9_.-]{1,15}$/; // a netdev name, without the path separators , and @
function isGid(s: string): boolean {
  const pct = s.indexOf('%');
  const gid = pct < 0 ? s : s.slice(0, pct);
  if (isIP(gid) !== 6 || !/^([0-9a-fA-F:]+|::ffff:[0-9.]+)$/i.test(gid)) return false;
  return pct < 0 || (/^fe[89ab][0-9a-f]:/i.test(gid) && GID_ZONE.test(s.slice(pct + 1)));
}

/** One address of a path: "ip:<v4>[:port]", "ip:<v6>", "ip:[<v6>][:port]", "gid:<gid>", "gid:[<gid>][:port]". */
function parseEndpoint(text: string): { ep: Endpoint; explicitPort: boolean } {
  const colon = text.indexOf(':');
  const kind = text.slice(0, colon);
  if (colon < 0 || (kind !== 'ip' && kind !== 'gid')) {
    throw invalid('path', `address '${text}' must start with ip: or gid:`);
  }
  const rest = text.slice(colon + 1);
  const valid = kind === 'ip' ? (a: string) => isIP(a) !== 0 : isGid;
  let addr: string;
  let port = DEFAULT_PORT;
  let explicitPort = false;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) throw invalid('path', `address '${text}' lacks the closing ']'`);
    addr = rest.slice(1, close);
    const after = rest.slice(close + 1);
    if (kind === 'ip' && isIP(addr) !== 6) throw invalid('path', `'${addr}' in brackets is not an IPv6 address`);
    if (after !== '') {
      if (!after.startsWith(':')) throw invalid('path', `unexpected '${after}' after ']' in '${text}'`);
      port = checkPort(after.slice(1));
      explicitPort = true;
    }
  } else if (valid(rest)) {
    addr = rest; // an unbracketed IPv6/GID: every colon belongs to the address
  } else {
    const last = rest.lastIndexOf(':');
    addr = last < 0 ? rest : rest.slice(0, last);
    if (kind !== 'ip' || last < 0 || isIP(addr) !== 4) throw invalid('path', `bad ${kind} address '${rest}'`);
    port = checkPort(rest.slice(last + 1));
    explicitPort = true;
  }
  if (!valid(addr)) throw invalid('path', `bad ${kind} address '${addr}'`);
  return { ep: { kind, addr, port }, explicitPort };
}

function family(ep: Endpoint): string {
  return ep.kind === 'gid' ? 'gid' : `ipv${isIP(ep.addr)}`;
}

function checkPath(v: string): PathSpec {
  if (v === '') throw invalid('path', 'empty');
  if (WHITESPACE.test(v) || CONTROL_CHAR.test(v)) throw invalid('path', 'contains whitespace or control characters');
  const parts = v.split(/[,@]/);
  if (parts.length > 2) throw invalid('path', `'${v}' has more than a source and a destination`);
  const dst = parseEndpoint(parts[parts.length - 1]!).ep;
  if (parts.length === 1) return { dst };
  const src = parseEndpoint(parts[0]!);
  // A fixed source port would let only one connection of the session bind; the kernel has none either.
  if (src.explicitPort) throw invalid('path', `the source address '${parts[0]}' takes no port`);
  src.ep.port = 0;
  if (family(src.ep) !== family(dst)) {
    throw invalid('path', `source '${parts[0]}' and destination '${parts[1]}' are not of the same address family`);
  }
  return { src: src.ep, dst };
}

function samePath(a: PathSpec, b: PathSpec): boolean {
  const eq = (x?: Endpoint, y?: Endpoint) =>
    x === y || (!!x && !!y && x.kind === y.kind && x.addr.toLowerCase() === y.addr.toLowerCase() && x.port === y.port);
  return eq(a.src, b.src) && eq(a.dst, b.dst);
}

/**
 * Builds a MapRequest from key/value pairs in the order given (the tokens of a map string, or the
 * CLI's flags). Every key once, except path; sessname, path and device_path required.
 */
export function mapRequestFromFields(fields: Iterable<readonly [string, string]>): MapRequest {
  const seen = new Set<MapKey>();
  const paths: PathSpec[] = [];
  const req: Partial<MapRequest> = {};
  for (const [key, value] of fields) {
    if (!(KNOWN_KEYS as readonly string[]).includes(key)) {
      throw invalid(JSON.stringify(key).slice(1, -1).slice(0, 64), 'unknown key');
    }
    const k = key as MapKey;
    if (k !== 'path') {
      if (seen.has(k)) throw invalid(k, 'given more than once');
      seen.add(k);
    }
    switch (k) {
      case 'sessname': req.sessname = checkSessname(value); break;
      case 'device_path': req.devicePath = checkDevicePath(value); break;
      case 'access_mode': req.accessMode = checkChoice(k, value, ACCESS_MODES); break;
      case 'io_mode': req.ioMode = checkChoice(k, value, IO_MODES); break;
      case 'transport': req.transport = checkChoice(k, value, TRANSPORTS); break;
      case 'mp_policy': req.mpPolicy = checkChoice(k, value, MP_POLICIES); break;
      case 'queues': req.queues = checkQueues(value); break;
      case 'reconnect_delay': req.reconnectDelay = checkSeconds(k, value, 1, RECONNECT_DELAY_MAX); break;
      case 'ctrl_loss_tmo': req.ctrlLossTmo = checkSeconds(k, value, -1, TMO_MAX); break;
      case 'fast_io_fail_tmo': req.fastIoFailTmo = checkSeconds(k, value, -1, TMO_MAX); break;
      case 'io_timeout': req.ioTimeout = checkSeconds(k, value, 0, IO_TIMEOUT_MAX); break;
      case 'name':
        if (!MAPPING_NAME_PATTERN.test(value)) throw invalid(k, `'${value.slice(0, 80)}' is not 1..64 of A-Z a-z 0-9 _ . + - starting with a letter or digit`);
        req.name = value;
        break;
      case 'path': {
        const p = checkPath(value);
        if (paths.some((q) => samePath(p, q))) throw invalid('path', `'${value}' is given twice`);
        if (paths.length >= MAX_PATHS) throw invalid('path', `more than ${MAX_PATHS} paths`);
        paths.push(p);
        break;
      }
    }
  }
  if (req.sessname === undefined) throw invalid('sessname', 'missing');
  if (paths.length === 0) throw invalid('path', 'missing');
  if (req.devicePath === undefined) throw invalid('device_path', 'missing');
  const out: MapRequest = {
    sessname: req.sessname,
    paths,
    devicePath: req.devicePath,
    accessMode: req.accessMode ?? MAP_DEFAULTS.accessMode,
    ioMode: req.ioMode ?? MAP_DEFAULTS.ioMode,
    ...(req.transport ? { transport: req.transport } : {}),
    queues: req.queues ?? MAP_DEFAULTS.queues,
    mpPolicy: req.mpPolicy ?? MAP_DEFAULTS.mpPolicy,
    ...(req.reconnectDelay !== undefined ? { reconnectDelay: req.reconnectDelay } : {}),
    ...(req.ctrlLossTmo !== undefined ? { ctrlLossTmo: req.ctrlLossTmo } : {}),
    ...(req.fastIoFailTmo !== undefined ? { fastIoFailTmo: req.fastIoFailTmo } : {}),
    ...(req.ioTimeout !== undefined ? { ioTimeout: req.ioTimeout } : {}),
    ...(req.name !== undefined ? { name: req.name } : {}),
  };
  // Only when both are in the string: with one of them the daemon's default, the client daemon
  // decides (a default fast_io_fail_tmo must not make ctrl_loss_tmo=0 an error).
  if (out.fastIoFailTmo !== undefined && out.ctrlLossTmo !== undefined) {
    const conflict = policyConflict(out.fastIoFailTmo, out.ctrlLossTmo);
    if (conflict) throw invalid('fast_io_fail_tmo', `${conflict}; give fast_io_fail_tmo <= ctrl_loss_tmo, or -1 (off)`);
  }
  // GIDs name RDMA ports (InfiniBand, or RoCE's IP-derived ones): there is no TCP to them. Said
  // explicitly rather than guessed.
  if (out.transport === 'tcp' && paths.some((p) => p.dst.kind === 'gid')) {
    throw invalid('path', 'gid: addresses need transport=rdma');
  }
  return out;
}

/** Parses a map string (whitespace-separated key=value tokens, any order, trailing newline allowed). */
export function parseMapString(s: string): MapRequest {
  if (typeof s !== 'string') throw new IbnbdError('EINVAL', 'map string: not a string');
  if (byteLength(s) > MAP_STRING_MAX_BYTES) {
    throw new IbnbdError('EINVAL', `map string: longer than ${MAP_STRING_MAX_BYTES} bytes`);
  }
  const tokens = s.split(/\s+/).filter((t) => t !== '');
  const fields = tokens.map((t): [string, string] => {
    const eq = t.indexOf('=');
    if (eq <= 0) throw invalid(JSON.stringify(t).slice(1, -1).slice(0, 64), "not a key=value token");
    return [t.slice(0, eq), t.slice(eq + 1)];
  });
  return mapRequestFromFields(fields);
}

function formatEndpoint(ep: Endpoint, withPort: boolean): string {
  if (!withPort) return `${ep.kind}:${ep.addr}`;
  return ep.kind === 'ip' && isIP(ep.addr) === 4 ? `ip:${ep.addr}:${ep.port}` : `${ep.kind}:[${ep.addr}]:${ep.port}`;
}

/**
 * The canonical map string of a request: required keys first, the optional ones only when they
 * differ from the defaults, so a request using no extension formats as a string the seed accepts.
 * The reconnect policy keys appear whenever set: absent means the daemon's default, which the
 * formatter cannot know, so an explicit value equal to ours is still sent.
 */
export function formatMapString(req: MapRequest): string {
  const out = [`sessname=${req.sessname}`];
  for (const p of req.paths) {
    const dst = formatEndpoint(p.dst, p.dst.port !== DEFAULT_PORT);
    out.push(`path=${p.src ? `${formatEndpoint(p.src, false)},` : ''}${dst}`);
  }
  out.push(`device_path=${req.devicePath}`);
  if (req.accessMode !== MAP_DEFAULTS.accessMode) out.push(`access_mode=${req.accessMode}`);
  if (req.ioMode !== MAP_DEFAULTS.ioMode) out.push(`io_mode=${req.ioMode}`);
  if (req.transport) out.push(`transport=${req.transport}`);
  if (req.queues !== MAP_DEFAULTS.queues) out.push(`queues=${req.queues}`);
  if (req.mpPolicy !== MAP_DEFAULTS.mpPolicy) out.push(`mp_policy=${req.mpPolicy}`);
  if (req.reconnectDelay !== undefined) out.push(`reconnect_delay=${req.reconnectDelay}`);
  if (req.ctrlLossTmo !== undefined) out.push(`ctrl_loss_tmo=${req.ctrlLossTmo}`);
  if (req.fastIoFailTmo !== undefined) out.push(`fast_io_fail_tmo=${req.fastIoFailTmo}`);
  if (req.ioTimeout !== undefined) out.push(`io_timeout=${req.ioTimeout}`);
  if (req.name !== undefined) out.push(`name=${req.name}`);
  return out.join(' ');
}
