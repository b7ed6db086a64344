// The five targets of the benchmark issue. Each starts its daemons once, serves every workload
// through the same client program, and names the processes whose CPU time is charged to it.
//   a  ours: ibnbd server + client over TCP loopback, the client's vhost-user-blk socket
//   b  qemu-storage-daemon vhost-user-blk export of the file (iothread, aio=io_uring): the ceiling
//   c  qsd NBD client -> qemu-nbd over TCP loopback, TCP_NODELAY forced on qemu-nbd's sockets
//   d  qsd NBD client -> qemu-nbd over a unix socket
//   e  raw TCP loopback probe (one thread a side, TCP_NODELAY): the floor of our TCP hop
//   m  ours again, both daemons with --metrics and scraped every second while a run goes on
//      (--metrics-cost): a/m is what the Prometheus endpoint costs
//   p  ours again, both daemons with --poll-us (--targets …,p): a/p is what adaptive polling
//      gives (latency, IOPS) and costs (CPU s/MIO)
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { BenchOptions, TargetId } from './options.js';
import { freePort } from '../harness/fixtures.js';
import { Daemon, fileExists, runTool, tcpAccepts, waitFor, type ToolResult } from './procs.js';
import { isReadLike, MAX_QUEUES, type Workload } from './workloads.js';

export interface BenchContext {
  opts: BenchOptions;
  root: string;       // repository root
  work: string;       // sockets and logs
  file: string;       // the data file every target serves
  tools: { blkio: string; probe: string; shim: string };
}

export interface Target {
  readonly id: TargetId;
  readonly name: string;
  readonly description: string;
  /** facts worth printing next to the figures (e.g. that the shim is really loaded) */
  readonly notes: string[];
  start(ctx: BenchContext): Promise<void>;
  daemons(): Daemon[];
  run(w: Workload, ctx: BenchContext): Promise<ToolResult>;
  /** after a run, once its daemons' CPU time was read: what must not be charged to the run */
  afterRun?(ctx: BenchContext): void;
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 20000;

function toolTimeout(ctx: BenchContext): number {
  return ctx.opts.rampMs + ctx.opts.runtimeMs + 3 * ctx.opts.timeoutMs + 10000;
}

function qsdExportArgs(socket: string): string[] {
  // as many queues as the multi-queue workload drives (ours offers 16 by default); one iothread
  return ['--export', `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${socket},writable=on,iothread=iot0,num-queues=${MAX_QUEUES}`];
}

/** Targets the libblkio client drives through a vhost-user-blk socket. */
abstract class VhostTarget implements Target {
  abstract readonly id: TargetId;
  abstract readonly name: string;
  abstract readonly description: string;
  readonly notes: string[] = [];
  protected procs: Daemon[] = [];
  protected socket = '';

  abstract start(ctx: BenchContext): Promise<void>;

  daemons(): Daemon[] {
    return this.procs;
  }

  async run(w: Workload, ctx: BenchContext): Promise<ToolResult> {
    const o = ctx.opts;
    const r = await runTool(ctx.tools.blkio, [
      '--path', this.socket, '--rw', w.rw, '--bs', String(w.bs), '--qd', String(w.qd), '--queues', String(w.queues ?? 1),
      '--runtime-ms', String(o.runtimeMs), '--ramp-ms', String(o.rampMs), '--seed', String(o.seed),
      '--timeout-ms', String(o.timeoutMs),
    ], toolTimeout(ctx));
    if (r.ok) r.submitted = Number(r.submitted_reads) + Number(r.submitted_writes);
    return r;
  }

