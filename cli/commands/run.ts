import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { BottleError } from '../../config/errors.js';
import { NanoIds } from '../../effects/local.js';
import type { BottleInput } from '../../machines/bottle.machine.js';
import { bottleIdentity } from '../../machines/names.js';
import type { AgentIO } from '../../machines/ports.js';
import { createSteps } from '../../engine/steps/index.js';
import { EventLog } from '../../store/event-log.js';
import { readLockOwner } from '../../store/lock.js';
import { postCommand } from '../../store/mailbox.js';
import { commandsDir, eventsFile, lockFile, runDir } from '../../store/paths.js';
import { listRuns, readStateDoc } from '../../store/state-doc.js';
import { foldLog } from '../../engine/fold.js';
import { RunHost, type RunResult } from '../../engine/host.js';
import type { Snapshot } from '../../engine/fold.js';
import { clock, faultFromEnv, HostSecretReader, openBackend, StoreProposalBoard, stepDeps, type CliContext } from '../../engine/wiring.js';
import { approvedTokenPath } from '../../machines/proposals.js';
import { SIDECAR_UID, secretHash } from '../../machines/specs.js';
import { info, printJson } from '../output.js';
import { agentOf, overridesFrom, readManifest, resolveCwd } from './manifest.js';

const ids = new NanoIds();

/** The run a command about BOTTLE means: --run, else the bottle's current one. */
export function currentRun(ctx: CliContext, identity: string, run?: string): string {
  if (run) {
    if (!listRuns(ctx.home, identity).includes(run)) {
      throw new BottleError('BOTTLE_NOT_FOUND', `bottle '${identity}' has no run '${run}'`, `bottle status ${identity}`);
    }
    return run;
  }
  const doc = readStateDoc(ctx.home, identity);
  const runs = listRuns(ctx.home, identity);
  const id = doc?.runId ?? runs[runs.length - 1];
  if (!id) throw new BottleError('BOTTLE_NOT_FOUND', `no bottle '${identity}' is known in ${ctx.home}`, 'bottle ls   (BOTTLE is an identity as printed by plan, run and ls)');
  return id;
}

export function ownerAlive(ctx: CliContext, identity: string, runId: string): boolean {
  return readLockOwner(lockFile(ctx.home, identity, runId))?.alive === true;
}

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

