// IBNBD's map_device grammar (docs/client.md, "The map string"): every example of IBNBD's own
// documentation parses to what it says it means, every malformed string is an EINVAL that names
// the key at fault, and the canonical string parses back to the same request.
import test from 'ava';
import { IbnbdError } from '../../src/errors.js';
import {
  MAP_USAGE,
  deviceIdOf,
  formatMapString,
  mapRequestFromFields,
  parseMapString,
  type MapRequest,
} from '../../src/proto/map-string.js';

test('the Quick Start example: "sessname=blya path=ip:10.50.100.66 device_path=/dev/ram0"', (t) => {
  // echo appends a newline; the seed writes it to sysfs as is
  const req = parseMapString('sessname=blya path=ip:10.50.100.66 device_path=/dev/ram0\n');
  t.deepEqual(req, {
    sessname: 'blya',
    paths: [{ dst: { kind: 'ip', addr: '10.50.100.66', port: 1234 } }],
    devicePath: '/dev/ram0',
    accessMode: 'rw',
    ioMode: 'blockio',
    queues: 16,
    mpPolicy: 'min-inflight',
  });
  t.false('transport' in req, 'no transport given: the client daemon decides at map time');
});

test('"path=ip:10.0.0.66": the single addr is the destination', (t) => {
  const req = parseMapString('sessname=s path=ip:10.0.0.66 device_path=d');
  t.deepEqual(req.paths, [{ dst: { kind: 'ip', addr: '10.0.0.66', port: 1234 } }]);
});

test('"path=ip:10.0.0.66,ip:10.0.1.66": first addr is the source, second the destination', (t) => {
  const req = parseMapString('sessname=s path=ip:10.0.0.66,ip:10.0.1.66 device_path=d');
  t.deepEqual(req.paths, [
    { src: { kind: 'ip', addr: '10.0.0.66', port: 0 }, dst: { kind: 'ip', addr: '10.0.1.66', port: 1234 } },
  ]);
  // RTRS also names a path src@dst
  t.deepEqual(parseMapString('sessname=s path=ip:10.0.0.66@ip:10.0.1.66 device_path=d').paths, req.paths);
});

test('multiple "path=" options give a multipath session, in order', (t) => {
  const req = parseMapString('sessname=s path=ip:10.0.0.66 path=ip:10.0.0.67,ip:10.0.1.67 device_path=d');
  t.is(req.paths.length, 2);
  t.is(req.paths[0]!.dst.addr, '10.0.0.66');
  t.is(req.paths[1]!.src!.addr, '10.0.0.67');
});

test('"addr ::= [ ip:<ipv4> | ip:<ipv6> | gid:<gid> ]"', (t) => {
  const dst = (p: string, extra = '') => parseMapString(`sessname=s path=${p} device_path=d ${extra}`).paths[0]!.dst;
  t.deepEqual(dst('ip:192.168.1.2'), { kind: 'ip', addr: '192.168.1.2', port: 1234 });
  t.deepEqual(dst('ip:fe80::1'), { kind: 'ip', addr: 'fe80::1', port: 1234 });
  t.deepEqual(dst('ip:fe80::1%eth0'), { kind: 'ip', addr: 'fe80::1%eth0', port: 1234 });
  t.deepEqual(dst('gid:fe80:0000:0000:0000:0002:c903:0010:c0d5', 'transport=rdma'), {
    kind: 'gid', addr: 'fe80:0000:0000:0000:0002:c903:0010:c0d5', port: 1234,
  });
  t.deepEqual(dst('gid:fe80::2:c903:10:c0d5', 'transport=rdma'), { kind: 'gid', addr: 'fe80::2:c903:10:c0d5', port: 1234 });
});