  async stop(): Promise<void> {
    await Promise.all([...this.procs].reverse().map((d) => d.stop()));
  }
}

class QsdLocal extends VhostTarget {
  readonly id = 'b' as const;
  readonly name = 'qsd vhost-user-blk';
  readonly description = 'qemu-storage-daemon vhost-user-blk export of the file, iothread, aio=io_uring (local ceiling)';
  async start(ctx: BenchContext): Promise<void> {
    this.socket = join(ctx.work, 'b-vhost.sock');
    const qsd = new Daemon('qsd(b)', 'qemu-storage-daemon', [
      '--object', 'iothread,id=iot0',
      '--blockdev', `driver=file,node-name=f0,filename=${ctx.file},aio=io_uring,locking=off`,
      '--blockdev', 'driver=raw,node-name=d0,file=f0',
      ...qsdExportArgs(this.socket),
    ], join(ctx.work, 'b-qsd.log'));
    this.procs = [qsd];
    await waitFor('qsd (b)', START_TIMEOUT_MS, fileExists(this.socket), this.procs);
  }
}

/** qemu-nbd serving the file, and qsd's NBD client re-exporting it as vhost-user-blk. */
abstract class QsdOverNbd extends VhostTarget {
  protected abstract nbdListenArgs(ctx: BenchContext): Promise<string[]>;
  protected abstract nbdServerOption(): string;
  protected abstract nbdReady(): () => boolean | Promise<boolean>;
  protected nbdEnv(_ctx: BenchContext): NodeJS.ProcessEnv {
    return process.env;
  }

  async start(ctx: BenchContext): Promise<void> {
    this.socket = join(ctx.work, `${this.id}-vhost.sock`);
    const listen = await this.nbdListenArgs(ctx);
    const nbd = new Daemon(`qemu-nbd(${this.id})`, 'qemu-nbd', [
      '--image-opts', `driver=raw,file.driver=file,file.filename=${ctx.file},file.locking=off,file.aio=io_uring`,
      '--cache=writeback', '--persistent', '--shared=8', '--export-name=bench', ...listen,
    ], join(ctx.work, `${this.id}-qemu-nbd.log`), this.nbdEnv(ctx));
    this.procs = [nbd];
    await waitFor(`qemu-nbd (${this.id})`, START_TIMEOUT_MS, this.nbdReady(), this.procs);
    const qsd = new Daemon(`qsd(${this.id})`, 'qemu-storage-daemon', [
      '--object', 'iothread,id=iot0',
      '--blockdev', `driver=nbd,node-name=d0,${this.nbdServerOption()},export=bench`,
      ...qsdExportArgs(this.socket),
    ], join(ctx.work, `${this.id}-qsd.log`));
    this.procs.push(qsd);
    await waitFor(`qsd (${this.id})`, START_TIMEOUT_MS, fileExists(this.socket), this.procs);
  }
}

class NbdTcp extends QsdOverNbd {
  readonly id = 'c' as const;
  readonly name = 'qsd→qemu-nbd TCP';
  readonly description =
    "qsd NBD client -> qemu-nbd over TCP loopback, TCP_NODELAY forced on qemu-nbd's accepted sockets by an LD_PRELOAD shim " +
    '(its best TCP configuration: as shipped, qemu-nbd 7.2 leaves Nagle on and pipelined replies stall on delayed ACKs)';
  private port = 0;
  protected override async nbdListenArgs(): Promise<string[]> {
    this.port = await freePort();
    return ['--bind=127.0.0.1', `--port=${this.port}`];
  }
  protected override nbdServerOption(): string {
    return `server.type=inet,server.host=127.0.0.1,server.port=${this.port}`;
  }
  protected override nbdReady() {
    return tcpAccepts('127.0.0.1', this.port);
  }
  protected override nbdEnv(ctx: BenchContext): NodeJS.ProcessEnv {
    return { ...process.env, LD_PRELOAD: ctx.tools.shim };
  }
  override async start(ctx: BenchContext): Promise<void> {
    await super.start(ctx);
    // the comparison is only fair if the shim really is in qemu-nbd: check its memory map
    const maps = readFileSync(`/proc/${this.procs[0]!.pid}/maps`, 'utf8');
    const loaded = maps.includes(basename(ctx.tools.shim));
    if (!loaded) throw new Error(`TCP_NODELAY shim ${ctx.tools.shim} is not loaded in qemu-nbd`);
    this.notes.push(`TCP_NODELAY shim loaded in qemu-nbd (pid ${this.procs[0]!.pid}): yes`);
  }
}

class NbdUnix extends QsdOverNbd {
  readonly id = 'd' as const;
  readonly name = 'qsd→qemu-nbd unix';
  readonly description = 'qsd NBD client -> qemu-nbd over a unix socket';
  private path = '';
  protected override async nbdListenArgs(ctx: BenchContext): Promise<string[]> {
    this.path = join(ctx.work, 'd-nbd.sock');
    return [`--socket=${this.path}`];
  }
  protected override nbdServerOption(): string {
    return `server.type=unix,server.path=${this.path}`;
  }
  protected override nbdReady() {
    return fileExists(this.path);
  }
}

class TcpProbe implements Target {
  readonly id = 'e' as const;
  readonly name = 'raw TCP probe';
  readonly description =
    'raw TCP loopback probe, one thread a side, TCP_NODELAY: 32-byte request -> block-size reply for reads, ' +
    '32-byte header + block -> 32-byte reply for writes (the physical floor of our TCP hop)';
  readonly notes: string[] = [];
  private server: Daemon | undefined;
  private port = 0;

