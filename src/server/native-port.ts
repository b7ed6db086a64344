// The native transport server seen from the export server: starts it with the daemon's options,
// turns its events into ServerEvents and offers the NativePort (respond, attach/detach, stats).
// The only file that knows the binding's shape (src/backend/server-native.ts).
import { IbnbdError } from '../backend/errors.js';
import { loadNative } from '../backend/native.js';
import type { ServerOptions } from './options.js';
import type { NativePort, ServerEvent } from './server.js';
import type { SessionPathEntry } from './introspection.js';

export interface NativeServerHandle {
  port: NativePort;
  bound(): string[];
  stop(): void;
}

export function startNativeServer(opts: ServerOptions, onEvent: (ev: ServerEvent) => void): NativeServerHandle {
  const { NativeServer } = loadNative<{ NativeServer?: new (...args: unknown[]) => unknown }>();
  if (typeof NativeServer !== 'function') throw new IbnbdError('ENOSYS', 'the native addon has no NativeServer');
  void onEvent;
  void opts;
  throw new IbnbdError('ENOSYS', 'NativeServer binding not wired yet');
}

export type { SessionPathEntry };
