import { userInfo } from 'node:os';
import type { EngineContext } from '../../engine/context.js';
import { readManifest, unboundedLines } from '../../engine/plan.js';
import {
  currentRun,
  type Decision,
  decideProposal,
  launchDetached,
  newRunInput,
  type OwnerCommand,
  type RunHooks,
  type RunResult,
  requestStop,
  resumeRun,
  startRun,
  stopRun,
  takeOverAsOwner,
} from '../../engine/runs.js';
import type { RunHost } from '../../engine/host.js';
import type { AgentIO } from '../../machines/ports.js';
import { info, printJson } from '../output.js';

/**
 * The commands that drive a run: what engine/runs.ts does, with this process's terminal,
 * signals and output. Nothing here decides anything about the run.
 */

/** This very CLI, as the command that starts a detached run's background owner. */
const OWNER: OwnerCommand = [process.execPath, ...process.execArgv, process.argv[1]!];

/**
 * Standard streams of this terminal, for an attached agent. Under --json stdout carries one
 * JSON document only, so the agent's output goes to stderr.
 */
function terminalIO(json: boolean | undefined): AgentIO {
  const io: AgentIO = { stdin: process.stdin, stdout: json ? process.stderr : process.stdout, stderr: process.stderr };
  if (process.stdin.isTTY && process.stdout.isTTY) {
    io.tty = {
      columns: process.stdout.columns,
      rows: process.stdout.rows,
      onResize(cb) {
        const handler = () => cb({ columns: process.stdout.columns, rows: process.stdout.rows });
        process.stdout.on('resize', handler);
        return () => process.stdout.off('resize', handler);
      },
    };
  }
  return io;
}

/** Progress and state changes on stderr (quiet: none); the agent on this terminal when attached. */
function hooks(attach: boolean, quiet = false): RunHooks {
  return {
    ...(attach ? { io: terminalIO(quiet) } : {}),
    progress: (line) => {
      if (!quiet) info(`  ${line}`);
    },
    onState: (state) => {
      if (!quiet) info(`bottle: ${state}`);
    },
    say: info,
  };
}

/** Ends like the agent: its exit code after teardown; 1 when the bottle failed. */
function finishRun(result: RunResult, json: boolean | undefined): number {
  if (json) printJson({ identity: result.identity, run: result.runId, state: result.state, exit_code: result.exitCode, error: result.error });
  if (result.state === 'failed' && result.error) {
    info(`error ${result.error.code}: ${result.error.message}`);
    if (result.error.hint) info(`Try: ${result.error.hint.replace(/^Try:\s*/, '')}`);
    return 1;
  }
  return result.exitCode ?? (result.state === 'done' ? 0 : 1);
}

/**
 * Runs the host in the foreground; SIGINT/SIGTERM ask it to tear down through the mailbox.
 * On a terminal the keyboard goes to the agent raw (Ctrl-C included, as in any TTY session).
 */
async function foreground(ctx: EngineContext, h: RunHost, json?: boolean): Promise<number> {
  const raw = process.stdin.isTTY && process.stdout.isTTY;
  if (raw) process.stdin.setRawMode(true);
  const stop = (signal: string) => {
    info(`bottle: ${signal}, tearing down`);
    requestStop(ctx, h.identity, h.runId, signal);
  };
  const onInt = () => stop('SIGINT');
  const onTerm = () => stop('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    return finishRun(await h.done, json);
  } finally {
    if (raw) process.stdin.setRawMode(false);
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

export interface RunOpts {
  file?: string;
  json?: boolean;
  cwd?: string;
  detach?: boolean;
}

export async function cmdRun(ctx: EngineContext, agent: string, opts: RunOpts): Promise<number> {
  const loaded = await readManifest(ctx, opts.file);
  const tty = !opts.detach && Boolean(process.stdin.isTTY && process.stdout.isTTY);
  const input = await newRunInput(ctx, loaded, agent, { ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}), tty });
  if (opts.detach) {
    const { state } = await launchDetached(ctx, input, { ...hooks(false, true), onState: (s) => !opts.json && info(`bottle: ${s}`) }, OWNER);
    if (opts.json) printJson({ identity: input.identity, run: input.runId, state });
    else {
      info(`bottle: ${input.identity} is ${state} (run ${input.runId})`);
      for (const line of unboundedLines(loaded, agent)) info(`  ${line}`);
      info(`next: bottle logs ${input.identity} | bottle status ${input.identity} | bottle stop ${input.identity}`);
      process.stdout.write(`${input.identity}\n`);
    }
    return 0;
  }
  const h = await startRun(ctx, input, hooks(true, opts.json));
  info(`bottle: ${input.identity} run ${input.runId}`);
  return foreground(ctx, h, opts.json);
}

/** The background owner of a detached run: takes it over from the launching CLI, with no terminal. */
export async function cmdOwner(ctx: EngineContext, identity: string, runId: string): Promise<number> {
  const h = await takeOverAsOwner(ctx, identity, runId, hooks(false));
  process.on('SIGTERM', () => requestStop(ctx, identity, runId, 'SIGTERM'));
  return finishRun(await h.done, false);
}

export async function cmdResume(ctx: EngineContext, identity: string, opts: { json?: boolean; run?: string }): Promise<number> {
  const runId = currentRun(ctx, identity, opts.run);
  const h = await resumeRun(ctx, identity, runId, hooks(true, opts.json));
  info(`bottle: resumed ${identity} run ${runId}`);
  return foreground(ctx, h, opts.json);
}

export async function cmdStop(ctx: EngineContext, identity: string, opts: { json?: boolean; run?: string }): Promise<number> {
  const runId = currentRun(ctx, identity, opts.run);
  const stopped = await stopRun(ctx, identity, runId, hooks(false, opts.json), OWNER);
  if (stopped.ended) {
    if (opts.json) printJson({ identity, run: runId, state: stopped.state });
    else info(`bottle '${identity}' run ${runId} has already ended (${String(stopped.state)})`);
    return 0;
  }
  const code = stopped.result ? finishRun(stopped.result, opts.json) : 0;
  if (opts.json) printJson({ identity, run: runId, state: stopped.state });
  else info(`bottle: ${identity} is ${stopped.state ?? 'stopped'}`);
  return code;
}

/** Who decides, for the audit: the login name (USER, LOGNAME, or the account of this process). */
function deciderName(ctx: EngineContext): string {
  const named = ctx.env.USER || ctx.env.LOGNAME;
  if (named) return named;
  try {
    return userInfo().username || 'cli';
  } catch {
    return 'cli';
  }
}

export async function cmdDecide(ctx: EngineContext, identity: string, proposalId: string, decision: Decision, opts: { json?: boolean }): Promise<number> {
  const { runId, proposal: p, result } = await decideProposal(ctx, identity, proposalId, decision, deciderName(ctx), hooks(false, opts.json), OWNER);
  const code = result ? finishRun(result, opts.json) : 0;
  if (opts.json) printJson({ identity, run: runId, id: proposalId, status: p?.status ?? null, error: p?.error ?? null });
  else info(`proposal ${proposalId}: ${p?.status}${p?.error ? ` (${p.error.message})` : ''}`);
  return p?.status === 'failed' ? 1 : code;
}