  async start(ctx: BenchContext): Promise<void> {
    this.port = await freePort();
    this.server = new Daemon('tcp-probe server', ctx.tools.probe, ['server', '--listen', `127.0.0.1:${this.port}`], join(ctx.work, 'e-probe.log'));
    await waitFor('tcp probe server', START_TIMEOUT_MS, tcpAccepts('127.0.0.1', this.port), [this.server]);
  }

  daemons(): Daemon[] {
    return this.server ? [this.server] : [];
  }

  run(w: Workload, ctx: BenchContext): Promise<ToolResult> {
    const o = ctx.opts;
    if ((w.queues ?? 1) > 1) return Promise.resolve({ ok: false, error: 'the raw TCP probe has one connection, no queues' });
    const shape = isReadLike(w.rw) ? ['--resp-bytes', String(w.bs)] : ['--req-payload', String(w.bs), '--resp-bytes', '32'];
    return runTool(ctx.tools.probe, [
      'client', '--connect', `127.0.0.1:${this.port}`, '--qd', String(w.qd), ...shape,
      '--runtime-ms', String(o.runtimeMs), '--ramp-ms', String(o.rampMs), '--timeout-ms', String(o.timeoutMs),
    ], toolTimeout(ctx));
  }

  async stop(): Promise<void> {
    await this.server?.stop();
  }
}

/**
 * Ours: `ibnbd server` exporting the data file's folder, `ibnbd client` mapping it over TCP
 * loopback with io_mode=fileio (reads through the page cache, as the peers do), then the same
 * libblkio client on the vhost-user-blk socket the map reply names.
 */
class Ours extends VhostTarget {
  readonly id: 'a' | 'm' | 'p';
  readonly name: string;
  readonly description: string;
  /** m: the daemons' /metrics ports, scraped every second during a run */
  private readonly metricsPorts: number[] = [];
  private readonly scraped: boolean;
  /** p: --poll-us of both daemons; 0 for a and m (the daemons' default, off) */
  private readonly pollUs: number;

  constructor(id: 'a' | 'm' | 'p', pollUs = 0) {
    super();
    this.id = id;
    this.scraped = id === 'm';
    this.pollUs = id === 'p' ? pollUs : 0;
    this.name = id === 'm' ? 'ours + /metrics 1 s' : id === 'p' ? `ours --poll-us ${this.pollUs}` : 'ours (ibnbd TCP)';
    this.description = 'ours: ibnbd server + client over TCP loopback (io_mode=fileio), vhost-user-blk socket of the client' +
      (id === 'm' ? '; both daemons with --metrics, each /metrics fetched once a second while a run goes on, by a process of its own' : '') +
      (id === 'p' ? `; both daemons with --poll-us ${this.pollUs}: after work each IO thread polls for up to ${this.pollUs} µs before it sleeps` : '');
  }