async function host(ctx: CliContext, attach: boolean, quiet = false) {
  const backend = await openBackend(ctx);
  const io = attach ? terminalIO(quiet) : undefined;
  const progress = (line: string) => {
    if (!quiet) info(`  ${line}`);
  };
  const board = new StoreProposalBoard(ctx.home);
  const steps = createSteps(stepDeps(ctx, backend, { ...(io ? { io } : {}), progress, board }));
  const fault = faultFromEnv(ctx.env);
  return {
    home: ctx.home,
    steps,
    clock,
    onSnapshot: (snap: Snapshot) => board.follow(snap),
    ...(fault ? { fault } : {}),
    onState: (state: string) => {
      if (!quiet) info(`bottle: ${state}`);
    },
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
async function foreground(ctx: CliContext, h: RunHost, json?: boolean): Promise<number> {
  const raw = process.stdin.isTTY && process.stdout.isTTY;
  if (raw) process.stdin.setRawMode(true);
  const stop = (signal: string) => {
    info(`bottle: ${signal}, tearing down`);
    postCommand(commandsDir(ctx.home, h.identity, h.runId), { id: ids.commandId(), type: 'stop', reason: signal });
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

export async function cmdRun(ctx: CliContext, agent: string, opts: RunOpts): Promise<number> {
  const loaded = await readManifest(ctx, opts);
  agentOf(loaded, agent);
  const cwd = resolveCwd(ctx, opts.cwd);
  const identity = bottleIdentity(agent, cwd);
  for (const runId of listRuns(ctx.home, identity)) {
    if (ownerAlive(ctx, identity, runId)) {
      throw new BottleError('RUN_LOCKED', `bottle '${identity}' is already running (run ${runId})`, `bottle stop ${identity}   (or run it against another --cwd)`);
    }
  }
  const backend = await openBackend(ctx);
  const input: BottleInput = {
    runId: ids.runId(),
    identity,
    manifest: loaded.manifest,
    manifestDir: loaded.dir,
    homeDir: ctx.homeDir,
    home: ctx.home,
    agent,
    cwd,
    overrides: overridesFrom(ctx.env),
    images: await backend.imageTags(),
    tty: !opts.detach && Boolean(process.stdin.isTTY && process.stdout.isTTY),
  };
  if (opts.detach) return detach(ctx, input, opts);
  const h = RunHost.start(await host(ctx, true, opts.json), input);
  info(`bottle: ${identity} run ${input.runId}`);
  return foreground(ctx, h, opts.json);
}

/**
 * --detach: this process launches the bottle itself (one Node start on the way to a running
 * agent, not two) and, once the agent runs, stops owning the run and hands it to a background
 * owner (`bottle __owner`), which takes it over exactly as `bottle resume` would and
 * re-attaches the agent. This process records nothing after the hand-over.
 */
async function detach(ctx: CliContext, input: BottleInput, opts: RunOpts): Promise<number> {
  const deps = await host(ctx, false, true);
  let reached!: (state: string) => void;
  const up = new Promise<string>((resolve) => {
    reached = resolve;
  });
  const h = RunHost.start(
    {
      ...deps,
      onState: (state) => {
        if (!opts.json) info(`bottle: ${state}`);
        if (state === 'running' || state === 'capabilityReview') reached(state);
      },
    },
    input,
  );
  const outcome = await Promise.race([up.then((state) => ({ state, result: null })), h.done.then((result) => ({ state: result.state, result }))]);
  if (outcome.result) {
    // It ended during the launch: a failure is reported like any other; an agent that already
    // finished has nothing left to hand over.
    if (outcome.result.state === 'failed') {
      const err = outcome.result.error ?? { code: 'INTERNAL', message: 'the bottle failed to start' };
      throw new BottleError((err.code as 'INTERNAL') ?? 'INTERNAL', err.message, err.hint);
    }
  } else {
    handToBackground(ctx, h, input.identity, input.runId);
  }
  if (opts.json) printJson({ identity: input.identity, run: input.runId, state: outcome.state });
  else {
    info(`bottle: ${input.identity} is ${outcome.state} (run ${input.runId})`);
    info(`next: bottle logs ${input.identity} | bottle status ${input.identity} | bottle stop ${input.identity}`);
    process.stdout.write(`${input.identity}\n`);
  }
  return 0;
}

/**
 * Starts a background owner (`bottle __owner`) and hands the run to it: the lock names it from
 * the moment this process stops driving the run, so the run is never without a live owner.
 */
function handToBackground(ctx: CliContext, h: RunHost, identity: string, runId: string): void {
  const dir = runDir(ctx.home, identity, runId);
  const out = openSync(join(dir, 'owner.log'), 'a', 0o600);
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, '__owner', identity, runId], {
    detached: true,
    stdio: ['ignore', out, out],
    env: ctx.env as NodeJS.ProcessEnv,
  });
  child.unref();
  closeSync(out);
  if (child.pid === undefined) throw new BottleError('INTERNAL', 'could not start the background owner', `bottle resume ${identity}`);
  h.handOver(child.pid);
}

/** The background owner of a detached run: takes it over from the launching CLI, with no terminal. */
export async function cmdOwner(ctx: CliContext, identity: string, runId: string): Promise<number> {
  const deps = await host(ctx, false);
  // The launching CLI names this process in the lock right after starting it; until then the
  // lock is still the CLI's.
  let h: RunHost | undefined;
  for (let tries = 0; !h; tries++) {
    try {
      h = RunHost.resume(deps, identity, runId);
    } catch (err) {
      if (!(err instanceof BottleError && err.code === 'RUN_LOCKED') || tries >= 100) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  process.on('SIGTERM', () => postCommand(commandsDir(ctx.home, identity, runId), { id: ids.commandId(), type: 'stop', reason: 'SIGTERM' }));
  return finishRun(await h.done, false);
}

export async function cmdResume(ctx: CliContext, identity: string, opts: { json?: boolean; run?: string }): Promise<number> {
  const runId = currentRun(ctx, identity, opts.run);
  const h = RunHost.resume(await host(ctx, true, opts.json), identity, runId);
  info(`bottle: resumed ${identity} run ${runId}`);
  return foreground(ctx, h, opts.json);
}

/** Posts a command to the run's owner; with no live owner this process becomes the owner. */
async function deliver(
  ctx: CliContext,
  identity: string,
  runId: string,
  cmd: Parameters<typeof postCommand>[1],
  opts: { json?: boolean; waiting?: string },
  until: () => boolean,
): Promise<number> {
  postCommand(commandsDir(ctx.home, identity, runId), cmd);
  const since = Date.now();
  let told = false;
  for (;;) {
    if (until()) return 0;
    // Long work (a Dockerfile build) happens in the run's owner: say so once, not silently wait.
    if (!told && opts.waiting && Date.now() - since > 2000) {
      told = true;
      info(opts.waiting);
    }
    if (!ownerAlive(ctx, identity, runId)) {
      try {
        const h = RunHost.resume(await host(ctx, false, opts.json), identity, runId);
        info(`bottle: no live owner for run ${runId}; took it over to carry out the command`);
        // Once the command has taken effect a run that goes on (an approval, a denial) is
        // handed to a background owner, as `run --detach` does; a stop runs to its end here.
        const outcome = await Promise.race([h.done, waitFor(until).then(() => null)]);
        if (outcome === null && foldedState(ctx, identity, runId).status === 'active') {
          handToBackground(ctx, h, identity, runId);
          return 0;
        }
        return outcome ? finishRun(outcome, opts.json) : finishRun(await h.done, opts.json);
      } catch (err) {
        // Another process became the owner in between (a detached run's owner taking over
        // from the CLI that launched it) and drains the mailbox, or the run has just ended:
        // look again.
        if (!(err instanceof BottleError && (err.code === 'RUN_LOCKED' || err.code === 'RUN_FINISHED'))) throw err;
        if (err.code === 'RUN_FINISHED') {
          if (until()) return 0;
          throw err;
        }
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function waitFor(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 100));
}

function foldedState(ctx: CliContext, identity: string, runId: string) {
  const file = eventsFile(ctx.home, identity, runId);
  return foldLog(EventLog.read(file), file, { fromSnapshot: true }).snapshot;
}

export async function cmdStop(ctx: CliContext, identity: string, opts: { json?: boolean; run?: string }): Promise<number> {
  const runId = currentRun(ctx, identity, opts.run);
  const snap = foldedState(ctx, identity, runId);
  if (snap.status !== 'active') {
    if (opts.json) printJson({ identity, run: runId, state: snap.value });
    else info(`bottle '${identity}' run ${runId} has already ended (${String(snap.value)})`);
    return 0;
  }
  const code = await deliver(ctx, identity, runId, { id: ids.commandId(), type: 'stop', reason: 'bottle stop' }, opts, () => foldedState(ctx, identity, runId).status !== 'active');
  const doc = readStateDoc(ctx.home, identity);
  if (opts.json) printJson({ identity, run: runId, state: doc?.state ?? null });
  else info(`bottle: ${identity} is ${doc?.state ?? 'stopped'}`);
  return code === 0 ? 0 : code;
}

/**
 * A route's secret goes from this process straight into the cred-proxy's container through the
 * Docker API: the mailbox, the log and the owner see only the ref's name.
 */
async function handSecretToProxy(ctx: CliContext, snap: ReturnType<typeof foldedState>, proposalId: string, secretRef: string): Promise<string> {
  const proxy = snap.context.plan?.sidecars.find((s) => s.role === 'cred-proxy');
  if (!proxy) {
    throw new BottleError('USAGE', `bottle '${snap.context.input.identity}' runs no cred-proxy, so a route cannot be added while it runs`, `bottle deny ${snap.context.input.identity} ${proposalId} --reason "no cred-proxy"`);
  }
  const [kind, ...rest] = secretRef.split(':');
  const name = rest.join(':');
  const ref = kind === 'env' ? { env: name } : { file: resolve(ctx.cwd, name) };
  const value = new HostSecretReader(ctx).read(ref);
  const backend = await openBackend(ctx);
  await backend.runtime.putFiles(proxy.name, [{ containerPath: approvedTokenPath(proposalId), content: value, mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID }]);
  return secretHash(value);
}

/** Who decides, for the audit: the login name (USER, LOGNAME, or the account of this process). */
function deciderName(ctx: CliContext): string {
  const named = ctx.env.USER || ctx.env.LOGNAME;
  if (named) return named;
  try {
    return userInfo().username || 'cli';
  } catch {
    return 'cli';
  }
}

export async function cmdDecide(
  ctx: CliContext,
  identity: string,
  proposalId: string,
  decision: { approve: true; secretRef?: string } | { approve: false; reason?: string },
  opts: { json?: boolean },
): Promise<number> {
  const runId = currentRun(ctx, identity);
  const snap = foldedState(ctx, identity, runId);
  const proposal = snap.context.proposals.find((p) => p.id === proposalId);
  if (!proposal) {
    throw new BottleError('PROPOSAL_NOT_FOUND', `bottle '${identity}' has no proposal '${proposalId}' in run ${runId}`, `bottle proposals ${identity}`);
  }
  if (proposal.status !== 'pending') {
    throw new BottleError('PROPOSAL_DECIDED', `proposal '${proposalId}' of bottle '${identity}' is already ${proposal.status}`, `bottle proposals ${identity}`);
  }
  if (decision.approve && proposal.kind !== 'route' && decision.secretRef) {
    throw new BottleError('USAGE', `proposal '${proposalId}' is a ${proposal.kind} proposal: --token-env and --token-file are only for route proposals`, `bottle approve ${identity} ${proposalId}`);
  }
  if (decision.approve && proposal.kind === 'route' && !decision.secretRef) {
    throw new BottleError('USAGE', `proposal '${proposalId}' adds a route: approve it with the secret it should use`, `bottle approve ${identity} ${proposalId} --token-env NAME   (or --token-file PATH)`);
  }
  if (snap.status !== 'active') throw new BottleError('RUN_FINISHED', `run ${runId} of bottle '${identity}' has ended`, `bottle status ${identity}`);
  const hash = decision.approve && proposal.kind === 'route' && decision.secretRef ? await handSecretToProxy(ctx, snap, proposalId, decision.secretRef) : undefined;
  const by = deciderName(ctx);
  const cmd = decision.approve
    ? { id: ids.commandId(), type: 'approve' as const, proposal: proposalId, by, ...(decision.secretRef ? { secretRef: decision.secretRef } : {}), ...(hash ? { secretHash: hash } : {}) }
    : { id: ids.commandId(), type: 'deny' as const, proposal: proposalId, by, ...(decision.reason ? { reason: decision.reason } : {}) };
  const decided = () => {
    const p = foldedState(ctx, identity, runId).context.proposals.find((x) => x.id === proposalId);
    return p !== undefined && p.status !== 'pending' && p.status !== 'applying';
  };
  const waiting =
    decision.approve && proposal.kind === 'dockerfile'
      ? `bottle: the run's owner is building the image of ${proposalId} and will recreate the agent; this can take minutes (its progress: ${join(runDir(ctx.home, identity, runId), 'owner.log')} for a detached run)`
      : `bottle: waiting for the run's owner to carry out the decision on ${proposalId}`;
  const code = await deliver(ctx, identity, runId, cmd, { ...opts, waiting }, decided);
  const p = foldedState(ctx, identity, runId).context.proposals.find((x) => x.id === proposalId);
  if (opts.json) printJson({ identity, run: runId, id: proposalId, status: p?.status ?? null, error: p?.error ?? null });
  else info(`proposal ${proposalId}: ${p?.status}${p?.error ? ` (${p.error.message})` : ''}`);
  return p?.status === 'failed' ? 1 : code;
}
