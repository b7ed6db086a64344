// The daemons under systemd (docs/operations.md, "systemd"): Type=notify readiness, status,
// stopping and the watchdog, sent through the native sdNotify (native/service/sd_notify.cc) to
// $NOTIFY_SOCKET. Outside systemd (no $NOTIFY_SOCKET) every call is a no-op. The watchdog is fed
// from the event loop, so a daemon whose loop hangs stops feeding it and systemd restarts it.
import { loadNative } from '../backend/native.js';
import type { Logger } from '../logger.js';

const sdNotify = (state: string): boolean => loadNative<{ sdNotify(state: string): boolean }>().sdNotify(state);

export interface ServiceNotifier {
  /** READY=1 with a STATUS line: the control socket and the listeners are up */
  ready(status: string): void;
  status(status: string): void;
  /** STOPPING=1, and the watchdog stops */
  stopping(): void;
}

/** A notifier for this process; the watchdog starts when systemd asked for one (WatchdogSec=). */
export function serviceNotifier(log: Logger): ServiceNotifier {
  const send = (state: string): void => {
    if (!process.env.NOTIFY_SOCKET) return;
    try {
      sdNotify(state);
    } catch (e) {
      log.warn(`systemd notification "${state.split('\n')[0]}" not sent: ${(e as Error).message}`);
    }
  };
  let watchdog: NodeJS.Timeout | undefined;
  const usec = Number(process.env.WATCHDOG_USEC);
  const forUs = !process.env.WATCHDOG_PID || Number(process.env.WATCHDOG_PID) === process.pid;
  return {
    ready(status) {
      send(`READY=1\nSTATUS=${status}\nMAINPID=${process.pid}`);
      if (Number.isFinite(usec) && usec > 0 && forUs && !watchdog) {
        // twice per period, as sd_watchdog_enabled(3) advises
        watchdog = setInterval(() => send('WATCHDOG=1'), Math.max(1, Math.floor(usec / 2000)));
        watchdog.unref();
      }
    },
    status(status) {
      send(`STATUS=${status}`);
    },
    stopping() {
      if (watchdog) clearInterval(watchdog);
      watchdog = undefined;
      send('STOPPING=1\nSTATUS=stopping');
    },
  };
}
