// The guest harness against a real vhost-user-blk backend (qemu-storage-daemon): the guest must
// see the disk with its size and queue count, and bytes it writes must land in the backing file.
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, openSync, writeSync, closeSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { guestKernel, resolveModules, runGuest, startGuest } from '../../harness/qemu/harness.js';
import { startQsd, type Qsd } from '../../harness/qemu/qsd.js';

const DISK_BYTES = 16 << 20;
const PATTERN_OFFSET = 1 << 20;
const PATTERN_BYTES = 64 << 10;

/** The bytes `yes LINE | head -c N` produces, computed on the host. */
function yesPattern(line: string, n: number): Buffer {
  return Buffer.from((line + '\n').repeat(Math.ceil(n / (line.length + 1)))).subarray(0, n);
}

interface Fixture {
  dir: string;
  file: string;
  socket: string;
  qsd: Qsd;
}

async function qsdFixture(numQueues: number): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-qh-'));
  const file = join(dir, 'disk.img');
  writeFileSync(file, '');
  truncateSync(file, DISK_BYTES);
  const socket = join(dir, 'vub.sock');
  const qsd = await startQsd({ file, socket, numQueues });
  return { dir, file, socket, qsd };
}

async function teardown(f: Fixture | undefined): Promise<void> {
  if (!f) return;
  await f.qsd.stop();
  rmSync(f.dir, { recursive: true, force: true });
}

test.serial('guest sees the vhost-user-blk disk (size, 2 queues) and O_DIRECT IO lands in the file', async (t) => {
  const f = await qsdFixture(2);
  try {
    const r = await runGuest({
      disks: [{ socket: f.socket, numQueues: 2 }],
      cpus: 2, // virtio_blk caps its queues at the vCPU count
      timeoutMs: 90_000,
      script: `
        set -e
        echo "sectors $(cat /sys/block/vda/size)"
        echo "queues $(ls /sys/block/vda/mq | wc -l)"
        yes ibnbd-harness-pattern | head -c ${PATTERN_BYTES} > /tmp/p
        dd if=/tmp/p of=/dev/vda bs=4096 seek=${PATTERN_OFFSET / 4096} oflag=direct 2>/dev/null
        dd if=/dev/vda of=/tmp/back bs=4096 skip=${PATTERN_OFFSET / 4096} count=${PATTERN_BYTES / 4096} iflag=direct 2>/dev/null
        cmp /tmp/p /tmp/back && echo readback-ok
      `,
    });
    t.log(`boot ${r.bootMs} ms, whole run ${r.durationMs} ms`);
    t.is(r.exitCode, 0, r.output);
    t.regex(r.output, new RegExp(`^sectors ${DISK_BYTES / 512}$`, 'm'));
    t.regex(r.output, /^queues 2$/m);
    t.regex(r.output, /^readback-ok$/m);
    const img = readFileSync(f.file);
    const want = yesPattern('ibnbd-harness-pattern', PATTERN_BYTES);
    t.true(img.subarray(PATTERN_OFFSET, PATTERN_OFFSET + PATTERN_BYTES).equals(want), 'pattern in the backing file');
    t.true(img.subarray(0, PATTERN_OFFSET).every((b) => b === 0), 'nothing written before the pattern');
    t.true(img.subarray(PATTERN_OFFSET + PATTERN_BYTES).every((b) => b === 0), 'nothing written after it');
  } finally {
    await teardown(f);
  }
});

