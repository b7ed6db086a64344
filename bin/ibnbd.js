#!/usr/bin/env node
// The ibnbd command. The code is TypeScript in src/cli, compiled to dist/ by `npx tsc -p .`.
import { runCli } from '../dist/src/cli/main.js';

// `ibnbd list | head -1`: a reader that goes away early is not an error worth a stack trace.
process.stdout.on('error', (e) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

process.exitCode = await runCli(process.argv);
