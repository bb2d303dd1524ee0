import { describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { validateManifest } from '../../../config/manifest.js';
import { bottleMachine, stateName, type BottleContext, type BottleInput } from '../../../machines/bottle.machine.js';
import { buildPlan, type BottlePlan } from '../../../machines/plan.js';
import { doneEvent, machineInput, planInput } from '../../support/machine.js';

/**
 * Scripted runs folded through the machine with xstate's pure transition(), the way
 * resume and replay fold a recorded log: hand-written events (commands, proposals and
 * the `xstate.done/error.actor.*` events with the outputs a step would have returned),
 * and the CONTRACT state name and context they must lead to. These pin the machine's
 * behaviour, not its implementation: a refactoring of the definition must leave every
 * expectation here unchanged, because recorded logs have to fold to the same snapshots.
 */

const parsed = validateManifest({
  version: 1,
  bottles: { box: { egress: { allow: ['allowed.test'] }, supervise: true, env: { LEVEL: { value: 'debug' } } } },
  agents: { coder: { bottle: 'box', prompt: 'do the thing', command: ['fake-agent'] } },
});
if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
const manifest = parsed.manifest;

const input: BottleInput = machineInput(manifest);

const world = { existingContainers: [], runtimes: ['runc'], perBottleDockerfile: false };

type Recorded = { type: string } & Record<string, unknown>;
const done = (id: string, output: unknown): Recorded => doneEvent(id, output);
const failed = (id: string, error: unknown): Recorded => ({ type: `xstate.error.actor.${id}`, error, actorId: id });

/** Folds `events` from the initial snapshot; returns the state name after each event and the last snapshot. */
function fold(events: Recorded[], start: BottleInput = input) {
  let [snapshot] = initialTransition(bottleMachine, start);
  const states = [stateName(snapshot.value)];
  for (const event of events) {
    // A recorded log holds xstate's own done/error events, which the machine's event type does not list.
    [snapshot] = transition(bottleMachine, snapshot, event as never);
    states.push(stateName(snapshot.value));
  }
  return { states, snapshot, context: snapshot.context as BottleContext };
}

const stage = { kind: 'stage', name: '/home/u/.local/state/bot-bottle/bottles/coder/runs/run1/stage' } as const;
const nets = [
  { kind: 'network', name: 'bottle-coder-internal', role: 'network' },
  { kind: 'network', name: 'bottle-coder-egress-net', role: 'network' },
] as const;
const sidecars = [
  { kind: 'container', name: 'bottle-coder-egress', role: 'egress' },
  { kind: 'container', name: 'bottle-coder-supervise', role: 'supervise' },
] as const;
const agent = { kind: 'container', name: 'bottle-coder', role: 'agent' } as const;

/** resolving -> probingOrphans -> preparingSidecars (every step) -> live.running */
const upToLive: Recorded[] = [
  done('resolveWorld', world),
  done('probeOrphans', { orphans: [], busy: [] }),
  done('stageFiles', { created: [stage] }),
  done('ensureImages', { built: ['bot-bottle/agent:abc'] }),
  done('createNetworks', { created: nets, gateways: ['172.30.0.1'] }),
  done('startSidecars', { created: sidecars, gateways: ['172.30.0.1', '172.31.0.1'] }),
  done('createAgent', { created: [agent] }),
];

const expectedPlan = (): BottlePlan => buildPlan(planInput(manifest, { images: input.images, tty: false }), world);

describe('bottle machine: scripted runs', () => {
  it('a full run: preparing, two reviews (one applied, one failed to apply), a denial while applying, a stop, teardown, done', () => {
    const events: Recorded[] = [
      ...upToLive,
      { type: 'agent.output', bytes: 100 },
      { type: 'proposal.received', proposal: { id: 'p1', kind: 'allowlist', reason: 'need npm', change: { hosts: ['Registry.NPMJS.org'] } }, at: 1000 },
      { type: 'proposal.approve', commandId: 'c1', id: 'p1', by: 'alice', at: 1100 },
      // A second proposal while the first is applying: recorded, the apply goes on.
      { type: 'proposal.received', proposal: { id: 'p2', kind: 'dockerfile', reason: 'need jq', change: { dockerfile: 'FROM x' } }, at: 1150 },
      { type: 'proposal.deny', commandId: 'c2', id: 'p2', by: 'bob', reason: 'no', at: 1160 },
      // The same command delivered twice changes nothing.
      { type: 'proposal.deny', commandId: 'c2', id: 'p2', by: 'bob', reason: 'no', at: 1160 },
      done('applyProposal', { applied: true }),
      { type: 'agent.output', bytes: 23 },
      { type: 'proposal.received', proposal: { id: 'p3', kind: 'route', reason: 'need api', change: { route: { path: '/x' } } }, at: 2000 },
      // A duplicate delivery of a proposal already known is ignored.
      { type: 'proposal.received', proposal: { id: 'p3', kind: 'route', reason: 'again', change: {} }, at: 2001 },
      { type: 'proposal.approve', commandId: 'c3', id: 'p3', by: 'alice', secretRef: 'env:X', secretHash: '3:abc', at: 2100 },
      failed('applyProposal', { code: 'APPLY_FAILED', message: 'egress did not reload', hint: 'ignored here' }),
      // A decision on nothing pending is recorded and ignored.
      { type: 'proposal.approve', commandId: 'c4', id: 'p3', by: 'alice', at: 2200 },
      { type: 'command.stop', commandId: 'c5' },
      // A second stop (another id) during teardown is only recorded.
      { type: 'command.stop', commandId: 'c6' },
      done('teardown', { removed: [agent, sidecars[1], sidecars[0]] }),
    ];
    const { states, snapshot, context } = fold(events);
    expect(states).toEqual([
      'resolving',
      'probingOrphans',
      'preparingSidecars',
      'preparingSidecars',
      'preparingSidecars',
      'preparingSidecars',
      'preparingSidecars',
      'running',
      'running',
      'capabilityReview',
      'capabilityReview',
      'capabilityReview',
      'capabilityReview',
      'capabilityReview',
      'running',
      'running',
      'capabilityReview',
      'capabilityReview',
      'capabilityReview',
      'running',
      'running',
      'teardown',
      'teardown',
      'done',
    ]);
    expect(snapshot.status).toBe('done');
    expect(snapshot.output).toEqual({ exitCode: null, error: null });
    const { plan, input: ctxInput, ...rest } = context;
    expect(ctxInput).toEqual(input);
    expect(plan).toEqual(expectedPlan());
    expect(plan?.container).toBe('bottle-coder');
    expect(rest).toEqual({
      created: [stage, ...nets, ...sidecars, agent],
      removed: [agent, sidecars[1], sidecars[0]],
      error: null,
      exitCode: null,
      stopRequested: true,
      commandsSeen: ['c1', 'c2', 'c3', 'c4', 'c5', 'c6'],
      proposals: [
        {
          id: 'p1',
          kind: 'allowlist',
          reason: 'need npm',
          change: { hosts: ['Registry.NPMJS.org'] },
          status: 'approved',
          receivedAt: 1000,
          decidedAt: 1100,
          decision: { by: 'alice' },
        },
        {
          id: 'p2',
          kind: 'dockerfile',
          reason: 'need jq',
          change: { dockerfile: 'FROM x' },
          status: 'denied',
          receivedAt: 1150,
          decidedAt: 1160,
          decision: { by: 'bob', reason: 'no' },
        },
        {
          id: 'p3',
          kind: 'route',
          reason: 'need api',
          change: { route: { path: '/x' } },
          status: 'failed',
          receivedAt: 2000,
          decidedAt: 2100,
          decision: { by: 'alice', secretRef: 'env:X', secretHash: '3:abc' },
          error: { code: 'APPLY_FAILED', message: 'egress did not reload' },
        },
      ],
      orphans: [],
      outputBytes: 123,
      gateways: ['172.30.0.1', '172.31.0.1'],
      canaryHashes: [],
    });
  });

  it('the agent exits: its exit code is kept and the run ends done', () => {
    const { states, snapshot, context } = fold([...upToLive, done('agentExit', { exitCode: 3 }), done('teardown', { removed: [] })]);
    expect(states.slice(-3)).toEqual(['running', 'teardown', 'done']);
    expect(snapshot.output).toEqual({ exitCode: 3, error: null });
    expect(context.exitCode).toBe(3);
    expect(context.stopRequested).toBe(false);
  });

  it('a plan that fails goes to teardown with its error, without a plan, and ends failed', () => {
    const { states, snapshot, context } = fold([done('resolveWorld', world), done('teardown', { removed: [] })], { ...input, agent: 'ghost' });
    expect(states).toEqual(['resolving', 'teardown', 'failed']);
    expect(context.plan).toBeNull();
    expect(context.error).toEqual({
      code: 'AGENT_UNKNOWN',
      message: "agent 'ghost' is not in the manifest (agents: coder)",
      hint: 'run `bottle validate` or pick one of the agents listed',
    });
    expect(snapshot.status).toBe('done');
    expect(snapshot.output).toEqual({ exitCode: null, error: context.error });
  });

  it('a stop while resolving is honoured once the world is resolved: planned, then torn down, done', () => {
    const { states, context } = fold([{ type: 'command.stop', commandId: 's1' }, done('resolveWorld', world), done('teardown', { removed: [] })]);
    expect(states).toEqual(['resolving', 'resolving', 'teardown', 'done']);
    expect(context.plan).toEqual(expectedPlan());
    expect(context.error).toBeNull();
    expect(context.stopRequested).toBe(true);
    expect(context.commandsSeen).toEqual(['s1']);
  });

  it('a stop while probing or preparing is honoured after that step, with what it created recorded', () => {
    const probing = fold([done('resolveWorld', world), { type: 'command.stop', commandId: 's1' }, done('probeOrphans', { orphans: [], busy: [] })]);
    expect(probing.states.slice(-1)).toEqual(['teardown']);
    const preparing = fold([...upToLive.slice(0, 4), { type: 'command.stop', commandId: 's1' }, upToLive[4]!]);
    expect(preparing.states.slice(-2)).toEqual(['preparingSidecars', 'teardown']);
    expect(preparing.context.created).toEqual([stage, ...nets]);
    expect(preparing.context.gateways).toEqual(['172.30.0.1']);
  });

  it('a bottle already running elsewhere is refused before anything is created', () => {
    const busy = [{ kind: 'container', name: 'bottle-coder', labels: { 'bot-bottle.run': 'other', 'bot-bottle.home': '/h2' } }];
    const { states, context } = fold([done('resolveWorld', world), done('probeOrphans', { orphans: busy, busy }), done('teardown', { removed: [] })]);
    expect(states).toEqual(['resolving', 'probingOrphans', 'teardown', 'failed']);
    expect(context.orphans).toEqual([]);
    expect(context.error).toEqual({
      code: 'RUN_LOCKED',
      message: "bottle 'coder' is already running (run other of BOTTLE_HOME /h2); its objects were left alone",
      hint: 'stop it first (BOTTLE_HOME=<that home> bottle stop coder), or run this agent against another --cwd',
    });
  });

  it('leftovers of an earlier run are reported as orphans', () => {
    const orphans = [{ kind: 'network', name: 'bottle-coder-internal', labels: { 'bot-bottle.run': 'old' } }];
    const { states, context } = fold([done('resolveWorld', world), done('probeOrphans', { orphans, busy: [] })]);
    expect(states.slice(-1)).toEqual(['teardown']);
    expect(context.orphans).toEqual(orphans);
    expect(context.error).toEqual({
      code: 'ORPHAN_SIDECAR',
      message: "bottle 'coder' has leftovers of an earlier run that no live run owns: network bottle-coder-internal",
      hint: 'run `bottle cleanup` (or `bottle cleanup --dry-run` to see what it removes), then launch again',
    });
  });

  it('a failed step records its error and what it made before failing; a failed teardown ends failed', () => {
    const { states, snapshot, context } = fold([
      ...upToLive.slice(0, 4),
      failed('createNetworks', { code: 'DOCKER', message: 'boom', hint: 'retry', created: [nets[0]], extra: 'dropped' }),
      failed('teardown', { message: 'gone wrong' }),
    ]);
    expect(states.slice(-3)).toEqual(['preparingSidecars', 'teardown', 'failed']);
    expect(snapshot.status).toBe('done');
    expect(context.created).toEqual([stage, nets[0]]);
    expect(context.removed).toEqual([]);
    expect(context.error).toEqual({ code: 'INTERNAL', message: 'gone wrong' });
  });

  it('an error that is not plain error data becomes INTERNAL with its text', () => {
    const { context } = fold([failed('resolveWorld', 'socket hang up')]);
    expect(context.error).toEqual({ code: 'INTERNAL', message: 'socket hang up' });
    expect(context.created).toEqual([]);
  });

  it('the agent failing to run tears down with its error', () => {
    const { states, context } = fold([...upToLive, failed('agentExit', { code: 'AGENT_GONE', message: 'container vanished' }), done('teardown', { removed: [] })]);
    expect(states.slice(-3)).toEqual(['running', 'teardown', 'failed']);
    expect(context.error).toEqual({ code: 'AGENT_GONE', message: 'container vanished' });
    expect(context.exitCode).toBeNull();
  });

  it('every stable state of these runs has a CONTRACT name', () => {
    const contract = new Set(['resolving', 'probingOrphans', 'preparingSidecars', 'running', 'capabilityReview', 'teardown', 'done', 'failed']);
    const runs = [
      fold([...upToLive, { type: 'proposal.received', proposal: { id: 'p1', kind: 'allowlist', reason: 'r', change: { hosts: ['a.test'] } }, at: 1 }, { type: 'command.stop', commandId: 's' }]),
      fold([done('resolveWorld', world)], { ...input, agent: 'ghost' }),
      fold([{ type: 'command.stop', commandId: 's1' }, done('resolveWorld', world)]),
    ];
    for (const run of runs) for (const s of run.states) expect(contract.has(s), s).toBe(true);
  });
});
