import { assign, fromPromise, setup, type DoneActorEvent, type ErrorActorEvent } from 'xstate';
import type { ErrorData } from '../config/errors.js';
import { containerNamesToProbe, buildPlan, type BottlePlan, type PlanInput } from './plan.js';
import { machineVersion } from './machine-version.js';
import type { LabelledObject } from './ports.js';

/**
 * The bottle machine. Pure: guards and assigns read only context and event payloads
 * (time and ids arrive in payloads), every side effect is an invoked actor with an
 * explicit id whose implementation the engine provides (machine.provide) from
 * engine/steps.ts. Replay folds the recorded events through this definition with
 * xstate's pure transition() and runs nothing.
 *
 *   resolving -> (planning) -> probingOrphans -> preparingSidecars
 *     -> live{running <-> capabilityReview} -> teardown -> done | failed
 *
 * planning is transient (only `always` transitions): no snapshot ever rests there.
 *
 * Any failure goes to teardown, which removes what `created` lists, in reverse, and
 * then ends in failed with the cause.
 */

/** The machine's input: what planning needs (the manifest, the names' sources, the run id), and the identity. */
export interface BottleInput extends PlanInput {
  identity: string;
}

export type ResourceKind = 'stage' | 'network' | 'volume' | 'container';
export interface CreatedResource {
  kind: ResourceKind;
  name: string;
  role?: string;
}

export type ProposalKind = 'dockerfile' | 'allowlist' | 'route';
export type ProposalStatus = 'pending' | 'applying' | 'approved' | 'denied' | 'failed';
export interface Proposal {
  id: string;
  kind: ProposalKind;
  reason: string;
  /** The change itself, as the supervise sidecar validated it. */
  change: Record<string, unknown>;
  status: ProposalStatus;
  receivedAt: number;
  decidedAt?: number;
  /** secretHash: `<length>:<sha256>` of a route's secret, so the egress canary knows it (never the value). */
  decision?: { by: string; reason?: string; secretRef?: string; secretHash?: string };
  error?: ErrorData;
}

export interface BottleContext {
  input: BottleInput;
  plan: BottlePlan | null;
  created: CreatedResource[];
  removed: CreatedResource[];
  error: ErrorData | null;
  exitCode: number | null;
  stopRequested: boolean;
  commandsSeen: string[];
  proposals: Proposal[];
  orphans: LabelledObject[];
  outputBytes: number;
  /** Gateways of the bottle's networks: the egress proxy never dials them. */
  gateways: string[];
  /**
   * `<length>:<sha256>` of every route token the egress canary learned while the bottle ran
   * (the tokens in force when the agent started, each rotated one; never a value), in the
   * order learned. What the canary must keep knowing lives here, so snapshots and resume
   * carry it: a token rotated away stays a secret after the owner is gone.
   */
  canaryHashes: string[];
}

/** An effect's failure as plain data; `created` lists what it made before failing. */
export interface StepError extends ErrorData {
  created?: CreatedResource[];
}

export type BottleEvent =
  | { type: 'command.stop'; commandId: string; reason?: string }
  | {
      type: 'proposal.received';
      proposal: { id: string; kind: ProposalKind; reason: string; change: Record<string, unknown> };
      at: number;
    }
  | { type: 'proposal.approve'; commandId: string; id: string; by: string; secretRef?: string; secretHash?: string; at: number }
  | { type: 'proposal.deny'; commandId: string; id: string; by: string; reason?: string; at: number }
  /** The agent wrote this many bytes of output (the log of the run keeps their volume). */
  | { type: 'agent.output'; bytes: number }
  /** The egress canary was given these token hashes (`<length>:<sha256>`, never a value). */
  | { type: 'canary.learned'; hashes: string[] }
  /**
   * A secret that entered while the bottle ran (a rotated token file) broke the token rule and
   * was refused: the ref, what it is for and the rule's words, never the value. Recorded for
   * the audit; it changes nothing the machine decides.
   */
  | { type: 'secret.refused'; ref: string; use: string; problem: string };

