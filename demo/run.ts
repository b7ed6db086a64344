// `npm run demo`: the whole system end to end, as a user would run it.
//   1. a file-backed export  2. `ibnbd server` and `ibnbd client` on loopback
//   3. `ibnbd map` through the CLI  4. a QEMU VM on the vhost-user-blk socket writes, reads back
//   and shows its view of the disk  5. `ibnbd unmap`, daemons stopped, everything removed.
// Exit 0 only when the guest's data round-tripped and landed byte-exact in the server's file.
// Every process it starts is stopped on any failure or Ctrl-C.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, readSync, closeSync, rmSync, ftruncateSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../src/backend/native.js';
import { freePort } from '../harness/fixtures.js';
import { startGuest, type GuestHandle } from '../harness/qemu/harness.js';

const DISK_MIB = 256;
const PATTERN_MIB = 32;
const cli = join(projectRoot, 'bin', 'ibnbd.js');
const children: ChildProcess[] = [];
let guest: GuestHandle | undefined;
let work = '';

function step(text: string): void {
  process.stdout.write(`\n==> ${text}\n`);
}
function info(text: string): void {
  process.stdout.write(`    ${text}\n`);
}

/** A daemon's JSON log line as "level: message" (docs/operations.md, "Logs"); other text as is. */
function readable(line: string): string {
  try {
    const e = JSON.parse(line) as { level?: string; msg?: string };
    if (typeof e.msg === 'string') return `${e.level ?? '?'}: ${e.msg}`;
  } catch {
    // not a log line
  }
  return line;
}

function daemon(name: string, args: string[]): ChildProcess {
  const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'inherit', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => {
    for (const line of d.toString().split('\n')) if (line) process.stdout.write(`    [${name}] ${readable(line)}\n`);
  });
  children.push(child);
  return child;
}

function ibnbd(args: string[]): string {
  info(`$ ibnbd ${args.map((a) => (/\s/.test(a) ? `"${a}"` : a)).join(' ')}`);
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`ibnbd ${args[0]} failed (${r.status}): ${r.stderr.trim()}`);
  return r.stdout;
}

async function waitFor(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function stopChild(c: ChildProcess, timeoutMs = 10_000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    c.kill('SIGTERM');
  });
}

async function cleanup(): Promise<void> {
  if (guest) await guest.kill().catch(() => undefined);
  for (const c of children.reverse()) await stopChild(c);
  if (work) rmSync(work, { recursive: true, force: true });
}

function md5OfFile(path: string, bytes: number): string {
  const fd = openSync(path, 'r');
  const h = createHash('md5');
  const buf = Buffer.alloc(1 << 20);
  let done = 0;
  while (done < bytes) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, bytes - done), done);
    if (n <= 0) break;
    h.update(buf.subarray(0, n));
    done += n;
  }
  closeSync(fd);
  return h.digest('hex');
}

const GUEST_SCRIPT = `
set -e
d=/sys/block/vda
echo "guest: /dev/vda $(cat $d/size) sectors of 512 B = $(( $(cat $d/size) / 2048 )) MiB"
echo "guest: logical block $(cat $d/queue/logical_block_size) B, physical $(cat $d/queue/physical_block_size) B, read-only $(cat $d/ro)"
echo "guest: serial '$(cat $d/serial 2>/dev/null)', queues $(ls $d/mq | wc -l), discard max $(cat $d/queue/discard_max_bytes) B"
dd if=/dev/urandom of=/tmp/pattern bs=1M count=${PATTERN_MIB} 2>/dev/null
# throughput from the guest's own clock (/proc/uptime, 10 ms resolution)
rate() { awk -v a="$1" -v b="$2" -v m=${PATTERN_MIB} 'BEGIN { t = b - a; if (t <= 0) t = 0.01; printf "%.1f MiB/s (%d MiB in %.2f s)", m / t, m, t }'; }
now() { cut -d' ' -f1 /proc/uptime; }
echo "guest: writing ${PATTERN_MIB} MiB with O_DIRECT"
t0=$(now); dd if=/tmp/pattern of=/dev/vda bs=1M oflag=direct 2>/dev/null; t1=$(now)
echo "guest: write throughput $(rate $t0 $t1)"
sync
echo 3 > /proc/sys/vm/drop_caches
echo "guest: reading it back with O_DIRECT"
t0=$(now); dd if=/dev/vda of=/tmp/back bs=1M count=${PATTERN_MIB} iflag=direct 2>/dev/null; t1=$(now)
echo "guest: read throughput $(rate $t0 $t1)"
cmp /tmp/pattern /tmp/back
echo "guest: data verified, md5 $(md5sum /tmp/back | cut -d' ' -f1)"
`;