test('RoCE GIDs (extension): IPv4-mapped in dotted form, a link-local GID with a %<netdev> scope', (t) => {
  const dst = (p: string) => parseMapString(`sessname=s path=${p} device_path=d transport=rdma`).paths[0]!.dst;
  t.deepEqual(dst('gid:::ffff:10.0.2.15'), { kind: 'gid', addr: '::ffff:10.0.2.15', port: 1234 });
  t.deepEqual(dst('gid:[::ffff:10.0.2.15]:4321'), { kind: 'gid', addr: '::ffff:10.0.2.15', port: 4321 });
  t.deepEqual(dst('gid:0000:0000:0000:0000:0000:ffff:0a00:020f'), { kind: 'gid', addr: '0000:0000:0000:0000:0000:ffff:0a00:020f', port: 1234 });
  t.deepEqual(dst('gid:fe80::5054:ff:fe12:3456%eth0'), { kind: 'gid', addr: 'fe80::5054:ff:fe12:3456%eth0', port: 1234 });
  t.deepEqual(dst('gid:[FEBF::1%dummy0]:7'), { kind: 'gid', addr: 'FEBF::1%dummy0', port: 7 });
  const src = parseMapString('sessname=s path=gid:fe80::1%eth1,gid:fe80::2%eth1 device_path=d transport=rdma').paths[0]!;
  t.deepEqual(src.src, { kind: 'gid', addr: 'fe80::1%eth1', port: 0 });
});

test('ports (extension): ip:<v4>:<port>, ip:[<v6>]:<port>, gid:[<gid>]:<port>', (t) => {
  const dst = (p: string, extra = '') => parseMapString(`sessname=s path=${p} device_path=d ${extra}`).paths[0]!.dst;
  t.deepEqual(dst('ip:10.0.0.1:4321'), { kind: 'ip', addr: '10.0.0.1', port: 4321 });
  t.deepEqual(dst('ip:[fe80::1]:1235'), { kind: 'ip', addr: 'fe80::1', port: 1235 });
  t.deepEqual(dst('ip:[::1]'), { kind: 'ip', addr: '::1', port: 1234 });
  t.deepEqual(dst('gid:[fe80::2:c903:10:c0d5]:99', 'transport=rdma'), { kind: 'gid', addr: 'fe80::2:c903:10:c0d5', port: 99 });
  // an unbracketed IPv6 address owns all its colons
  t.deepEqual(dst('ip:fe80::1:1234'), { kind: 'ip', addr: 'fe80::1:1234', port: 1234 });
});

test('the "Expected format" with every optional key, in any order', (t) => {
  const req = parseMapString(
    'sessname=clt_hostname-srv_hostname\tpath=ip:10.0.0.66 path=ip:10.0.0.67\n' +
      'device_path=/dev/ram0 access_mode=ro io_mode=fileio',
  );
  t.is(req.sessname, 'clt_hostname-srv_hostname');
  t.is(req.paths.length, 2);
  t.is(req.accessMode, 'ro');
  t.is(req.ioMode, 'fileio');
  t.is(parseMapString('io_mode=blockio device_path=x access_mode=migration path=ip:1.2.3.4 sessname=a').accessMode, 'migration');
});

test('the dev_search_path example "sessname=blya device_path=sda" (with a path)', (t) => {
  const req = parseMapString('sessname=blya path=ip:10.50.100.66 device_path=sda');
  t.is(req.sessname, 'blya');
  t.is(req.devicePath, 'sda');
  t.is(deviceIdOf(req.devicePath), 'sda');
});

test('extensions: transport, queues, mp_policy', (t) => {
  const req = parseMapString(
    'sessname=s path=ip:10.0.0.1 device_path=d transport=rdma queues=16 mp_policy=round-robin',
  );
  t.is(req.transport, 'rdma');
  t.is(req.queues, 16);
  t.is(req.mpPolicy, 'round-robin');
  t.is(parseMapString('sessname=s path=ip:10.0.0.1 device_path=d queues=1').queues, 1);
  t.is(parseMapString('sessname=s path=ip:1.2.3.4 device_path=d mp_policy=min-latency').mpPolicy, 'min-latency');
});