export interface ResolveOutput {
  existingContainers: string[];
  runtimes: string[];
  perBottleDockerfile: boolean;
}
export interface CreatedOutput {
  created: CreatedResource[];
  gateways?: string[];
}
export interface ProbeOutput {
  orphans: LabelledObject[];
  busy: LabelledObject[];
}

/** The allowlist in force: the manifest's plus every approved allowlist proposal's hosts. */
export function currentAllowlist(plan: BottlePlan, proposals: Proposal[]): string[] {
  const hosts = proposals
    .filter((p) => p.kind === 'allowlist' && (p.status === 'approved' || p.status === 'applying'))
    .flatMap((p) => (Array.isArray(p.change.hosts) ? (p.change.hosts as unknown[]).filter((h): h is string => typeof h === 'string') : []));
  return [...new Set([...plan.allowlist, ...hosts.map((h) => h.toLowerCase())])];
}

/**
 * The declaration of an effect: its input and output types, and an implementation that
 * only fails. The engine provides the real one (machine.provide) from the steps.
 */
const notImplemented = <Output, Input>(id: string) =>
  fromPromise<Output, Input>(async () => {
    throw { code: 'INTERNAL', message: `effect ${id} has no implementation (machine.provide was not called)` };
  });

function asStepError(error: unknown): StepError {
  if (error && typeof error === 'object' && typeof (error as { message?: unknown }).message === 'string') {
    const e = error as StepError;
    return { code: typeof e.code === 'string' ? e.code : 'INTERNAL', message: e.message, ...(e.hint ? { hint: e.hint } : {}), ...(e.created ? { created: e.created } : {}) };
  }
  return { code: 'INTERNAL', message: String(error) };
}

/** The params of every failure action: a step's error (untyped, it crossed a process) as StepError. */
const stepErrorOf = ({ event }: { event: ErrorActorEvent }) => asStepError(event.error);

function planInputOf({ identity: _identity, ...input }: BottleInput): PlanInput {
  return { ...input, tty: input.tty ?? false };
}

/** Planning inside the machine: pure, so it is recomputed identically on replay. */
function tryPlan(input: BottleInput, world: ResolveOutput): { plan: BottlePlan } | { error: ErrorData } {
  try {
    return { plan: buildPlan(planInputOf(input), world) };
  } catch (err) {
    return { error: asStepError(err) };
  }
}

/** A token's `<length>:<sha256 hex>`, the only form a secret takes in the context. */
const SECRET_HASH = /^[1-9][0-9]{0,5}:[0-9a-f]{64}$/;

const pending = (ps: Proposal[]) => ps.filter((p) => p.status === 'pending' || p.status === 'applying');

/**
 * A substate of preparingSidecars: invoke `step`; on success record what it created and go
 * to `next`, or to teardown when a stop was asked for meanwhile; on failure record it and
 * tear down. (ensureImages creates nothing the context lists and is spelled out below.)
 */
interface PrepInputs {
  stageFiles: { plan: BottlePlan; runId: string };
  ensureImages: { plan: BottlePlan };
  createNetworks: { plan: BottlePlan; runId: string };
  startSidecars: { plan: BottlePlan; runId: string; gateways: string[] };
  createAgent: { plan: BottlePlan; runId: string };
}
type CreatingStep = Exclude<keyof PrepInputs, 'ensureImages'>;

// Outside createMachine the done event is not inferred from the invoked actor, so it is named
// here; createMachine checks it against the actor's declared output.
const createdOf = ({ event }: { event: DoneActorEvent<CreatedOutput> }) => event.output;

function prepStep<Step extends CreatingStep>(step: Step, next: string, input: (args: { context: BottleContext }) => PrepInputs[Step]) {
  const recordCreated = { type: 'recordCreated' as const, params: createdOf };
  return {
    invoke: {
      id: step,
      src: step,
      input,
      onDone: [
        { guard: 'stopWasRequested' as const, target: '#bottle.teardown', actions: recordCreated },
        { target: next, actions: recordCreated },
      ],
      onError: { target: '#bottle.teardown', actions: { type: 'recordFailure' as const, params: stepErrorOf } },
    },
  };
}