  /** --poll-us for both daemons of p, nothing for a and m. */
  private pollArgs(): string[] {
    return this.pollUs ? ['--poll-us', String(this.pollUs)] : [];
  }

  /** --metrics ADDR:PORT for one daemon of m, nothing for a. */
  private async metricsArgs(): Promise<string[]> {
    if (!this.scraped) return [];
    const port = await freePort();
    this.metricsPorts.push(port);
    return ['--metrics', `127.0.0.1:${port}`];
  }

  override async run(w: Workload, ctx: BenchContext): Promise<ToolResult> {
    if (!this.scraper) return super.run(w, ctx);
    // the scraper fetches both endpoints once a second while the flag exists: during m's runs only
    const { flag, stats } = this.scraperFiles(ctx);
    writeFileSync(flag, '');
    try {
      return await super.run(w, ctx);
    } finally {
      rmSync(flag, { force: true });
      const { scrapes, failed, ms } = existsSync(stats) ? (JSON.parse(readFileSync(stats, 'utf8')) as Record<string, number>) : { scrapes: 0, failed: 0, ms: 0 };
      this.notes[1] = `/metrics fetched ${scrapes} times by a scraper process of its own (${failed} failed), ${scrapes ? (ms / scrapes).toFixed(1) : 'n/a'} ms each on average`;
    }
  }

  private scraperFiles(ctx: BenchContext) {
    return { flag: join(ctx.work, 'm-scrape.flag'), stats: join(ctx.work, 'm-scrape.json') };
  }

  /** m: the scraper process (its CPU is not charged to the daemons). */
  private scraper: Daemon | undefined;

  private startScraper(ctx: BenchContext): void {
    const { flag, stats } = this.scraperFiles(ctx);
    this.scraper = new Daemon('metrics scraper', process.execPath, [
      join(ctx.root, 'dist', 'bench', 'metrics-scraper.js'), flag, stats, ...this.metricsPorts.map((p) => `http://127.0.0.1:${p}/metrics`),
    ], join(ctx.work, 'm-scraper.log'));
  }

  override async stop(): Promise<void> {
    await this.scraper?.stop();
    await super.stop();
  }

  /** Why ours cannot run in this build, or undefined when it can. */
  static unavailableReason(root: string): string | undefined {
    return Ours.cliMissing(root, 'server', ['--listen', '--dev-search-path', '--control']) ??
      Ours.cliMissing(root, 'client', ['--control', '--run-dir']);
  }

  // an unknown sub-command's --help prints the top-level help and exits 0: look for the options
  // the bench passes instead
  private static cliMissing(root: string, cmd: string, needs: string[]): string | undefined {
    const r = spawnSync(process.execPath, [join(root, 'bin', 'ibnbd.js'), cmd, '--help'], { encoding: 'utf8', timeout: 15000 });
    const missing = needs.filter((n) => !r.stdout?.includes(n));
    return r.status !== 0 || missing.length ? `\`ibnbd ${cmd}\` (with ${needs.join(' ')}) is not in this build yet` : undefined;
  }

  async start(ctx: BenchContext): Promise<void> {
    const cli = join(ctx.root, 'bin', 'ibnbd.js');
    const port = await freePort();
    const serverControl = join(ctx.work, `${this.id}-server.ctl`);
    const threads = [...(ctx.opts.ioThreads ? ['--io-threads', String(ctx.opts.ioThreads)] : []), ...this.pollArgs()];
    const server = new Daemon('ibnbd server', process.execPath, [
      cli, 'server', '--listen', `127.0.0.1:${port}`, '--dev-search-path', dirname(ctx.file), '--control', serverControl, ...threads,
      ...(await this.metricsArgs()),
    ], join(ctx.work, `${this.id}-server.log`));
    this.procs = [server];
    await waitFor('ibnbd server', START_TIMEOUT_MS, async () => fileExists(serverControl)() && (await tcpAccepts('127.0.0.1', port)()), this.procs);
    await this.startClientDaemon(ctx, port, threads);
    if (this.scraped) this.startScraper(ctx);
    this.notes.push(`server: \`ibnbd server\` pid ${server.pid}; client: ${this.procs[1]!.name} pid ${this.procs[1]!.pid}; vhost-user socket ${this.socket}`);
    if (this.pollUs) this.controls = { server: serverControl, client: join(ctx.work, `${this.id}-client.ctl`) };
  }

