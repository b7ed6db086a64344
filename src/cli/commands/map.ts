// Client-side commands: map, unmap, list and show, each one request to the client daemon's
// control socket. Everything that can be checked here is checked before any socket I/O, so a
// typo is an EINVAL from the CLI with the same message the daemon would give.
import type { Command } from 'commander';
import { IbnbdError } from '../../errors.js';
import { parseBytes } from '../../server/options.js';
import { IO_TIMEOUT_MAX, MAP_USAGE, RECONNECT_DEFAULTS, RECONNECT_DELAY_MAX, TMO_MAX, deviceIdOf, formatMapString, mapRequestFromFields, parseMapString, type MapRequest } from '../../proto/map-string.js';
import {
  addControlOptions,
  checkDeviceArg,
  formatKeyValues,
  formatTable,
  printResult,
  registerHelpTopic,
  sendRequest,
  unwrapSingle,
  type ControlOptions,
} from '../util.js';

interface MapFlags extends ControlOptions {
  sessname?: string;
  path: string[];
  devicePath?: string;
  accessMode?: string;
  ioMode?: string;
  transport?: string;
  queues?: string;
  mpPolicy?: string;
  reconnectDelay?: string;
  ctrlLossTmo?: string;
  fastIoFailTmo?: string;
  ioTimeout?: string;
  name?: string;
}

// Flag → map string key, in the order the fields are checked (so the first error is the first flag).
const FLAG_KEYS: Array<[Exclude<keyof MapFlags, keyof ControlOptions | 'path'>, string]> = [
  ['sessname', 'sessname'],
  ['devicePath', 'device_path'],
  ['accessMode', 'access_mode'],
  ['ioMode', 'io_mode'],
  ['transport', 'transport'],
  ['queues', 'queues'],
  ['mpPolicy', 'mp_policy'],
  ['reconnectDelay', 'reconnect_delay'],
  ['ctrlLossTmo', 'ctrl_loss_tmo'],
  ['fastIoFailTmo', 'fast_io_fail_tmo'],
  ['ioTimeout', 'io_timeout'],
  ['name', 'name'],
];

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** The map request of either form, validated by the same grammar the daemon uses. */
export function mapRequestOfCommandLine(words: string[], flags: MapFlags): MapRequest {
  const flagged = FLAG_KEYS.filter(([f]) => flags[f] !== undefined);
  if (words.length > 0) {
    if (flagged.length > 0 || flags.path.length > 0) {
      throw new IbnbdError('EINVAL', 'map: give either a map string or --sessname/--path/... options, not both');
    }
    // quoted as one argument or not: the words of a map string are whitespace-separated anyway
    return parseMapString(words.join(' '));
  }
  const fields: Array<[string, string]> = [];
  if (flags.sessname !== undefined) fields.push(['sessname', flags.sessname]);
  for (const p of flags.path) fields.push(['path', p]);
  for (const [flag, key] of flagged) if (flag !== 'sessname') fields.push([key, flags[flag]!]);
  return mapRequestFromFields(fields);
}

/** The "devices" array of a list result as a table (undefined: not the expected shape). */
function renderList(result: Record<string, unknown>): string | undefined {
  const devices = result.devices;
  if (!Array.isArray(devices)) return undefined;
  if (devices.length === 0) return 'no devices mapped';
  return formatTable(devices.map((d) => (typeof d === 'object' && d !== null ? d : { device: d })));
}