test('extensions: the reconnect policy, reconnect_delay, ctrl_loss_tmo, fast_io_fail_tmo', (t) => {
  const req = parseMapString('sessname=s path=ip:10.0.0.1 device_path=d reconnect_delay=5 ctrl_loss_tmo=120 fast_io_fail_tmo=30');
  t.is(req.reconnectDelay, 5);
  t.is(req.ctrlLossTmo, 120);
  t.is(req.fastIoFailTmo, 30);
  // absent: left to the client daemon's defaults, not filled in by the grammar
  const bare = parseMapString('sessname=s path=ip:10.0.0.1 device_path=d');
  for (const k of ['reconnectDelay', 'ctrlLossTmo', 'fastIoFailTmo', 'ioTimeout']) t.false(k in bare, k);
  const policy = (extra: string) => {
    const r = parseMapString(`sessname=s path=ip:10.0.0.1 device_path=d ${extra}`);
    return [r.reconnectDelay, r.ctrlLossTmo, r.fastIoFailTmo];
  };
  t.deepEqual(policy('reconnect_delay=1'), [1, undefined, undefined]);
  t.deepEqual(policy('reconnect_delay=3600'), [3600, undefined, undefined]);
  t.deepEqual(policy('ctrl_loss_tmo=0'), [undefined, 0, undefined], "RNBD's behaviour");
  t.deepEqual(policy('ctrl_loss_tmo=-1 fast_io_fail_tmo=86400'), [undefined, -1, 86400], 'waits for ever, fails IO after a day');
  t.deepEqual(policy('ctrl_loss_tmo=86400 fast_io_fail_tmo=-1'), [undefined, 86400, -1]);
  t.deepEqual(policy('ctrl_loss_tmo=30 fast_io_fail_tmo=30'), [undefined, 30, 30], 'fast_io_fail_tmo may equal ctrl_loss_tmo');
  t.deepEqual(policy('ctrl_loss_tmo=0 fast_io_fail_tmo=0'), [undefined, 0, 0]);
  t.deepEqual(policy('fast_io_fail_tmo=5000'), [undefined, undefined, 5000], 'alone: the daemon weighs it against its ctrl_loss_tmo');
});

test('extensions: io_timeout, seconds 0..3600, 0 = off', (t) => {
  const io = (extra: string) => parseMapString(`sessname=s path=ip:10.0.0.1 device_path=d ${extra}`).ioTimeout;
  t.is(io('io_timeout=30'), 30);
  t.is(io('io_timeout=0'), 0, 'off: heartbeats alone decide');
  t.is(io('io_timeout=1'), 1);
  t.is(io('io_timeout=3600'), 3600);
  t.is(io('reconnect_delay=5 io_timeout=10 ctrl_loss_tmo=-1'), 10, 'beside the other policy keys, in any order');
  t.is(io(''), undefined, "absent: the client daemon's default");
});

test('fast_io_fail_tmo longer than ctrl_loss_tmo: EINVAL naming both', (t) => {
  for (const s of ['ctrl_loss_tmo=10 fast_io_fail_tmo=11', 'fast_io_fail_tmo=1 ctrl_loss_tmo=0']) {
    const err = t.throws(() => parseMapString(`sessname=s path=ip:1.2.3.4 device_path=d ${s}`), { instanceOf: IbnbdError });
    t.is(err!.code, 'EINVAL');
    t.regex(err!.message, /^fast_io_fail_tmo: \d+ s is longer than ctrl_loss_tmo \(\d+ s\)/, s);
  }
});

test('sessname of 256 bytes is accepted, device_path of 255 bytes too', (t) => {
  const req = parseMapString(`sessname=${'s'.repeat(256)} path=ip:1.2.3.4 device_path=${'d'.repeat(255)}`);
  t.is(req.sessname.length, 256);
  t.is(req.devicePath.length, 255);
});

test('device_id: "/" becomes "!"', (t) => {
  t.is(deviceIdOf('/dev/ram0'), '!dev!ram0');
  t.is(deviceIdOf('sda'), 'sda');
  t.is(deviceIdOf('vg/lv/x'), 'vg!lv!x');
});

