// The Linux kernel's RTRS + RNBD modules for the guest kernel, as peers of our RDMA transport
// (LAB.md §7). Debian does not build them; they build out of tree, unchanged, from Debian's
// linux-source against the guest kernel's headers (scripts/setup.sh installs both). Built once
// and cached by kernel version and source version.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IbnbdError } from '../src/backend/errors.js';
import { cacheDir, guestKernel } from './qemu/guest-kernel.js';

export const KERNEL_RNBD_MODULES = ['rtrs-core', 'rtrs-client', 'rtrs-server', 'rnbd-client', 'rnbd-server'] as const;

/** Directory holding rtrs-core.ko … rnbd-server.ko for the guest kernel. */
export function kernelRnbdModules(): string {
  const { kver } = guestKernel();
  const series = kver.split('.').slice(0, 2).join('.');
  const tarball = `/usr/src/linux-source-${series}.tar.xz`;
  const headers = `/usr/src/linux-headers-${kver}`;
  for (const p of [tarball, headers]) {
    if (!existsSync(p)) throw new IbnbdError('ENOENT', `${p} missing: run scripts/setup.sh (linux-source / linux-headers)`);
  }
  const srcVersion = execFileSync('dpkg-query', ['-W', '-f=${Version}', `linux-source-${series}`], { encoding: 'utf8' }).trim();
  const out = join(cacheDir(), 'rnbd-kmod', `${kver}-${srcVersion}`);
  if (KERNEL_RNBD_MODULES.every((m) => existsSync(join(out, `${m}.ko`)))) return out;

  const work = mkdtempSync(join(tmpdir(), 'ibnbd-kmod-'));
  try {
    const top = `linux-source-${series}`;
    execFileSync('tar', ['-xf', tarball, '-C', work, `${top}/drivers/infiniband/ulp/rtrs`, `${top}/drivers/block/rnbd`], { timeout: 120_000 });
    const tree = join(work, 'tree');
    mkdirSync(tree);
    renameSync(join(work, top, 'drivers/infiniband/ulp/rtrs'), join(tree, 'rtrs'));
    renameSync(join(work, top, 'drivers/block/rnbd'), join(tree, 'rnbd'));
    writeFileSync(join(tree, 'Kbuild'), 'obj-m += rtrs/ rnbd/\n');
    // the in-tree Makefiles with every obj-$(CONFIG_…) made a module, rnbd finding rtrs beside it
    for (const sub of ['rtrs', 'rnbd']) {
      const mk = readFileSync(join(tree, sub, 'Makefile'), 'utf8')
        .replace(/obj-\$\(CONFIG_[A-Z_]+\)/g, 'obj-m')
        .replace('-I$(srctree)/drivers/infiniband/ulp/rtrs', '-I$(src)/../rtrs');
      writeFileSync(join(tree, sub, 'Kbuild'), mk);
      rmSync(join(tree, sub, 'Makefile'));
    }
    execFileSync('make', ['-s', '-C', headers, `M=${tree}`, 'modules', '-j2'], { timeout: 300_000, stdio: ['ignore', 'ignore', 'pipe'] });
    mkdirSync(`${out}.tmp`, { recursive: true });
    for (const sub of ['rtrs', 'rnbd']) {
      for (const f of readdirSync(join(tree, sub))) if (f.endsWith('.ko')) copyFileSync(join(tree, sub, f), join(`${out}.tmp`, f));
    }
    rmSync(out, { recursive: true, force: true });
    renameSync(`${out}.tmp`, out);
    return out;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
