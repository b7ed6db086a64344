// The ibnbd command line: one program, its commands registered by the modules listed below.
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { IbnbdError } from '../errors.js';
import * as clientCommands from './commands/client.js';
import * as libvirtCommands from './commands/libvirt.js';
import * as mapCommands from './commands/map.js';
import * as serverCommands from './commands/server.js';
import { cliError, errorLine, exitCodeOf, helpTopic } from './util.js';

interface CommandModule {
  register(program: Command): void;
}

// Each module adds its commands; the order here is the order in `ibnbd --help`.
const COMMAND_MODULES: readonly CommandModule[] = [
  mapCommands, // map, unmap, list, show: talk to the client daemon
  libvirtCommands, // libvirt-xml: the <disk> element of a mapped device
  clientCommands, // ibnbd client: the client daemon
  serverCommands, // ibnbd server [opts] (the export daemon), server devices|sessions|force-close
];

function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** `ibnbd --version`: this project's, the Node it runs on, and the native libraries the addon was
 *  built against (the addon is loaded only for this, never for the other commands' start). */
export async function versionText(): Promise<string> {
  const lines = [`ibnbd-vhost ${packageVersion()}`, `node ${process.version} (N-API ${process.versions.napi ?? '?'})`];
  try {
    const { buildInfo } = await import('../backend/native.js');
    const b = buildInfo();
    lines.push(`libvhost-user ${b.libvhostUser}`, `libibverbs ${b.libibverbs}, librdmacm ${b.librdmacm}, liburing ${b.liburing}`);
    if (b.sanitize) lines.push('native addon: the ASan + UBSan build');
  } catch (e) {
    // the message says how to build it, in a checkout or an installed package (backend/native.ts)
    lines.push(`native addon: not loaded: ${(e as Error).message.split('\n')[0]}`);
  }
  return `${lines.join('\n')}\n`;
}

export function buildProgram(): Command {
  const program = new Command('ibnbd')
    .description('IBNBD/RNBD remote block devices served to VMs as vhost-user-blk sockets')
    // handled by runCli before parsing; here so that --help lists it
    .option('-V, --version', 'print the versions of ibnbd-vhost, Node and the native libraries')
    .helpCommand(false) // ours below also knows topics such as "map"
    // Errors come back to runCli as exceptions, printed in the one "ibnbd: ERRNO: message" form;
    // commander itself writes nothing to stderr. Set before the commands, which inherit it.
    .exitOverride()
    .configureOutput({ writeErr: () => {}, outputError: () => {} });

  for (const m of COMMAND_MODULES) m.register(program);

  program
    .command('help')
    .summary('show help for a command or topic')
    .description('Show help: "ibnbd help map" prints the map string grammar.')
    .argument('[topic]', 'a command or topic')
    .action((topic?: string) => {
      if (topic === undefined) return void process.stdout.write(program.helpInformation());
      const text = helpTopic(program, topic);
      if (text !== undefined) return void process.stdout.write(text);
      const cmd = program.commands.find((c) => c.name() === topic);
      if (!cmd) throw new IbnbdError('EINVAL', `help: no command or topic '${topic}'`);
      process.stdout.write(cmd.helpInformation());
    });
  return program;
}

/** Runs the command line; resolves to the exit status (0, or the errno of the failure). */
export async function runCli(argv: readonly string[] = process.argv): Promise<number> {
  const program = buildProgram();
  if (argv.length === 3 && (argv[2] === '--version' || argv[2] === '-V')) {
    process.stdout.write(await versionText());
    return 0;
  }
  try {
    await program.parseAsync([...argv]);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
      // "ibnbd" alone: commander would print the help to stderr; say what is wrong instead
      if (e.code === 'commander.help') e = new IbnbdError('EINVAL', "missing command (see 'ibnbd --help')");
    }
    const err = cliError(e);
    process.stderr.write(`${errorLine(err)}\n`);
    return exitCodeOf(err);
  }
}