// [bad string, key the message must name]
const BAD: Array<[string, string]> = [
  ['', 'sessname'],
  ['path=ip:1.2.3.4 device_path=d', 'sessname'],
  ['sessname=s device_path=d', 'path'],
  ['sessname=s path=ip:1.2.3.4', 'device_path'],
  ['sessname= path=ip:1.2.3.4 device_path=d', 'sessname'],
  ['sessname=a/b path=ip:1.2.3.4 device_path=d', 'sessname'],
  ['sessname=. path=ip:1.2.3.4 device_path=d', 'sessname'],
  ['sessname=.. path=ip:1.2.3.4 device_path=d', 'sessname'],
  [`sessname=${'s'.repeat(257)} path=ip:1.2.3.4 device_path=d`, 'sessname'],
  ['sessname=a\0b path=ip:1.2.3.4 device_path=d', 'sessname'],
  ['sessname=a sessname=b path=ip:1.2.3.4 device_path=d', 'sessname'],
  ['sessname=s path=ip:1.2.3.4 device_path=', 'device_path'],
  [`sessname=s path=ip:1.2.3.4 device_path=${'d'.repeat(256)}`, 'device_path'],
  ['sessname=s path=ip:1.2.3.4 device_path=a\0b', 'device_path'],
  ['sessname=s path=ip:1.2.3.4 device_path=a device_path=b', 'device_path'],
  ['sessname=s path=ip:1.2.3.4 device_path=a\u0007b', 'device_path'],
  ['sessname=s path= device_path=d', 'path'],
  ['sessname=s path=10.0.0.1 device_path=d', 'path'],
  ['sessname=s path=ip:10.0.0.256 device_path=d', 'path'],
  ['sessname=s path=ip:10.0.0 device_path=d', 'path'],
  ['sessname=s path=ip:10.0.0.1:0 device_path=d', 'path'],
  ['sessname=s path=ip:10.0.0.1:65536 device_path=d', 'path'],
  ['sessname=s path=ip:10.0.0.1:12a device_path=d', 'path'],
  ['sessname=s path=ip:[10.0.0.1]:1234 device_path=d', 'path'],
  ['sessname=s path=ip:[fe80::1 device_path=d', 'path'],
  ['sessname=s path=ip:[fe80::1]x device_path=d', 'path'],
  ['sessname=s path=ip:fe80::g device_path=d', 'path'],
  ['sessname=s path=gid:fe80::1% device_path=d transport=rdma', 'path'], // empty scope
  ['sessname=s path=gid:2001:db8::1%eth0 device_path=d transport=rdma', 'path'], // scope on a global GID
  ['sessname=s path=gid:::ffff:10.0.2.15%eth0 device_path=d transport=rdma', 'path'],
  ['sessname=s path=gid:fe8::1%eth0 device_path=d transport=rdma', 'path'], // 0fe8:: is not link-local
  ['sessname=s path=gid:fe80::1%a/b device_path=d transport=rdma', 'path'],
  ['sessname=s path=gid:fe80::1%abcdefghijklmnop device_path=d transport=rdma', 'path'], // 16 > IFNAMSIZ-1
  ['sessname=s path=gid:10.0.2.15 device_path=d transport=rdma', 'path'], // IPv4 is not a GID
  ['sessname=s path=gid:1::1.2.3.4 device_path=d transport=rdma', 'path'], // dotted only IPv4-mapped
  ['sessname=s path=gid:0000:0000:0000:0000:0000:0000:0000:0000:0000 device_path=d transport=rdma', 'path'],
  ['sessname=s path=gid:fe80::1 device_path=d transport=tcp', 'path'], // gid over tcp (without transport= the daemon picks rdma)
  ['sessname=s path=eth:1.2.3.4 device_path=d', 'path'],
  ['sessname=s path=ip:1.2.3.4,ip:1.2.3.5,ip:1.2.3.6 device_path=d', 'path'],
  ['sessname=s path=ip:1.2.3.4:99,ip:1.2.3.5 device_path=d', 'path'], // source port
  ['sessname=s path=ip:1.2.3.4,ip:fe80::1 device_path=d', 'path'], // mixed families
  ['sessname=s path=ip:1.2.3.4 path=ip:1.2.3.4 device_path=d', 'path'],
  [`sessname=s ${Array.from({ length: 17 }, (_, i) => `path=ip:10.0.0.${i + 1}`).join(' ')} device_path=d`, 'path'],
  ['sessname=s path=ip:1.2.3.4 device_path=d access_mode=wo', 'access_mode'],
  ['sessname=s path=ip:1.2.3.4 device_path=d access_mode=RW', 'access_mode'],
  ['sessname=s path=ip:1.2.3.4 device_path=d access_mode=ro access_mode=rw', 'access_mode'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_mode=autoio', 'io_mode'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_mode=', 'io_mode'],
  ['sessname=s path=ip:1.2.3.4 device_path=d transport=udp', 'transport'],
  ['sessname=s path=ip:1.2.3.4 device_path=d queues=0', 'queues'],
  ['sessname=s path=ip:1.2.3.4 device_path=d queues=17', 'queues'],
  ['sessname=s path=ip:1.2.3.4 device_path=d queues=2.5', 'queues'],
  ['sessname=s path=ip:1.2.3.4 device_path=d queues=-1', 'queues'],
  ['sessname=s path=ip:1.2.3.4 device_path=d mp_policy=random', 'mp_policy'],
  ['sessname=s path=ip:1.2.3.4 device_path=d reconnect_delay=0', 'reconnect_delay'],
  ['sessname=s path=ip:1.2.3.4 device_path=d reconnect_delay=3601', 'reconnect_delay'],
  ['sessname=s path=ip:1.2.3.4 device_path=d reconnect_delay=-1', 'reconnect_delay'],
  ['sessname=s path=ip:1.2.3.4 device_path=d reconnect_delay=1.5', 'reconnect_delay'],
  ['sessname=s path=ip:1.2.3.4 device_path=d reconnect_delay=2s', 'reconnect_delay'],
  ['sessname=s path=ip:1.2.3.4 device_path=d reconnect_delay=', 'reconnect_delay'],
  ['sessname=s path=ip:1.2.3.4 device_path=d reconnect_delay=2 reconnect_delay=3', 'reconnect_delay'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_timeout=-1', 'io_timeout'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_timeout=3601', 'io_timeout'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_timeout=1.5', 'io_timeout'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_timeout=30s', 'io_timeout'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_timeout=', 'io_timeout'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_timeout=off', 'io_timeout'],
  ['sessname=s path=ip:1.2.3.4 device_path=d io_timeout=5 io_timeout=5', 'io_timeout'],
  ['sessname=s path=ip:1.2.3.4 device_path=d ctrl_loss_tmo=-2', 'ctrl_loss_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d ctrl_loss_tmo=86401', 'ctrl_loss_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d ctrl_loss_tmo=1e3', 'ctrl_loss_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d ctrl_loss_tmo=forever', 'ctrl_loss_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d ctrl_loss_tmo=-0', 'ctrl_loss_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d fast_io_fail_tmo=-2', 'fast_io_fail_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d fast_io_fail_tmo=86401', 'fast_io_fail_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d fast_io_fail_tmo=0x10', 'fast_io_fail_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d ctrl_loss_tmo=5 fast_io_fail_tmo=6', 'fast_io_fail_tmo'],
  ['sessname=s path=ip:1.2.3.4 device_path=d colour=blue', 'colour'],
  ['sessname=s path=ip:1.2.3.4 device_path=d Sessname=x', 'Sessname'],
  ['sessname=s path=ip:1.2.3.4 device_path=d rw', 'rw'],
  ['sessname=s path=ip:1.2.3.4 device_path=d =x', '=x'],
  [`sessname=s path=ip:1.2.3.4 device_path=d ${'x'.repeat(4096)}`, 'map string'],
];

