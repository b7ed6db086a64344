// The migration scenario of tests/vm/migration.test.ts without our back-end, as a control: the
// same guest and verifier (harness/guest/verify-writer.c), migrated over QMP after 8 s of IO, on
//   qsd         qemu-storage-daemon: one block node, two vhost-user-blk exports (source, destination)
//   virtio-blk  QEMU's own virtio-blk on the file (-drive, file.locking=off): no vhost-user at all
// Each run prints one line: the verifier's final counts, or how the destination failed (its
// console is kept in DIR/fail-N.txt). RAM aligned: 256 MiB; plus-8k: 256 MiB + 8 KiB, which avoids
// QEMU 7.2's lost TCG stores (docs/migration.md, "Lost guest stores under TCG").
//   node_modules/.bin/tsc -p tsconfig.json && node dist/harness/tools/migration-control.js BACKEND [RUNS] [CPU] [RAM] [DIR]
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGuest, type GuestOptions } from '../qemu/harness.js';
import { QmpClient } from '../qemu/qmp.js';
import { parseVwLine, verifyWriterFile, verifyWriterScript } from '../qemu/verify-writer.js';

const [backend = 'qsd', runs = '10', cpu = 'max', ram = 'aligned', outDir = join(tmpdir(), 'ibnbd-migration-control')] = process.argv.slice(2);
if ((backend !== 'qsd' && backend !== 'virtio-blk') || (ram !== 'aligned' && ram !== 'plus-8k')) {
  console.error('usage: migration-control qsd|virtio-blk [RUNS] [CPU] [aligned|plus-8k] [DIR]');
  process.exit(2);
}
const BLOCKS = 4096;
const SEED = 0x5eed1234;
const SCRIPT = verifyWriterScript(BLOCKS, SEED);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function once(n: number): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'ibnbd-migctl-'));
  const file = join(dir, 'disk.img');
  writeFileSync(file, '');
  truncateSync(file, 64 << 20);
  const qsd =
    backend === 'qsd'
      ? spawn('qemu-storage-daemon', [
          '--blockdev', `driver=file,node-name=f0,filename=${file}`, '--blockdev', 'driver=raw,node-name=d0,file=f0',
          ...['a', 'b'].flatMap((e) => ['--export', `type=vhost-user-blk,id=${e},node-name=d0,addr.type=unix,addr.path=${dir}/${e}.sock,writable=on,num-queues=1`]),
        ], { stdio: 'ignore' })
      : undefined;
  while (qsd && !existsSync(`${dir}/b.sock`)) await sleep(50);
  const disk = (side: string): Partial<GuestOptions> =>
    qsd
      ? { disks: [{ socket: `${dir}/${side}.sock` }] }
      : { qemuExtraArgs: ['-drive', `file=${file},if=none,id=d0,format=raw,cache=none,file.locking=off`, '-device', 'virtio-blk-pci,drive=d0'] };
  const common = { memMiB: 256, tcgMigrationRam: ram === 'plus-8k', cpuModel: cpu, timeoutMs: 200_000, files: [verifyWriterFile()], script: SCRIPT };
  const src = await startGuest({ ...common, ...disk('a'), qmpSocket: `${dir}/qmp-a.sock` });
  const dst = await startGuest({ ...common, ...disk('b'), qmpSocket: `${dir}/qmp-b.sock`, incoming: `unix:${dir}/mig.sock` });
  try {
    const qmp = await QmpClient.connect(`${dir}/qmp-a.sock`);
    await src.waitForMarker('running', 120_000);
    await sleep(8_000);
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 1 << 30 });
    await qmp.execute('migrate', { uri: `unix:${dir}/mig.sock` });
    let q: any;
    while (!['completed', 'failed'].includes((q = await qmp.execute<any>('query-migrate')).status)) await sleep(200);
    if (q.status === 'failed') return `run ${n}: migration failed: ${q['error-desc']}`;
    await sleep(6_000);
    await qmp.execute('quit').catch(() => undefined);
    dst.sendLine('stop');
    const bound = setTimeout(() => void dst.kill(), 90_000);
    const r = await dst.exited;
    clearTimeout(bound);
    const final = r.serial.split('\n').map(parseVwLine).find((l) => l?.tag === 'VW-FINAL');
    const oops = /Kernel panic|BUG:|Oops|corruption|is not a head/.test(r.serial);
    if (!final || oops) writeFileSync(join(outDir, `fail-${backend}-${cpu}-${ram}-${n}.txt`), `qemu stderr:\n${r.qemuStderr}\n--- console:\n${r.serial}\n`);
    return `run ${n}: downtime ${q.downtime} ms; ${final ? JSON.stringify(final) : oops ? 'destination guest crashed' : 'destination guest silent'}`;
  } finally {
    await Promise.all([src.kill(), dst.kill()]);
    qsd?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

mkdirSync(outDir, { recursive: true });
console.log(`backend ${backend}, -cpu ${cpu}, RAM ${ram}, ${runs} runs; failures kept in ${outDir}`);
for (let n = 1; n <= Number(runs); n++) console.log(await once(n));
