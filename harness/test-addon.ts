// Loads the test addon (native/build/<config>/ibnbd_test.node): the bindings only tests and
// benchmarks use (the C++ IBNBD and TCP frame codecs, the buffer fence's thread check, the
// transport read benchmark). It links against the product addon, so the product is loaded first
// from the same configuration (Release, or Debug for the sanitizer job) and both share one copy
// of its objects.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadNative, projectRoot, sanitizerBuild } from '../src/backend/native.js';

const require = createRequire(import.meta.url);

let cached: Record<string, unknown> | undefined;

export function testAddonPath(): string {
  return join(projectRoot, 'native', 'build', sanitizerBuild ? 'Debug' : 'Release', 'ibnbd_test.node');
}

/** The raw exports of ibnbd_test.node, cast to the caller's view. */
export function loadTestAddon<T = Record<string, unknown>>(): T {
  if (!cached) {
    loadNative();
    const path = testAddonPath();
    if (!existsSync(path)) throw new Error(`ibnbd-vhost: test addon not built (${path}); run \`npm run build\``);
    cached = require(path) as Record<string, unknown>;
  }
  return cached as T;
}