test.serial('a held guest waits for the host: marks, host lines, host-side changes seen by the guest', async (t) => {
  const f = await qsdFixture(1);
  try {
    const seen: string[] = [];
    const g = await startGuest({
      disks: [{ socket: f.socket }],
      timeoutMs: 90_000,
      onSerialLine: (l) => seen.push(l),
      script: `
        dd if=/dev/zero of=/dev/vda bs=4096 count=1 2>/dev/null
        printf 'from-guest' | dd of=/dev/vda bs=4096 conv=sync oflag=direct 2>/dev/null
        mark written
        host_read word
        host_wait go
        echo "host said $word"
        dd if=/dev/vda bs=4096 skip=1 count=1 iflag=direct 2>/dev/null | head -c 9; echo
        exit 7
      `,
    });
    await g.waitForMarker('written', 60_000);
    // the guest is parked in host_read: change the disk behind its back, then let it go on
    t.is(readFileSync(f.file).subarray(0, 10).toString(), 'from-guest');
    const fd = openSync(f.file, 'r+');
    writeSync(fd, Buffer.from('from-host'), 0, 9, 4096);
    closeSync(fd);
    g.sendLine('banana');
    g.sendLine('not-yet');
    g.sendLine('go');
    const r = await g.exited;
    t.log(`boot ${r.bootMs} ms, whole run ${r.durationMs} ms`);
    t.is(r.exitCode, 7, r.serial);
    t.is(r.output, 'host said banana\nfrom-host\n');
    t.true(seen.includes('@@IBNBD-MARK written@@'), 'onSerialLine saw the mark');
    await t.throwsAsync(g.waitForMarker('never'), { code: 'EIO' });
  } finally {
    await teardown(f);
  }
});

test.serial('reconnect: the backend restarts while the guest is idle, then IO goes on', async (t) => {
  const f = await qsdFixture(1);
  let second: Qsd | undefined;
  try {
    const g = await startGuest({
      disks: [{ socket: f.socket, reconnect: true }],
      timeoutMs: 90_000,
      script: `
        printf 'before-restart' | dd of=/dev/vda bs=4096 conv=sync oflag=direct 2>/dev/null
        mark idle
        host_wait go
        printf 'after-restart' | dd of=/dev/vda bs=4096 seek=1 conv=sync oflag=direct 2>/dev/null
        dd if=/dev/vda bs=4096 count=1 iflag=direct 2>/dev/null | head -c 14; echo
      `,
    });
    await g.waitForMarker('idle', 60_000);
    await f.qsd.stop();
    rmSync(f.socket, { force: true });
    second = await startQsd({ file: f.file, socket: f.socket });
    // QEMU redials once a second (reconnect=1); IO queued before that waits in the ring
    await new Promise((r) => setTimeout(r, 1500));
    g.sendLine('go');
    const r = await g.exited;
    t.is(r.exitCode, 0, r.serial);
    t.is(r.output, 'before-restart\n');
    t.is(readFileSync(f.file).subarray(4096, 4096 + 13).toString(), 'after-restart');
  } finally {
    await second?.stop();
    await teardown(f);
  }
});

test.serial('hostroot mode runs host programs (node), writes to a writable share, and a read-only share is read-only', async (t) => {
  const share = mkdtempSync(join(tmpdir(), 'ibnbd-qh-share-'));
  const ro = mkdtempSync(join(tmpdir(), 'ibnbd-qh-ro-'));
  writeFileSync(join(ro, 'given'), 'from-host\n');
  try {
    const g = await startGuest({
      mode: 'hostroot',
      shares: [{ hostPath: share, tag: 'work' }, { hostPath: ro, tag: 'ro', readOnly: true }],
      timeoutMs: 120_000,
      // the Node running this test (the pinned one, not whatever "node" the PATH has), as every
      // guest harness starts the daemons
      script: `
        ${process.execPath} -e 'console.log("node", process.version, 6 * 7)'
        echo from-guest-root > ${share}/result
        cat ${ro}/given
        if (echo x > ${ro}/written) 2>/dev/null; then echo "ro share written"; fi
        awk '$2 == "${ro}" { print "options " $4 }' /proc/mounts
        mark ready
        host_read answer
        echo "uid $(id -u) answer $answer"
      `,
    });
    await g.waitForMarker('ready', 90_000);
    // the file is on the host already, while the guest still runs
    t.is(readFileSync(join(share, 'result'), 'utf8'), 'from-guest-root\n');
    g.sendLine('42');
    const r = await g.exited;
    t.log(`boot ${r.bootMs} ms, whole run ${r.durationMs} ms`);
    t.is(r.exitCode, 0, r.serial);
    const lines = r.output.trimEnd().split('\n');
    const options = lines.find((l) => l.startsWith('options '))?.slice(8).split(',') ?? [];
    // the guest kernel (6.1) lists cache=loose as "loose"
    t.true(options.includes('ro') && options.some((o) => o === 'loose' || o === 'cache=loose'), `read-only share mounted ro, cached: ${options.join(',')}`);
    t.deepEqual(lines.filter((l) => !l.startsWith('options ')), [`node ${process.version} 42`, 'from-host', 'uid 0 answer 42']);
    t.false(existsSync(join(ro, 'written')), 'nothing reached the host through the read-only share');
  } finally {
    rmSync(share, { recursive: true, force: true });
    rmSync(ro, { recursive: true, force: true });
  }
});