export const bottleMachine = setup({
  types: {
    context: {} as BottleContext,
    events: {} as BottleEvent,
    input: {} as BottleInput,
    output: {} as { exitCode: number | null; error: ErrorData | null },
  },
  actors: {
    resolveWorld: notImplemented<ResolveOutput, { identity: string; probeNames: string[] }>('resolveWorld'),
    probeOrphans: notImplemented<ProbeOutput, { identity: string; runId: string }>('probeOrphans'),
    stageFiles: notImplemented<CreatedOutput, PrepInputs['stageFiles']>('stageFiles'),
    ensureImages: notImplemented<{ built: string[] }, PrepInputs['ensureImages']>('ensureImages'),
    createNetworks: notImplemented<CreatedOutput, PrepInputs['createNetworks']>('createNetworks'),
    startSidecars: notImplemented<CreatedOutput, PrepInputs['startSidecars']>('startSidecars'),
    createAgent: notImplemented<CreatedOutput, PrepInputs['createAgent']>('createAgent'),
    agentExit: notImplemented<{ exitCode: number }, { plan: BottlePlan; runId: string }>('agentExit'),
    applyProposal: notImplemented<
      { applied: true },
      { plan: BottlePlan; runId: string; proposal: Proposal; allowlist: string[]; proposals: Proposal[] }
    >('applyProposal'),
    teardown: notImplemented<{ removed: CreatedResource[] }, { identity: string; runId: string; resources: CreatedResource[] }>('teardown'),
  },
  guards: {
    // assignPlan leaves either a plan or the error that planning raised.
    planFailed: ({ context }) => context.plan === null,
    hasOrphans: (_, probe: ProbeOutput) => probe.orphans.length > 0,
    // `?? []`: the output is recorded data, and a step's output is only as typed as the step.
    isBusy: (_, probe: ProbeOutput) => (probe.busy ?? []).length > 0,
    stopWasRequested: ({ context }) => context.stopRequested,
    isNewCommand: ({ context, event }) => 'commandId' in event && !context.commandsSeen.includes(event.commandId),
    approvable: ({ context, event }) =>
      'commandId' in event &&
      !context.commandsSeen.includes(event.commandId) &&
      'id' in event &&
      context.proposals.some((p) => p.id === event.id && p.status === 'pending'),
    nothingPending: ({ context }) => pending(context.proposals).length === 0,
    hasError: ({ context }) => context.error !== null,
  },
  actions: {
    // The only place the plan is computed: once per run, from the resolved world.
    assignPlan: assign(({ context }, world: ResolveOutput) => {
      const result = tryPlan(context.input, world);
      return 'plan' in result ? { plan: result.plan } : { error: result.error };
    }),
    assignOrphans: assign(({ context }, { orphans }: ProbeOutput) => {
      const list = orphans.map((o) => `${o.kind} ${o.name}`).join(', ');
      return {
        orphans,
        error: {
          code: 'ORPHAN_SIDECAR',
          message: `bottle '${context.input.identity}' has leftovers of an earlier run that no live run owns: ${list}`,
          hint: 'run `bottle cleanup` (or `bottle cleanup --dry-run` to see what it removes), then launch again',
        },
      };
    }),
    assignBusy: assign(({ context }, { busy }: ProbeOutput) => {
      const runs = [...new Set(busy.map((o) => o.labels['bot-bottle.run']))].join(', ');
      const homes = [...new Set(busy.map((o) => o.labels['bot-bottle.home']).filter(Boolean))].join(', ');
      return {
        error: {
          code: 'RUN_LOCKED',
          message: `bottle '${context.input.identity}' is already running (run ${runs}${homes ? ` of BOTTLE_HOME ${homes}` : ''}); its objects were left alone`,
          hint: `stop it first (BOTTLE_HOME=<that home> bottle stop ${context.input.identity}), or run this agent against another --cwd`,
        },
      };
    }),
    recordCreated: assign(({ context }, output: CreatedOutput) => {
      return {
        created: [...context.created, ...output.created],
        gateways: output.gateways ? [...new Set([...context.gateways, ...output.gateways])] : context.gateways,
      };
    }),
    recordFailure: assign(({ context }, err: StepError) => {
      const { created, ...data } = err;
      return { error: data, created: created ? [...context.created, ...created] : context.created };
    }),
    recordExit: assign({ exitCode: (_, exit: { exitCode: number }) => exit.exitCode }),
    recordRemoved: assign({ removed: (_, teardown: { removed: CreatedResource[] }) => teardown.removed }),
    recordStop: assign(({ context, event }) => ({
      stopRequested: true,
      commandsSeen: 'commandId' in event ? [...context.commandsSeen, event.commandId] : context.commandsSeen,
    })),
    recordProposal: assign(({ context, event }) => {
      if (event.type !== 'proposal.received') return {};
      if (context.proposals.some((p) => p.id === event.proposal.id)) return {};
      const p: Proposal = { ...event.proposal, status: 'pending', receivedAt: event.at };
      return { proposals: [...context.proposals, p] };
    }),
    recordApprove: assign(({ context, event }) => {
      if (event.type !== 'proposal.approve') return {};
      return {
        commandsSeen: [...context.commandsSeen, event.commandId],
        proposals: context.proposals.map((p) =>
          p.id === event.id
            ? { ...p, status: 'applying' as const, decidedAt: event.at, decision: { by: event.by, ...(event.secretRef ? { secretRef: event.secretRef } : {}), ...(event.secretHash ? { secretHash: event.secretHash } : {}) } }
            : p,
        ),
      };
    }),
    recordDeny: assign(({ context, event }) => {
      if (event.type !== 'proposal.deny') return {};
      return {
        commandsSeen: [...context.commandsSeen, event.commandId],
        proposals: context.proposals.map((p) =>
          p.id === event.id ? { ...p, status: 'denied' as const, decidedAt: event.at, decision: { by: event.by, ...(event.reason ? { reason: event.reason } : {}) } } : p,
        ),
      };
    }),
    recordIgnoredCommand: assign(({ context, event }) => ({
      commandsSeen: 'commandId' in event && !context.commandsSeen.includes(event.commandId) ? [...context.commandsSeen, event.commandId] : context.commandsSeen,
    })),
    recordCanaryHashes: assign(({ context, event }) => {
      if (event.type !== 'canary.learned') return {};
      const known = new Set(context.canaryHashes);
      // Only the hash form is kept: anything else in the event is dropped, never folded in.
      const fresh = (Array.isArray(event.hashes) ? event.hashes : []).filter((h) => typeof h === 'string' && SECRET_HASH.test(h) && !known.has(h) && known.add(h));
      return fresh.length > 0 ? { canaryHashes: [...context.canaryHashes, ...fresh] } : {};
    }),
    recordOutput: assign({
      outputBytes: ({ context, event }) => context.outputBytes + (event.type === 'agent.output' ? event.bytes : 0),
    }),
    recordApplied: assign(({ context }) => ({
      proposals: context.proposals.map((p) => (p.status === 'applying' ? { ...p, status: 'approved' as const } : p)),
    })),
    recordApplyFailed: assign(({ context }, err: StepError) => {
      return { proposals: context.proposals.map((p) => (p.status === 'applying' ? { ...p, status: 'failed' as const, error: { code: err.code, message: err.message } } : p)) };
    }),
  },
}).createMachine({
  id: 'bottle',
  initial: 'resolving',
  context: ({ input }) => ({
    input,
    plan: null,
    created: [],
    removed: [],
    error: null,
    exitCode: null,
    stopRequested: false,
    commandsSeen: [],
    proposals: [],
    orphans: [],
    outputBytes: 0,
    gateways: [],
    canaryHashes: [],
  }),
  on: {
    // A stop before the agent runs is remembered and honoured once the current step has
    // finished, so no step is cut off halfway with resources the context does not list.
    'command.stop': { guard: 'isNewCommand', actions: 'recordStop' },
    // In any state: the step that learned them may be cut off by a transition right after.
    'canary.learned': { actions: 'recordCanaryHashes' },
  },
  states: {
    resolving: {
      invoke: {
        id: 'resolveWorld',
        src: 'resolveWorld',
        input: ({ context }) => ({
          identity: context.input.identity,
          probeNames: containerNamesToProbe(context.input.identity, context.input.overrides),
        }),
        onDone: { target: 'planning', actions: { type: 'assignPlan', params: ({ event }) => event.output } },
        onError: { target: 'teardown', actions: { type: 'recordFailure', params: stepErrorOf } },
      },
    },
    // Transient: decides on the plan assignPlan computed on the way in. Left in the same
    // macrostep as resolving, so no snapshot (live, folded or persisted) is ever taken here,
    // and a restored machine never has to re-evaluate these `always` transitions.
    planning: {
      always: [
        { guard: 'planFailed', target: 'teardown' },
        { guard: 'stopWasRequested', target: 'teardown' },
        { target: 'probingOrphans' },
      ],
    },
    probingOrphans: {
      invoke: {
        id: 'probeOrphans',
        src: 'probeOrphans',
        input: ({ context }) => ({ identity: context.input.identity, runId: context.input.runId }),
        onDone: [
          {
            guard: { type: 'isBusy', params: ({ event }) => event.output },
            target: 'teardown',
            actions: { type: 'assignBusy', params: ({ event }) => event.output },
          },
          {
            guard: { type: 'hasOrphans', params: ({ event }) => event.output },
            target: 'teardown',
            actions: { type: 'assignOrphans', params: ({ event }) => event.output },
          },
          { guard: 'stopWasRequested', target: 'teardown' },
          { target: 'preparingSidecars' },
        ],
        onError: { target: 'teardown', actions: { type: 'recordFailure', params: stepErrorOf } },
      },
    },
    preparingSidecars: {
      initial: 'staging',
      // Each substate runs one step, then goes on to the next one, or to teardown when a stop
      // was asked for meanwhile or the step failed. The invoke ids are the log's step names.
      states: {
        staging: prepStep('stageFiles', 'images', ({ context }) => ({ plan: context.plan!, runId: context.input.runId })),
        images: {
          invoke: {
            id: 'ensureImages',
            src: 'ensureImages',
            input: ({ context }) => ({ plan: context.plan! }),
            onDone: [{ guard: 'stopWasRequested', target: '#bottle.teardown' }, { target: 'networks' }],
            onError: { target: '#bottle.teardown', actions: { type: 'recordFailure', params: stepErrorOf } },
          },
        },
        networks: prepStep('createNetworks', 'sidecars', ({ context }) => ({ plan: context.plan!, runId: context.input.runId })),
        sidecars: prepStep('startSidecars', 'agent', ({ context }) => ({ plan: context.plan!, runId: context.input.runId, gateways: context.gateways })),
        agent: prepStep('createAgent', '#bottle.live', ({ context }) => ({ plan: context.plan!, runId: context.input.runId })),
      },
    },
    live: {
      invoke: {
        id: 'agentExit',
        src: 'agentExit',
        input: ({ context }) => ({ plan: context.plan!, runId: context.input.runId }),
        onDone: { target: 'teardown', actions: { type: 'recordExit', params: ({ event }) => event.output } },
        onError: { target: 'teardown', actions: { type: 'recordFailure', params: stepErrorOf } },
      },
      on: {
        'command.stop': { guard: 'isNewCommand', target: 'teardown', actions: 'recordStop' },
        'proposal.received': { target: '.capabilityReview', actions: 'recordProposal' },
        'agent.output': { actions: 'recordOutput' },
      },
      initial: 'running',
      states: {
        running: {
          on: {
            // Decisions on nothing pending (an unknown id, a second decision) are recorded and
            // change nothing; the CLI checks them first and reports them to the user.
            'proposal.approve': { actions: 'recordIgnoredCommand' },
            'proposal.deny': { actions: 'recordIgnoredCommand' },
          },
        },
        capabilityReview: {
          // A second proposal while one is applying must not cancel the apply.
          on: { 'proposal.received': { actions: 'recordProposal' } },
          initial: 'waiting',
          states: {
            waiting: {
              always: { guard: 'nothingPending', target: '#bottle.live.running' },
              on: {
                'proposal.approve': [{ guard: 'approvable', target: 'applying', actions: 'recordApprove' }, { actions: 'recordIgnoredCommand' }],
                'proposal.deny': [{ guard: 'approvable', actions: 'recordDeny' }, { actions: 'recordIgnoredCommand' }],
              },
            },
            applying: {
              invoke: {
                id: 'applyProposal',
                src: 'applyProposal',
                input: ({ context }) => ({
                  plan: context.plan!,
                  runId: context.input.runId,
                  proposal: context.proposals.find((p) => p.status === 'applying')!,
                  allowlist: currentAllowlist(context.plan!, context.proposals),
                  proposals: context.proposals,
                }),
                onDone: { target: 'waiting', actions: 'recordApplied' },
                onError: { target: 'waiting', actions: { type: 'recordApplyFailed', params: stepErrorOf } },
              },
              on: {
                'proposal.approve': { actions: 'recordIgnoredCommand' },
                'proposal.deny': [{ guard: 'approvable', actions: 'recordDeny' }, { actions: 'recordIgnoredCommand' }],
              },
            },
          },
        },
      },
    },
    teardown: {
      invoke: {
        id: 'teardown',
        src: 'teardown',
        input: ({ context }) => ({
          identity: context.input.identity,
          runId: context.input.runId,
          resources: [...context.created].reverse(),
        }),
        onDone: [
          { guard: 'hasError', target: 'failed', actions: { type: 'recordRemoved', params: ({ event }) => event.output } },
          { target: 'done', actions: { type: 'recordRemoved', params: ({ event }) => event.output } },
        ],
        onError: { target: 'failed', actions: { type: 'recordFailure', params: stepErrorOf } },
      },
      on: { 'command.stop': { guard: 'isNewCommand', actions: 'recordStop' } },
    },
    done: { type: 'final' },
    failed: { type: 'final' },
  },
  output: ({ context }) => ({ exitCode: context.exitCode, error: context.error }),
});

