import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { join, resolve } from 'node:path';
import { BottleError } from '../config/errors.js';
import { zodReason } from '../store/checked-json.js';
import type { LoadedManifest } from '../config/load.js';
import { checkRouteToken } from '../config/secrets.js';
import { NanoIds } from '../effects/local.js';
import type { BottleInput } from '../machines/bottle.machine.js';
import { type MailboxCommand, MailboxCommandSchema } from '../machines/commands.js';
import { bottleIdentity } from '../machines/names.js';
import type { AgentIO } from '../machines/ports.js';
import { approvedTokenPath, routeOf } from '../machines/proposals.js';
import { SIDECAR_UID, secretHash } from '../machines/specs.js';
import { EventLog } from '../store/event-log.js';
import { acquireRunLock, readLockOwner } from '../store/lock.js';
import { postCommand } from '../store/mailbox.js';
import { commandsDir, eventsFile, launchLockFile, lockFile, runDir } from '../store/paths.js';
import { listRuns, readStateDoc } from '../store/state-doc.js';
import { clock, HostSecretReader, MachineEventRelay, StoreProposalBoard, stepDeps } from './adapters.js';
import { openBackend } from './backend.js';
import type { EngineContext } from './context.js';
import { LogFold, type Snapshot, runStarted } from './fold.js';
import { type HostDeps, RunHost, type RunResult } from './host.js';
import { checkAgent, overridesFrom, resolveCwd } from './plan.js';
import { checkManifestUpstreams, checkProposedUpstream } from './upstream-addresses.js';
import { createSteps } from './steps/index.js';
import { faultFromEnv } from './test-hooks/failpoints.js';

/**
 * A run's life as the CLI asks for it: launch (attached or detached), take over, stop, decide
 * a proposal. The CLI passes what only it has (the terminal, where to say things, how to start
 * a background owner) and renders what comes back; everything else is here.
 */

const ids = new NanoIds();

export type { RunResult } from './host.js';

/** What the CLI hands the engine for one run. */
export interface RunHooks {
  /** The attached terminal's streams; absent for a background owner or a command. */
  io?: AgentIO;
  /** Progress of long work (image builds, proposals, rotations), one line each. */
  progress: (line: string) => void;
  /** Every change of the CONTRACT state name. */
  onState?: (state: string) => void;
  /** Things said to the user that are not progress (a takeover, a malformed command file). */
  say: (line: string) => void;
}

/** How to start `bottle __owner BOTTLE RUN`, the background owner of a detached run. */
export type OwnerCommand = string[];