test.serial('a guest past its timeout is killed and reported as ETIMEDOUT', async (t) => {
  let pid: number | undefined;
  const e = await t.throwsAsync(
    (async () => {
      const g = await startGuest({ script: 'sleep 600', timeoutMs: 2_500 });
      pid = g.pid;
      const r = await g.exited;
      t.true(r.timedOut);
      t.is(r.exitCode, null);
      // runGuest turns the same outcome into an error
      return runGuest({ script: 'sleep 600', timeoutMs: 2_500 });
    })(),
  );
  t.is((e as { code?: string }).code, 'ETIMEDOUT');
  t.truthy(pid);
  // pid leads the process group QEMU runs in: nothing of it may be left
  t.is(spawnSync('pgrep', ['-g', String(pid)]).status, 1, 'no process left in the guest\'s group');
  t.false(existsSync(`/proc/${pid}`));
});

test('bad options are rejected with EINVAL before anything starts', async (t) => {
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 0 }), { code: 'EINVAL' });
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, disks: [{ socket: 'rel.sock' }] }), { code: 'EINVAL' });
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, disks: [{ socket: '/x.sock', numQueues: 0 }] }), {
    code: 'EINVAL',
  });
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, shares: [{ hostPath: tmpdir(), tag: 'bad tag' }] }), {
    code: 'EINVAL',
  });
  // files go to bin/ or harness/ only, never over what /init needs; QMP on an absolute path; a
  // migration destination cannot have 9p (a mounted export blocks migration)
  for (const files of [[{ path: 'etc/passwd', data: 'x' }], [{ path: 'harness/script.sh', data: 'x' }], [{ path: 'bin/a', data: 'x', mode: 0o4755 }]]) {
    await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, files }), { code: 'EINVAL' }, files[0].path);
  }
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, qmpSocket: 'qmp.sock' }), { code: 'EINVAL' });
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, cpuModel: 'max -smp 4' }), { code: 'EINVAL' });
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, incoming: 'unix:/x y' }), { code: 'EINVAL' });
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, incoming: 'defer', mode: 'hostroot' }), { code: 'EINVAL' });
  await t.throwsAsync(runGuest({ script: 'true', timeoutMs: 1000, modules: ['no_such_module_x'] }), { code: 'ENOENT' });
});

test('modules resolve from modules.dep with every dependency loaded first, in the order asked', (t) => {
  const k = guestKernel();
  const dep = new Map<string, string[]>();
  const base = (p: string) => p.slice(p.lastIndexOf('/') + 1).replace(/\.ko.*$/, '').replace(/-/g, '_');
  for (const line of readFileSync(join(k.modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const [mod, deps] = line.split(':');
    if (deps !== undefined) dep.set(base(mod), deps.trim().split(/\s+/).filter(Boolean).map(base));
  }
  // the RDMA set of docs/testing.md ("Soft-RoCE in a guest"): crc32_generic is no modules.dep
  // dependency of rdma_rxe but must come first
  const asked = ['crc32_generic', 'rdma_rxe', 'rdma_ucm', '9p', '9pnet_virtio', 'virtio_pci', 'virtio_blk'];
  const order = resolveModules(asked).map((m) => m.name);
  t.is(new Set(order).size, order.length, 'each module once');
  for (const [i, m] of order.entries()) {
    for (const d of dep.get(m) ?? []) t.true(order.indexOf(d) >= 0 && order.indexOf(d) < i, `${d} before ${m}`);
  }
  const pos = asked.map((a) => order.indexOf(a));
  t.deepEqual([...pos].sort((a, b) => a - b), pos, 'asked modules keep their order');
  t.true(order.includes('ib_core') && order.includes('netfs'));
  t.throws(() => resolveModules(['virtio_blk', 'nope_not_a_module']), { code: 'ENOENT' });
});
