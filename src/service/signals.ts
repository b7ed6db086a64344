// The daemons' signals, taken over before anything listens. Until a process has a handler for
// SIGTERM the kernel's default kills it, and a daemon is reachable (its control socket answers,
// systemd or a test may stop or reload it) a moment before its start has finished: a signal in
// that window would kill it with its listeners half up, or a SIGHUP would end it. So the handlers
// go in first; a stop asked for during the start is kept and acted on once the start is done, and
// a reload during the start is done once the daemon can do it.

export interface DaemonSignals {
  /** the first SIGTERM or SIGINT, whenever it came */
  readonly stop: Promise<NodeJS.Signals>;
  /** from now on SIGHUP calls this (at once if one came before) */
  onReload(fn: () => void): void;
  /** the handlers removed: later signals have their default action again */
  dispose(): void;
}

export function takeDaemonSignals(): DaemonSignals {
  let reload: (() => void) | undefined;
  let reloadPending = false;
  let stopped: (sig: NodeJS.Signals) => void = () => {};
  const stop = new Promise<NodeJS.Signals>((resolve) => {
    stopped = resolve;
  });
  const onStop = (sig: NodeJS.Signals) => stopped(sig);
  const onHup = () => {
    if (reload) reload();
    else reloadPending = true;
  };
  process.on('SIGTERM', onStop);
  process.on('SIGINT', onStop);
  process.on('SIGHUP', onHup);
  return {
    stop,
    onReload(fn) {
      reload = fn;
      if (reloadPending) {
        reloadPending = false;
        fn();
      }
    },
    dispose() {
      process.off('SIGTERM', onStop);
      process.off('SIGINT', onStop);
      process.off('SIGHUP', onHup);
    },
  };
}
