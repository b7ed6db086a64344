// The guest RAM size the harness gives QEMU: -m and the memory backend must agree (QEMU refuses
// to start otherwise), and a guest that live-migrates gets a size QEMU 7.2's TCG syncs page by
// page (GuestOptions.tcgMigrationRam, docs/migration.md "Lost guest stores under TCG").
import test from 'ava';
import { qemuArgs, type QemuArgsInput } from '../../harness/qemu/qemu-args.js';
import { parseBytes } from '../../src/server/options.js';

const base: QemuArgsInput = {
  kernel: '/k', initrd: '/i', memMiB: 256, controlSocket: '/c.sock', disks: [], hostRoot: false, shares: [], net: false,
};

function ramSizes(a: QemuArgsInput): { machine: number; backend: number } {
  const args = qemuArgs(a);
  const backend = args.find((x) => x.startsWith('memory-backend-memfd,'))!;
  // QEMU's K and M suffixes are powers of 1024, as the server's byte options
  return { machine: parseBytes('-m', args[args.indexOf('-m') + 1]), backend: parseBytes('size', /size=([^,]+)/.exec(backend)![1]) };
}

test('by default guest RAM is memMiB, the same for -m and the memory backend', (t) => {
  t.deepEqual(ramSizes(base), { machine: 256 << 20, backend: 256 << 20 });
});

test('a guest that live-migrates under TCG gets RAM off the 256 KiB alignment of QEMU 7.2\'s word-wise dirty sync', (t) => {
  const { machine, backend } = ramSizes({ ...base, ramPlus8K: true });
  t.is(machine, backend, '-m and the backend agree');
  t.is(machine, (256 << 20) + 8192);
  t.is(machine % 8192, 0, 'QEMU rounds -m up to 8 KiB: this size is kept as given');
  t.not(machine % (64 * 4096), 0, 'not a whole number of 64-page bitmap words');
});