export function register(program: Command): void {
  registerHelpTopic(program, 'map', MAP_USAGE);

  addControlOptions(
    program
      .command('map')
      .summary('map a remote device and serve it as a vhost-user-blk socket')
      .description('Map a remote device: give the map string (see "ibnbd help map") or the same fields as options.')
      .argument('[map-string...]', 'sessname=<name> path=<[src,]dst> ... device_path=<path> ...')
      .option('--sessname <name>', 'session name')
      .option('--path <[src,]dst>', 'path to the server, repeat for multipath', collect, [])
      .option('--device-path <path>', 'device on the server, relative to its dev_search_path')
      .option('--access-mode <ro|rw|migration>', 'default rw')
      .option('--io-mode <fileio|blockio>', 'default blockio')
      .option('--transport <tcp|rdma>', 'default: rdma if the client host has an RDMA device, else tcp')
      .option('--queues <n>', 'vhost-user-blk queues offered at most, 1..16, default 16')
      .option('--mp-policy <policy>', 'round-robin|min-inflight|min-latency, default min-inflight')
      // no defaults here: absent, the client daemon's own defaults apply
      .option('--reconnect-delay <s>', `the session's longest pause between reconnect attempts, 1..${RECONNECT_DELAY_MAX} (daemon default ${RECONNECT_DEFAULTS.reconnectDelay})`)
      .option('--ctrl-loss-tmo <s>', `guest IO waits this long for a lost server, then fails; -1 = for ever, 0 = at once (RNBD), up to ${TMO_MAX} (daemon default ${RECONNECT_DEFAULTS.ctrlLossTmo})`)
      .option('--fast-io-fail-tmo <s>', `waiting IO fails after this long while reconnecting goes on; -1 = off, up to ${TMO_MAX} (daemon default ${RECONNECT_DEFAULTS.fastIoFailTmo})`)
      .option('--io-timeout <s>', `the session's paths: one with requests outstanding that completes none for this long is dead (failover, reconnect); 0 = off, up to ${IO_TIMEOUT_MAX} (daemon default ${RECONNECT_DEFAULTS.ioTimeout})`)
      .option('--name <name>', 'the mapping\'s name and socket <run-dir>/vhost/<name>.sock, kept across daemon restarts (default ibnbd<N>)')
      .addHelpText('after', `\n${MAP_USAGE}`),
  ).action(async (words: string[], flags: MapFlags) => {
    const req = mapRequestOfCommandLine(words, flags);
    const result = await sendRequest(flags, { cmd: 'map', map: formatMapString(req) });
    printResult(result, flags, (r) => (Object.keys(r).length === 0 ? `mapped ${deviceIdOf(req.devicePath)}` : formatKeyValues(unwrapSingle(r))));
  });

  addControlOptions(
    program
      .command('unmap')
      .summary('unmap a device')
      .description('Unmap a device. Without --force it fails with EBUSY while a VM is attached; with --force in-flight I/O fails.')
      .argument('<device>', 'the mapping name or device_id')
      .option('--force', 'unmap even while in use', false),
  ).action(async (device: string, flags: ControlOptions & { force: boolean }) => {
    const result = await sendRequest(flags, { cmd: 'unmap', device: checkDeviceArg(device), force: flags.force });
    printResult(result, flags, (r) => (Object.keys(r).length === 0 ? `unmapped ${device}` : formatKeyValues(r)));
  });

  addControlOptions(
    program
      .command('resize')
      .summary('give a mapped device a new size; the guest is told')
      .description(
        "Resize a mapped device while its VM runs: to the size the server now reports (a grown file or device), or to --size, never beyond the server's. " +
          'The VM is told through its vhost-user back-end channel and sees the new capacity at once. A shrink below what the guest has written is EBUSY unless --force.',
      )
      .argument('<device>', 'the mapping name or device_id')
      .option('--size <bytes>', "the new size (k/M/G/T suffixes; a multiple of the logical block size, at most the server's)")
      .option('--force', 'shrink even below what the guest has written', false),
  ).action(async (device: string, flags: ControlOptions & { size?: string; force: boolean }) => {
    const size = flags.size === undefined ? undefined : parseBytes('size', flags.size);
    const result = await sendRequest(flags, { cmd: 'resize', device: checkDeviceArg(device), ...(size !== undefined ? { size } : {}), force: flags.force });
    printResult(result, flags, (r) => {
      const d = (r as { device?: { name: string; from: number; to: number; frontendTold: boolean } }).device;
      return d ? `${d.name}: ${d.from} → ${d.to} bytes${d.frontendTold ? '' : ' (no front-end connected to tell)'}` : formatKeyValues(r);
    });
  });

  addControlOptions(program.command('list').summary('list mapped devices').description('List the mapped devices.')).action(
    async (flags: ControlOptions) => {
      const result = await sendRequest(flags, { cmd: 'list' });
      printResult(result, flags, (r) => renderList(r) ?? formatKeyValues(r));
    },
  );

  addControlOptions(
    program
      .command('show')
      .summary('show one mapped device')
      .description('Show the state, session, mapping_path and vhost-user socket of one mapped device.')
      .argument('<device>', 'the mapping name or device_id'),
  ).action(async (device: string, flags: ControlOptions) => {
    const result = await sendRequest(flags, { cmd: 'show', device: checkDeviceArg(device) });
    printResult(result, flags);
  });
}