async function main(): Promise<void> {
  work = mkdtempSync(join(tmpdir(), 'ibnbd-demo-'));
  const exportsDir = join(work, 'exports');
  const runDir = join(work, 'run');
  const serverSock = join(work, 'server.sock');
  const clientSock = join(work, 'client.sock');
  spawnSync('mkdir', ['-p', exportsDir]);

  step(`creating a ${DISK_MIB} MiB file-backed device`);
  const image = join(exportsDir, 'disk0.img');
  const fd = openSync(image, 'w');
  ftruncateSync(fd, DISK_MIB << 20);
  closeSync(fd);
  info(image);

  step('starting the export server and the client daemon on loopback');
  const port = await freePort();
  daemon('server', ['server', '--listen', `127.0.0.1:${port}`, '--dev-search-path', exportsDir, '--control', serverSock]);
  daemon('client', ['client', '--control', clientSock, '--run-dir', runDir, '--state-dir', join(runDir, 'state')]);
  await waitFor('the daemons\' control sockets', () => existsSync(serverSock) && existsSync(clientSock), 20_000);

  step('mapping the device through the CLI');
  const mapString = `sessname=demo path=ip:127.0.0.1:${port} device_path=disk0.img`;
  const mapped = JSON.parse(ibnbd(['map', mapString, '--control', clientSock, '--json'])) as {
    device: { name: string; socket: string; device_id: string; size: number };
  };
  info(`${mapped.device.name}: vhost-user-blk socket ${mapped.device.socket}, ${mapped.device.size >> 20} MiB`);
  process.stdout.write(ibnbd(['list', '--control', clientSock]).replace(/^/gm, '    '));
  process.stdout.write(ibnbd(['server', 'devices', '--control', serverSock]).replace(/^/gm, '    '));

  step('booting a VM (QEMU, TCG) with the mapped device as its virtio-blk disk');
  guest = await startGuest({
    disks: [{ socket: mapped.device.socket }],
    script: GUEST_SCRIPT,
    timeoutMs: 180_000,
    onSerialLine: (line) => {
      if (line.startsWith('guest:')) info(line);
    },
  });
  const result = await guest.exited;
  guest = undefined;
  if (result.exitCode !== 0) {
    throw new Error(`the guest script failed (exit ${result.exitCode}${result.timedOut ? ', timed out' : ''}):\n${result.output}`);
  }
  info(`VM booted, ran and powered off in ${(result.durationMs / 1000).toFixed(1)} s`);

  step('checking the bytes on the server side');
  const guestMd5 = /data verified, md5 ([0-9a-f]{32})/.exec(result.output)?.[1];
  const fileMd5 = md5OfFile(image, PATTERN_MIB << 20);
  info(`guest md5 ${guestMd5}, server file md5 ${fileMd5}`);
  if (guestMd5 !== fileMd5) throw new Error('the server file does not hold what the guest wrote');

  step('unmapping and stopping');
  ibnbd(['unmap', mapped.device.name, '--control', clientSock]);
  for (const c of children.reverse()) await stopChild(c);
  children.length = 0;
  const left = existsSync(join(runDir, 'vhost')) ? readdirSync(join(runDir, 'vhost')) : [];
  if (left.length > 0) throw new Error(`sockets left behind: ${left.join(', ')}`);
  info('daemons stopped, sockets removed');
  step('demo OK: the VM\'s data round-tripped through ibnbd-vhost');
}

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    process.stdout.write(`\n${sig}: stopping everything\n`);
    void cleanup().then(() => process.exit(130));
  });
}

main()
  .then(async () => {
    await cleanup();
    process.exit(0);
  })
  .catch(async (e: unknown) => {
    process.stdout.write(`\ndemo FAILED: ${e instanceof Error ? e.message : String(e)}\n`);
    await cleanup();
    process.exit(1);
  });
