// The server and client test files that run unchanged over either transport (they take it from
// transport-under-test.ts): over TCP on this host with the rest of the suite, and over RDMA in a
// soft-RoCE guest (rdma-suite.test.ts). The one list both runs use.
import { join } from 'node:path';

/** Paths below tests/, without the .test.ts suffix. Only files whose tests cross a transport:
 *  unit/server-access (the writer count, pure TypeScript) was here and cost 35 s of a TCG guest's
 *  node start-ups to test nothing about RDMA. */
export const SHARED_SUITE = ['daemons/server-io', 'native/server-native', 'native/server-stop', 'daemons/client-daemon', 'daemons/client-reconnect', 'daemons/fault-wait', 'daemons/admin-timeout'] as const;

/** The compiled files, relative to the project root (where ava runs). */
export const sharedSuiteFiles = (): string[] => SHARED_SUITE.map((name) => join('dist', 'tests', `${name}.test.js`));