for (const [bad, key] of BAD) {
  const shown = JSON.stringify(bad.length > 80 ? `${bad.slice(0, 77)}...` : bad);
  test(`EINVAL naming ${key}: ${shown}`, (t) => {
    const err = t.throws(() => parseMapString(bad), { instanceOf: IbnbdError });
    t.is(err!.code, 'EINVAL');
    t.true(err!.message.startsWith(`${key}: `), err!.message);
  });
}

test('the flag form goes through the same rules', (t) => {
  const err = t.throws(() => mapRequestFromFields([['sessname', 's'], ['path', 'ip:1.2.3.4'], ['device_path', 'a b']]));
  t.is((err as IbnbdError).code, 'EINVAL');
  t.regex(err!.message, /^device_path: /);
  t.deepEqual(
    mapRequestFromFields([['sessname', 's'], ['path', 'ip:1.2.3.4'], ['device_path', '/dev/ram0']]),
    parseMapString('sessname=s path=ip:1.2.3.4 device_path=/dev/ram0'),
  );
});

test('round trip: parse(format(x)) equals x, and defaults are left out', (t) => {
  const samples = [
    'sessname=blya path=ip:10.50.100.66 device_path=/dev/ram0',
    'sessname=s path=ip:10.0.0.66,ip:10.0.1.66 path=ip:10.0.0.67@ip:10.0.1.67:4000 device_path=vg/lv access_mode=migration io_mode=fileio',
    'sessname=s path=ip:[fe80::1%eth0]:7 path=ip:::1 device_path=d queues=4 mp_policy=min-latency',
    'sessname=s path=gid:fe80::1,gid:[fe80::2]:1234 path=gid:fe80:0000:0000:0000:0002:c903:0010:c0d5 device_path=x transport=rdma access_mode=ro',
    'sessname=s path=gid:::ffff:10.0.2.15 path=gid:[fe80::1%eth0]:4321 device_path=x transport=rdma',
    'sessname=s path=ip:10.0.0.1 device_path=d reconnect_delay=5 ctrl_loss_tmo=-1 fast_io_fail_tmo=30',
    'sessname=s path=ip:10.0.0.1 device_path=d ctrl_loss_tmo=0',
    'sessname=s path=ip:10.0.0.1 device_path=d reconnect_delay=5 io_timeout=10',
    'sessname=s path=ip:10.0.0.1 device_path=d io_timeout=0',
  ];
  for (const s of samples) {
    const req: MapRequest = parseMapString(s);
    const canonical = formatMapString(req);
    t.deepEqual(parseMapString(canonical), req, canonical);
    t.is(formatMapString(parseMapString(canonical)), canonical);
  }
  t.is(
    formatMapString(parseMapString('device_path=/dev/ram0 access_mode=rw path=ip:10.50.100.66:1234 sessname=blya')),
    'sessname=blya path=ip:10.50.100.66 device_path=/dev/ram0',
  );
  // the policy keys stay when given, even at our default values: absent means the daemon's default
  t.is(
    formatMapString(parseMapString('fast_io_fail_tmo=-1 ctrl_loss_tmo=600 reconnect_delay=2 sessname=s path=ip:10.0.0.1 device_path=d')),
    'sessname=s path=ip:10.0.0.1 device_path=d reconnect_delay=2 ctrl_loss_tmo=600 fast_io_fail_tmo=-1',
  );
  t.is(
    formatMapString(parseMapString('io_timeout=30 sessname=s path=ip:10.0.0.1 device_path=d reconnect_delay=2')),
    'sessname=s path=ip:10.0.0.1 device_path=d reconnect_delay=2 io_timeout=30',
  );
});