export type BottleMachine = typeof bottleMachine;

/**
 * Bump when what a guard, an action or planning computes changes while the definition's
 * structure does not (test/unit/machines/machine-version.test.ts fails on its pinned fold
 * then): a log must only be folded by the behaviour that wrote it.
 */
const BEHAVIOUR_REVISION = 2;

/**
 * The machine version every run records and resume and replay insist on: a digest of the
 * definition's structure and BEHAVIOUR_REVISION (see machine-version.ts), so a changed
 * machine refuses the logs of the old one. test/unit/machines/machine-version.test.ts pins it.
 */
export const MACHINE_VERSION = machineVersion('bottle', bottleMachine, BEHAVIOUR_REVISION);

/** The CONTRACT.md state name of a snapshot value. */
export function stateName(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object') {
    const [top, sub] = Object.entries(value as Record<string, unknown>)[0] ?? [];
    if (top === 'live' && sub !== undefined) return typeof sub === 'string' ? sub : Object.keys(sub as object)[0] ?? 'running';
    if (top) return top;
  }
  return 'unknown';
}

/** A step key's step name for an invoke id (the journal keys effects by it). */
export const STEP_IDS = [
  'resolveWorld',
  'probeOrphans',
  'stageFiles',
  'ensureImages',
  'createNetworks',
  'startSidecars',
  'createAgent',
  'agentExit',
  'applyProposal',
  'teardown',
] as const;
export type StepId = (typeof STEP_IDS)[number];
