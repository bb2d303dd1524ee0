import { Command, CommanderError, Option } from 'commander';
import { BottleError } from '../config/errors.js';
import { ENGINE_VERSION } from '../engine/version.js';
import { cmdInit, cmdPlan, cmdValidate } from './commands/manifest.js';
import { cmdAudit, cmdLogs, cmdLs, cmdProposals, cmdReplay, cmdStatus } from './commands/inspect.js';
import { cmdDecide, cmdOwner, cmdResume, cmdRun, cmdStop } from './commands/run.js';
import { cliContext } from './context.js';
import { reportError } from './output.js';

/**
 * `bottle`: every command is a thin function of (context, options) returning an exit
 * code; this file only parses arguments and maps errors to exit codes (0 ok, 1 failure
 * of the bottle or engine, 2 usage or manifest; `run` attached returns the agent's code).
 */

const ctx = cliContext();
let exitCode = 0;
const jsonMode = process.argv.includes('--json');

type Action<A extends unknown[]> = (...args: A) => Promise<number | undefined | void>;
function wrap<A extends unknown[]>(fn: Action<A>) {
  return async (...args: A) => {
    const code = await fn(...args);
    exitCode = typeof code === 'number' ? code : 0;
  };
}

const program = new Command('bottle')
  .description('Run AI coding agents in Docker bottles whose only ways out are the sidecars you declared.')
  .version(ENGINE_VERSION)
  .showSuggestionAfterError()
  .exitOverride();

const fileOpt = () => new Option('-f, --file <FILE>', 'the manifest (default: ./bottle.yaml)');
const jsonOpt = () => new Option('--json', 'print one JSON document on stdout');
const runOpt = () => new Option('--run <RUN>', 'a run id (default: the current run)');

program
  .command('init')
  .description('write a commented example bottle.yaml here (refuses to overwrite)')
  .addOption(jsonOpt())
  .action(wrap((o) => cmdInit(ctx, o)));

program
  .command('validate')
  .description('validate the manifest; exit 0, or 2 with every error listed')
  .addOption(fileOpt())
  .addOption(jsonOpt())
  .action(wrap((o) => cmdValidate(ctx, o)));

program
  .command('plan')
  .argument('<AGENT>')
  .description('print the resolved plan (identity, names, sidecars, allowlist, env names); creates nothing')
  .option('--cwd <DIR>', 'the project to copy into /workspace')
  .addOption(fileOpt())
  .addOption(jsonOpt())
  .action(wrap((agent: string, o) => cmdPlan(ctx, agent, o)));

program
  .command('run')
  .argument('<AGENT>')
  .description("launch a bottle; attached, exit with the agent's code after teardown")
  .option('--cwd <DIR>', 'the project to copy into /workspace')
  .option('--detach', 'return once the agent runs and print the identity')
  .addOption(fileOpt())
  .addOption(jsonOpt())
  .action(wrap((agent: string, o) => cmdRun(ctx, agent, o)));

program
  .command('ls')
  .description('every known bottle with its state and run id')
  .addOption(jsonOpt())
  .action(wrap((o) => cmdLs(ctx, o)));

program
  .command('status')
  .argument('<BOTTLE>')
  .description('state, containers, pending proposals, last events')
  .addOption(runOpt())
  .addOption(jsonOpt())
  .action(wrap((b: string, o) => cmdStatus(ctx, b, o)));

program
  .command('logs')
  .argument('<BOTTLE>')
  .description("the agent's output")
  .addOption(runOpt())
  .action(wrap((b: string, o) => cmdLogs(ctx, b, o)));

program
  .command('audit')
  .argument('<BOTTLE>')
  .description("the run's history as a timeline")
  .addOption(runOpt())
  .addOption(jsonOpt())
  .action(wrap((b: string, o) => cmdAudit(ctx, b, o)));

program
  .command('replay')
  .argument('<BOTTLE>')
  .description('fold the history through the machine without effects; exit 1 at the first inconsistency')
  .addOption(runOpt())
  .addOption(jsonOpt())
  .action(wrap((b: string, o) => cmdReplay(ctx, b, o)));

program
  .command('resume')
  .argument('<BOTTLE>')
  .description('take over a run whose CLI died and carry it on (re-attaches a running agent)')
  .addOption(runOpt())
  .addOption(jsonOpt())
  .action(wrap((b: string, o) => cmdResume(ctx, b, o)));

program
  .command('stop')
  .argument('<BOTTLE>')
  .description('tear the bottle down; returns when it has')
  .addOption(runOpt())
  .addOption(jsonOpt())
  .action(wrap((b: string, o) => cmdStop(ctx, b, o)));

program
  .command('proposals')
  .argument('<BOTTLE>')
  .description('pending and decided capability proposals')
  .addOption(runOpt())
  .addOption(jsonOpt())
  .action(wrap((b: string, o) => cmdProposals(ctx, b, o)));

program
  .command('approve')
  .argument('<BOTTLE>')
  .argument('<ID>')
  .description('approve a proposal (a route needs the secret it should use)')
  .option('--token-env <NAME>', 'the secret of an approved route, from this host variable')
  .option('--token-file <PATH>', 'the secret of an approved route, from this file')
  .addOption(jsonOpt())
  .action(
    wrap((b: string, id: string, o: { tokenEnv?: string; tokenFile?: string; json?: boolean }) => {
      if (o.tokenEnv && o.tokenFile) throw new BottleError('USAGE', 'give --token-env or --token-file, not both');
      const secretRef = o.tokenEnv ? `env:${o.tokenEnv}` : o.tokenFile ? `file:${o.tokenFile}` : undefined;
      return cmdDecide(ctx, b, id, { approve: true, ...(secretRef ? { secretRef } : {}) }, o);
    }),
  );

program
  .command('deny')
  .argument('<BOTTLE>')
  .argument('<ID>')
  .description('deny a proposal')
  .option('--reason <TEXT>', 'told to the agent')
  .addOption(jsonOpt())
  .action(wrap((b: string, id: string, o: { reason?: string; json?: boolean }) => cmdDecide(ctx, b, id, { approve: false, ...(o.reason ? { reason: o.reason } : {}) }, o)));

program
  .command('cleanup')
  .description('remove Docker objects labelled as ours that no live run owns')
  .option('--dry-run', 'list them, remove nothing')
  .addOption(jsonOpt())
  .action(
    wrap(async (o) => {
      const { cmdCleanup } = await import('./commands/docker.js');
      return cmdCleanup(ctx, o);
    }),
  );

program
  .command('images')
  .description('image commands')
  .command('build')
  .description('build the base (registry-less when needed), agent and sidecar images')
  .option('--base <SOURCE>', 'auto | registry | bootstrap', 'auto')
  .option('--claude-code', 'install Claude Code into the agent image (needs the npm registry on this host)')
  .addOption(jsonOpt())
  .action(
    wrap(async (o) => {
      const { cmdImagesBuild } = await import('./commands/docker.js');
      return cmdImagesBuild(ctx, o);
    }),
  );

program
  .command('__owner', { hidden: true })
  .argument('<BOTTLE>')
  .argument('<RUN>')
  .action(wrap((b: string, r: string) => cmdOwner(ctx, b, r)));

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Help and version are exits with code 0; everything else commander rejects is usage.
    exitCode = err.exitCode === 0 ? 0 : 2;
  } else {
    exitCode = reportError(err, { json: jsonMode });
  }
}
// Exit explicitly once stdout has drained: open handles (a Docker keep-alive socket, a
// mailbox watcher) must not keep a finished command alive.
process.stdout.write('', () => process.stderr.write('', () => process.exit(exitCode)));