/** The run a command about BOTTLE means: --run, else the bottle's current one. */
export function currentRun(ctx: EngineContext, identity: string, run?: string): string {
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

export function ownerAlive(ctx: EngineContext, identity: string, runId: string): boolean {
  return readLockOwner(lockFile(ctx.home, identity, runId))?.alive === true;
}

/** The run host's dependencies as every owner has them: steps from the backend's ports, the proposal board following the machine. */
export async function hostDeps(ctx: EngineContext, hooks: RunHooks): Promise<HostDeps> {
  const backend = await openBackend(ctx);
  const board = new StoreProposalBoard(ctx.home);
  const events = new MachineEventRelay();
  const steps = createSteps(stepDeps(ctx, backend, { ...(hooks.io ? { io: hooks.io } : {}), progress: hooks.progress, board, events }));
  const fault = faultFromEnv(ctx.env);
  return {
    home: ctx.home,
    steps,
    clock,
    events,
    onSnapshot: (snap: Snapshot) => board.follow(snap),
    report: hooks.say,
    ...(fault ? { fault } : {}),
    ...(hooks.onState ? { onState: hooks.onState } : {}),
  };
}

/** The machine's input for a new run of `agent`; refuses when the bottle already has a live owner. */
export async function newRunInput(ctx: EngineContext, loaded: LoadedManifest, agent: string, opts: { cwd?: string; tty: boolean }): Promise<BottleInput> {
  checkAgent(loaded, agent);
  await checkManifestUpstreams(loaded, agent);
  const cwd = resolveCwd(ctx, opts.cwd);
  const identity = bottleIdentity(agent, cwd);
  refuseIfLive(ctx, identity);
  const backend = await openBackend(ctx);
  return {
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
    tty: opts.tty,
  };
}

function refuseIfLive(ctx: EngineContext, identity: string): void {
  for (const runId of listRuns(ctx.home, identity)) {
    if (ownerAlive(ctx, identity, runId)) {
      throw new BottleError('RUN_LOCKED', `bottle '${identity}' is already running (run ${runId})`, `bottle stop ${identity}   (or run it against another --cwd)`);
    }
  }
}

/**
 * Starts a run owned by this process. Two CLIs starting the same identity at once would both
 * find no live run and both launch: the check and the start of the new run's owner happen
 * under the identity's launch lock, held for the few milliseconds between them, so the second
 * one finds the first's live owner and gets RUN_LOCKED.
 */
export async function startRun(ctx: EngineContext, input: BottleInput, hooks: RunHooks): Promise<RunHost> {
  const deps = await hostDeps(ctx, hooks);
  const file = launchLockFile(ctx.home, input.identity);
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  for (let tries = 0; ; tries++) {
    let lock: ReturnType<typeof acquireRunLock>;
    try {
      lock = acquireRunLock(file, { pid: deps.pid ?? process.pid, host: hostname() });
    } catch (err) {
      // Another launch of this identity is between its check and its start: wait for it.
      if (!(err instanceof BottleError && err.code === 'RUN_LOCKED') || tries >= 100) throw err;
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    try {
      refuseIfLive(ctx, input.identity);
      return RunHost.start(deps, input);
    } finally {
      lock.release();
    }
  }
}

/** Takes over a run whose owner died, in this process. */
export async function resumeRun(ctx: EngineContext, identity: string, runId: string, hooks: RunHooks): Promise<RunHost> {
  return RunHost.resume(await hostDeps(ctx, hooks), identity, runId);
}

/** Posts a command into a run's mailbox after checking it is one the owner will accept. */
export function sendCommand(ctx: EngineContext, identity: string, runId: string, cmd: MailboxCommand): void {
  const checked = MailboxCommandSchema.safeParse(cmd);
  if (!checked.success) throw new BottleError('USAGE', `not a command the run's owner accepts: ${zodReason(checked.error)}`, `bottle status ${identity}`);
  postCommand(commandsDir(ctx.home, identity, runId), checked.data);
}

/** Asks the run's owner to tear down (SIGINT, SIGTERM, `bottle stop`). */
export function requestStop(ctx: EngineContext, identity: string, runId: string, reason: string): void {
  sendCommand(ctx, identity, runId, { id: ids.commandId(), type: 'stop', reason });
}

/**
 * `run --detach`: this process launches the bottle itself (one Node start on the way to a
 * running agent, not two) and, once the agent runs, stops owning the run and hands it to a
 * background owner, which takes it over exactly as `bottle resume` would and re-attaches the
 * agent. This process records nothing after the hand-over. Resolves with the state reached,
 * or the result when the run ended during the launch.
 */
export async function launchDetached(
  ctx: EngineContext,
  input: BottleInput,
  hooks: RunHooks,
  owner: OwnerCommand,
): Promise<{ state: string; result: RunResult | null }> {
  let reached!: (state: string) => void;
  const up = new Promise<string>((res) => {
    reached = res;
  });
  const h = await startRun(ctx, input, {
    ...hooks,
    onState: (state) => {
      hooks.onState?.(state);
      if (state === 'running' || state === 'capabilityReview') reached(state);
    },
  });
  const outcome = await Promise.race([up.then((state) => ({ state, result: null })), h.done.then((result) => ({ state: result.state, result }))]);
  if (outcome.result) {
    // It ended during the launch: a failure is reported like any other; an agent that already
    // finished has nothing left to hand over.
    if (outcome.result.state === 'failed') {
      const err = outcome.result.error ?? { code: 'INTERNAL', message: 'the bottle failed to start' };
      throw new BottleError((err.code as 'INTERNAL') ?? 'INTERNAL', err.message, err.hint);
    }
  } else {
    handToBackground(ctx, h, owner);
  }
  return outcome;
}

/**
 * Starts a background owner and hands the run to it: the lock names it from the moment this
 * process stops driving the run, so the run is never without a live owner.
 */
function handToBackground(ctx: EngineContext, h: RunHost, owner: OwnerCommand): void {
  const dir = runDir(ctx.home, h.identity, h.runId);
  const out = openSync(join(dir, 'owner.log'), 'a', 0o600);
  const [command, ...args] = owner;
  const child = spawn(command!, [...args, '__owner', h.identity, h.runId], {
    detached: true,
    stdio: ['ignore', out, out],
    env: ctx.env as NodeJS.ProcessEnv,
  });
  child.unref();
  closeSync(out);
  if (child.pid === undefined) throw new BottleError('INTERNAL', 'could not start the background owner', `bottle resume ${h.identity}`);
  h.handOver(child.pid);
}

/** The background owner of a detached run: takes it over from the launching CLI. */
export async function takeOverAsOwner(ctx: EngineContext, identity: string, runId: string, hooks: RunHooks): Promise<RunHost> {
  const deps = await hostDeps(ctx, hooks);
  // The launching CLI names this process in the lock right after starting it; until then the
  // lock is still the CLI's.
  for (let tries = 0; ; tries++) {
    try {
      return RunHost.resume(deps, identity, runId);
    } catch (err) {
      if (!(err instanceof BottleError && err.code === 'RUN_LOCKED') || tries >= 100) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * A run's folded state as a CLI waiting on its owner sees it: the log is read once from its
 * last snapshot record and then followed, so each look reads only the records written since
 * the last one, not the whole history again.
 */
export class RunView {
  private readonly follower;
  private fold: LogFold | null = null;
  private readonly file: string;

  constructor(ctx: EngineContext, identity: string, runId: string) {
    this.file = eventsFile(ctx.home, identity, runId);
    this.follower = EventLog.follow(this.file, { fromLastSnapshot: true });
  }

  snapshot(): Snapshot {
    const records = this.follower.next();
    if (!this.fold) {
      const head = this.follower.first ? [this.follower.first] : records;
      const input = runStarted(head, this.file).input as BottleInput;
      const from = records[0]?.kind === 'snapshot' ? records[0] : undefined;
      this.fold = new LogFold(input, from);
    }
    for (const r of records) this.fold.feed(r);
    return this.fold.snapshot;
  }
}

/** The folded state of a run now (one whole read; for a single look). */
export function foldedState(ctx: EngineContext, identity: string, runId: string): Snapshot {
  return new RunView(ctx, identity, runId).snapshot();
}

/**
 * Posts a command to the run's owner and waits until `until` holds; with no live owner this
 * process becomes the owner and carries the command out. Once the command has taken effect, a
 * run that goes on (an approval, a denial) is handed to a background owner, as `run --detach`
 * does; a stop runs to its end here. Resolves with the run's result when it ended here.
 */
export async function deliver(
  ctx: EngineContext,
  identity: string,
  runId: string,
  cmd: MailboxCommand,
  hooks: RunHooks & { waiting?: string },
  owner: OwnerCommand,
  until: (snap: Snapshot) => boolean,
): Promise<RunResult | null> {
  sendCommand(ctx, identity, runId, cmd);
  const view = new RunView(ctx, identity, runId);
  const done = () => until(view.snapshot());
  const since = Date.now();
  let told = false;
  for (;;) {
    if (done()) return null;
    // Long work (a Dockerfile build) happens in the run's owner: say so once, not silently wait.
    if (!told && hooks.waiting && Date.now() - since > 2000) {
      told = true;
      hooks.say(hooks.waiting);
    }
    if (!ownerAlive(ctx, identity, runId)) {
      try {
        const h = await resumeRun(ctx, identity, runId, hooks);
        hooks.say(`bottle: no live owner for run ${runId}; took it over to carry out the command`);
        const outcome = await Promise.race([h.done, waitFor(done).then(() => null)]);
        if (outcome === null && view.snapshot().status === 'active') {
          handToBackground(ctx, h, owner);
          return null;
        }
        return outcome ?? (await h.done);
      } catch (err) {
        // Another process became the owner in between (a detached run's owner taking over
        // from the CLI that launched it) and drains the mailbox, or the run has just ended:
        // look again.
        if (!(err instanceof BottleError && (err.code === 'RUN_LOCKED' || err.code === 'RUN_FINISHED'))) throw err;
        if (err.code === 'RUN_FINISHED') {
          if (done()) return null;
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

/** `bottle stop`: null when the run had already ended. */
export async function stopRun(ctx: EngineContext, identity: string, runId: string, hooks: RunHooks, owner: OwnerCommand): Promise<{ ended: boolean; result: RunResult | null; state: unknown }> {
  const snap = foldedState(ctx, identity, runId);
  if (snap.status !== 'active') return { ended: true, result: null, state: snap.value };
  const result = await deliver(ctx, identity, runId, { id: ids.commandId(), type: 'stop', reason: 'bottle stop' }, hooks, owner, (s) => s.status !== 'active');
  return { ended: false, result, state: readStateDoc(ctx.home, identity)?.state ?? null };
}

export type Decision = { approve: true; secretRef?: string } | { approve: false; reason?: string };

/**
 * A route's secret goes from this process straight into the cred-proxy's container through the
 * Docker API: the mailbox, the log and the owner see only the ref's name.
 */
async function handSecretToProxy(ctx: EngineContext, snap: Snapshot, proposalId: string, secretRef: string): Promise<string> {
  const proxy = snap.context.plan?.sidecars.find((s) => s.role === 'cred-proxy');
  if (!proxy) {
    throw new BottleError('USAGE', `bottle '${snap.context.input.identity}' runs no cred-proxy, so a route cannot be added while it runs`, `bottle deny ${snap.context.input.identity} ${proposalId} --reason "no cred-proxy"`);
  }
  const [kind, ...rest] = secretRef.split(':');
  const name = rest.join(':');
  const ref = kind === 'env' ? { env: name } : { file: resolve(ctx.cwd, name) };
  const value = new HostSecretReader(ctx).read(ref);
  // The token rule before anything reaches the proxy: a token the egress canary could not
  // recognise must never be injected upstream.
  checkRouteToken(value, ref, `for proposal ${proposalId}`, `fix the secret, then approve again: bottle approve ${snap.context.input.identity} ${proposalId} --token-env NAME   (or --token-file PATH)`);
  const backend = await openBackend(ctx);
  await backend.runtime.putFiles(proxy.name, [{ containerPath: approvedTokenPath(proposalId), content: value, mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID }]);
  return secretHash(value);
}

/**
 * `bottle approve|deny`: checks the decision against the run as it is, then delivers it and
 * waits until the owner has carried it out. Resolves with the proposal as it ended up.
 */
export async function decideProposal(
  ctx: EngineContext,
  identity: string,
  proposalId: string,
  decision: Decision,
  by: string,
  hooks: RunHooks,
  owner: OwnerCommand,
) {
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
  if (decision.approve && proposal.kind === 'route') {
    // The cred-proxy would refuse every request to a private upstream the manifest did not opt
    // in (or to the Docker host): the approval fails now, with the reason, and changes nothing.
    const plan = snap.context.plan;
    await checkProposedUpstream(routeOf(proposal).upstream, {
      privateNetworks: plan?.privateNetworks ?? [],
      deny: snap.context.gateways ?? [],
      bottle: plan?.bottle ?? '<bottle>',
      identity,
      proposal: proposalId,
    });
  }
  const hash = decision.approve && proposal.kind === 'route' && decision.secretRef ? await handSecretToProxy(ctx, snap, proposalId, decision.secretRef) : undefined;
  const cmd: MailboxCommand = decision.approve
    ? { id: ids.commandId(), type: 'approve', proposal: proposalId, by, ...(decision.secretRef ? { secretRef: decision.secretRef } : {}), ...(hash ? { secretHash: hash } : {}) }
    : { id: ids.commandId(), type: 'deny', proposal: proposalId, by, ...(decision.reason ? { reason: decision.reason } : {}) };
  const waiting =
    decision.approve && proposal.kind === 'dockerfile'
      ? `bottle: the run's owner is building the image of ${proposalId} and will recreate the agent; this can take minutes (its progress: ${join(runDir(ctx.home, identity, runId), 'owner.log')} for a detached run)`
      : `bottle: waiting for the run's owner to carry out the decision on ${proposalId}`;
  const decided = (s: Snapshot) => {
    const p = s.context.proposals.find((x) => x.id === proposalId);
    return p !== undefined && p.status !== 'pending' && p.status !== 'applying';
  };
  const result = await deliver(ctx, identity, runId, cmd, { ...hooks, waiting }, owner, decided);
  const p = foldedState(ctx, identity, runId).context.proposals.find((x) => x.id === proposalId);
  return { runId, proposal: p ?? null, result };
}