  /** p: the control sockets, to read how often polling found work (a note after each run). */
  private controls: { server: string; client: string } | undefined;

  /** p: polls and hits of both daemons so far, from `ibnbd server sessions` and `ibnbd show`
   *  (control requests, after the run's CPU time was read). */
  afterRun(ctx: BenchContext): void {
    if (!this.controls) return;
    const cli = join(ctx.root, 'bin', 'ibnbd.js');
    const ask = (args: string[]): { polls: number; poll_hits: number } | undefined => {
      const r = spawnSync(process.execPath, [cli, ...args, '--json'], { encoding: 'utf8', timeout: START_TIMEOUT_MS });
      if (r.status !== 0) return undefined;
      const j = JSON.parse(r.stdout) as { io_threads?: { polls: number; poll_hits: number }; device?: { io_threads?: { polls: number; poll_hits: number } } };
      return j.io_threads ?? j.device?.io_threads;
    };
    const s = ask(['server', 'sessions', '--control', this.controls.server]);
    const c = this.socket ? ask(['show', basename(this.socket, '.sock'), '--control', this.controls.client]) : undefined;
    const text = (x: { polls: number; poll_hits: number } | undefined) => (x ? `${x.poll_hits} hits of ${x.polls} polls (${x.polls ? ((100 * x.poll_hits) / x.polls).toFixed(1) : '0'} %)` : 'n/a');
    this.notes[1] = `polling so far: server ${text(s)}, client ${text(c)}`;
  }

  private async startClientDaemon(ctx: BenchContext, port: number, threads: string[]): Promise<void> {
    const cli = join(ctx.root, 'bin', 'ibnbd.js');
    const clientControl = join(ctx.work, `${this.id}-client.ctl`);
    const client = new Daemon('ibnbd client', process.execPath, [
      cli, 'client', '--control', clientControl, '--run-dir', join(ctx.work, `${this.id}-run`), '--state-dir', join(ctx.work, `${this.id}-state`), ...threads,
      ...(await this.metricsArgs()),
    ], join(ctx.work, `${this.id}-client.log`));
    this.procs.push(client);
    await waitFor('ibnbd client', START_TIMEOUT_MS, fileExists(clientControl), this.procs);
    const map = spawnSync(process.execPath, [
      cli, 'map', `sessname=bench path=ip:127.0.0.1:${port} device_path=${basename(ctx.file)} io_mode=fileio`,
      '--control', clientControl, '--json',
    ], { encoding: 'utf8', timeout: START_TIMEOUT_MS });
    if (map.status !== 0) throw new Error(`ibnbd map failed: ${(map.stderr || map.stdout || String(map.error)).trim()}`);
    const reply = JSON.parse(map.stdout) as { device?: { socket?: string }; socket?: string };
    const socket = reply.device?.socket ?? reply.socket;
    if (!socket) throw new Error(`ibnbd map: no socket in the reply ${map.stdout.trim()}`);
    this.socket = socket;
    await waitFor('vhost-user socket of ours', START_TIMEOUT_MS, fileExists(socket), this.procs);
  }
}

export function makeTarget(id: TargetId, pollUs = 50): Target {
  switch (id) {
    case 'a': return new Ours('a');
    case 'm': return new Ours('m');
    case 'p': return new Ours('p', pollUs);
    case 'b': return new QsdLocal();
    case 'c': return new NbdTcp();
    case 'd': return new NbdUnix();
    case 'e': return new TcpProbe();
  }
}

export function oursUnavailableReason(root: string): string | undefined {
  return Ours.unavailableReason(root);
}
