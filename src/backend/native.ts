// Loads the native addon (native/build/<config>/ibnbd.node). Release by default; the sanitizer
// build (ASan + UBSan, node-gyp's Debug configuration) when IBNBD_SANITIZE=1. Each component has
// its own typed view of the exports in its own file; this file only finds and loads the binary.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);

/** The repository root, found from this file whether it runs from src/ (tsx) or dist/src/. */
export const projectRoot: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('ibnbd-vhost: package.json not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
})();

export const sanitizerBuild = process.env.IBNBD_SANITIZE === '1';

export function nativeAddonPath(): string {
  return join(projectRoot, 'native', 'build', sanitizerBuild ? 'Debug' : 'Release', 'ibnbd.node');
}

let cached: Record<string, unknown> | undefined;

/** The raw exports of ibnbd.node; components cast them to their own interfaces. */
export function loadNative<T = Record<string, unknown>>(): T {
  if (!cached) {
    const path = nativeAddonPath();
    if (!existsSync(path)) {
      // a checkout builds with npm; an installed package built it in its install step (scripts/install.sh)
      const how = existsSync(join(projectRoot, '.git')) ? '`npm run build`' : '`npm rebuild -g ibnbd-vhost` (with the --prefix it was installed under)';
      throw new Error(`ibnbd-vhost: native addon not built (${path}); run ${how}`);
    }
    cached = require(path) as Record<string, unknown>;
  }
  return cached as T;
}

export interface BuildInfo {
  libvhostUser: string;
  libibverbs: string;
  librdmacm: string;
  liburing: string;
  napiVersion: number;
  sanitize: boolean;
}

export interface LinkProbe {
  ibvDevices: number;
  ibvErrno: number;
  rdmaCmChannel: boolean;
  rdmaCmErrno: number;
  uringInit: number;
  vuInit: boolean;
}

export function buildInfo(): BuildInfo {
  return loadNative<{ buildInfo(): BuildInfo }>().buildInfo();
}

export function linkProbe(): LinkProbe {
  return loadNative<{ linkProbe(): LinkProbe }>().linkProbe();
}