test('MAP_USAGE follows the seed\'s usage text and documents the extensions', (t) => {
  t.true(MAP_USAGE.startsWith('Usage: '));
  for (const piece of [
    'sessname=<name of the ibtrs session> path=<[srcaddr,]dstaddr>',
    '[path=<[srcaddr,]dstaddr>] device_path=<full path on remote side>',
    '[access_mode=<ro|rw|migration>]',
    '[io_mode=<fileio|blockio>]',
    'addr ::= [ ip:<ipv4> | ip:<ipv6> | gid:<gid> ]',
    'transport=<tcp|rdma>',
    'queues=<1..16>',
    'mp_policy=<round-robin|min-inflight|min-latency>',
    'reconnect_delay=<1..3600>',
    'ctrl_loss_tmo=<-1|0..86400>',
    'fast_io_fail_tmo=<-1|0..86400>',
    'io_timeout=<0..3600>',
    '0 = fail at once (RNBD',
  ]) {
    t.true(MAP_USAGE.includes(piece), piece);
  }
});

test('name=: a mapping name of safe characters, formatted back; anything else EINVAL naming the key', (t) => {
  const req = parseMapString('sessname=s path=ip:10.0.0.1 device_path=d name=vm-7.disk0');
  t.is(req.name, 'vm-7.disk0');
  t.deepEqual(parseMapString(formatMapString(req)), req);
  for (const bad of ['', '.hidden', '-x', 'a/b', '../x', 'x'.repeat(65), 'sp ace', 'ä']) {
    const e = t.throws(() => mapRequestFromFields([['sessname', 's'], ['path', 'ip:10.0.0.1'], ['device_path', 'd'], ['name', bad]]));
    t.true(e instanceof IbnbdError && e.code === 'EINVAL' && e.message.startsWith('name: '), `${JSON.stringify(bad)}: ${e?.message}`);
  }
});
