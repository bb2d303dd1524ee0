import { describe, expect, it } from 'vitest';
import { createMachine, initialTransition, setup, transition } from 'xstate';
import { validateManifest } from '../../../config/manifest.js';
import { bottleMachine, MACHINE_VERSION, stateName, type BottleInput } from '../../../machines/bottle.machine.js';
import { canonicalJson, machineVersion } from '../../../machines/machine-version.js';
import { doneEvent, machineInput } from '../../support/machine.js';

/**
 * MACHINE_VERSION is what a run records in run.started, and resume and replay refuse a
 * log whose version is not this engine's: changing the machine means the version changes
 * and the logs of the old machine are refused (finish them with the old release).
 *
 * So both tests below fail on purpose when the machine changes. Look at what changed, then:
 *  - the structure (states, transitions, guards, actions, invokes) changed: the version moved
 *    by itself; write the new value into EXPECTED_VERSION;
 *  - the pinned fold changed but the version did not (a guard, an action or planning now
 *    computes something else): bump BEHAVIOUR_REVISION in machines/bottle.machine.ts, then
 *    update EXPECTED_VERSION and the expected context.
 */
const EXPECTED_VERSION = 'bottle@0040cdd0aa1b';

describe('MACHINE_VERSION', () => {
  it('is the digest of the current definition', () => {
    expect(MACHINE_VERSION).toBe(EXPECTED_VERSION);
    // The constant every run recorded before the version was derived.
    expect(MACHINE_VERSION).not.toBe('bottle@1');
  });

  it('depends on the structure and the revision, not on the implementations the engine provides', () => {
    expect(machineVersion('bottle', bottleMachine, 2)).toBe(MACHINE_VERSION);
    expect(machineVersion('bottle', bottleMachine, 3)).not.toBe(MACHINE_VERSION);
    // The engine runs bottleMachine.provide({actors}); the version is the same machine's.
    expect(machineVersion('bottle', bottleMachine.provide({ actors: {} }), 2)).toBe(MACHINE_VERSION);

    const toy = (guard: 'a' | 'b', target: string) =>
      setup({ guards: { a: () => true, b: () => false } }).createMachine({
        id: 't',
        initial: 'x',
        states: { x: { on: { go: { guard, target } } }, y: {}, z: {} },
      });
    const base = machineVersion('t', toy('a', 'y'), 1);
    expect(machineVersion('t', toy('a', 'y'), 1)).toBe(base);
    expect(machineVersion('t', toy('b', 'y'), 1)).not.toBe(base);
    expect(machineVersion('t', toy('a', 'z'), 1)).not.toBe(base);
    const invoking = (id: string) => createMachine({ id: 't', initial: 'x', states: { x: { invoke: { id, src: 'step' } } } });
    expect(machineVersion('t', invoking('one'), 1)).not.toBe(machineVersion('t', invoking('two'), 1));
  });

  it('canonical JSON sorts keys and keeps array order', () => {
    expect(canonicalJson({ b: 1, a: [2, 1], c: undefined, d: { z: null, y: 'x' } })).toBe('{"a":[2,1],"b":1,"d":{"y":"x","z":null}}');
  });
});

const parsed = validateManifest({
  version: 1,
  bottles: { box: { egress: { allow: ['allowed.test'] }, supervise: true, env: { LEVEL: { value: 'debug' } } } },
  agents: { coder: { bottle: 'box', prompt: 'do the thing', command: ['fake-agent'] } },
});
if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));

const input: BottleInput = machineInput(parsed.manifest);

const done = (id: string, output: unknown) => doneEvent(id, output);
const CANARY_HASH = `20:${'ab'.repeat(32)}`;
const egress = { kind: 'container', name: 'bottle-coder-egress', role: 'egress' };
const agent = { kind: 'container', name: 'bottle-coder', role: 'agent' };
const net = { kind: 'network', name: 'bottle-coder-internal', role: 'network' };

/** A small run as the log records it: every step done, one proposal approved and applied, a stop. */
const script = [
  done('resolveWorld', { existingContainers: ['bottle-coder'], runtimes: ['runc', 'runsc'], perBottleDockerfile: false }),
  done('probeOrphans', { orphans: [], busy: [] }),
  done('stageFiles', { created: [{ kind: 'stage', name: '/stage' }] }),
  done('ensureImages', { built: [] }),
  done('createNetworks', { created: [net], gateways: ['10.0.0.1'] }),
  done('startSidecars', { created: [egress], gateways: ['10.0.0.1', '10.0.1.1'] }),
  done('createAgent', { created: [agent] }),
  { type: 'agent.output', bytes: 7 },
  // The canary learned a rotated token's hash: kept once, and only in the hash form (a
  // stray value in the event is never folded into the context).
  { type: 'canary.learned', hashes: [CANARY_HASH, 'not-a-hash value', CANARY_HASH] },
  { type: 'canary.learned', hashes: [CANARY_HASH] },
  { type: 'proposal.received', proposal: { id: 'p1', kind: 'allowlist', reason: 'npm', change: { hosts: ['NPM.test'] } }, at: 10 },
  { type: 'proposal.approve', commandId: 'c1', id: 'p1', by: 'me', at: 11 },
  done('applyProposal', { applied: true }),
  { type: 'command.stop', commandId: 'c2' },
  done('teardown', { removed: [agent, egress, net] }),
];

describe('the fold the version stands for', () => {
  it('a fixed script folds to this context', () => {
    let [snapshot] = initialTransition(bottleMachine, input);
    const states = [stateName(snapshot.value)];
    for (const event of script) {
      [snapshot] = transition(bottleMachine, snapshot, event as never);
      states.push(stateName(snapshot.value));
    }
    expect(states).toEqual([
      'resolving',
      'probingOrphans',
      ...Array(5).fill('preparingSidecars'),
      'running',
      'running',
      'running',
      'running',
      'capabilityReview',
      'capabilityReview',
      'running',
      'teardown',
      'done',
    ]);
    expect(snapshot.status).toBe('done');
    expect(snapshot.context).toEqual({
      input,
      // Planning runs inside the fold (from the input and resolveWorld's output), so a
      // change in machines/plan.ts changes what old logs fold to as well.
      plan: {
        identity: 'coder',
        home: '/home/u/.local/state/bot-bottle',
        agent: 'coder',
        bottle: 'box',
        cwd: null,
        // bottle-coder exists already: the next free name.
        container: 'bottle-coder-2',
        containerPinned: false,
        networks: { internal: 'bottle-coder-internal', egress: 'bottle-coder-egress-net' },
        netns: { holder: 'bottle-coder-netns', fixer: 'bottle-coder-netfix' },
        volume: 'bottle-coder-workspace',
        images: { image: 'bot-bottle/agent:abc', source: { kind: 'builtin' }, derived: null, runtime: 'bot-bottle/agent:abc', sidecar: 'bot-bottle/sidecar:def' },
        runtime: 'runsc',
        sidecars: [
          { role: 'egress', name: 'bottle-coder-egress', alias: 'egress', port: 3128, image: 'bot-bottle/sidecar:def', upstream: true },
          { role: 'supervise', name: 'bottle-coder-supervise', alias: 'supervise', port: 9100, image: 'bot-bottle/sidecar:def', upstream: false },
        ],
        allowlist: ['allowed.test'],
        env: {
          literals: { LEVEL: 'debug' },
          forwarded: {},
          agentSide: {
            HTTP_PROXY: 'http://egress:3128',
            HTTPS_PROXY: 'http://egress:3128',
            http_proxy: 'http://egress:3128',
            https_proxy: 'http://egress:3128',
            NO_PROXY: 'egress,supervise',
            no_proxy: 'egress,supervise',
            BOTTLE_PROMPT_FILE: '/run/bottle/prompt',
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
            DISABLE_ERROR_REPORTING: '1',
            BOTTLE_SUPERVISE_URL: 'http://supervise:9100',
          },
        },
        prompt: { text: 'do the thing' },
        command: ['fake-agent'],
        skills: [],
        routes: [],
        git: [],
        supervise: true,
        tty: false,
        // No `resources` in the manifest: the defaults (machines/limits.ts), pids for gVisor.
        limits: {
          agent: { cpus: 1, memoryBytes: 4 * 1024 ** 3, pids: 16384, workspaceBytes: 2 * 1024 ** 3, tmpBytes: 512 * 1024 ** 2, rootBytes: null, log: { maxBytes: 16 * 1024 ** 2, files: 3 } },
          sidecars: { cpus: 1, memoryBytes: 512 * 1024 ** 2, pids: 256, log: { maxBytes: 16 * 1024 ** 2, files: 3 } },
          proposals: { pending: 100, perMinute: 30 },
          audit: { burst: 1000, perSecond: 100, maxBytes: 24 * 1024 ** 2, summaryMs: 5000 },
        },
      },
      created: [{ kind: 'stage', name: '/stage' }, net, egress, agent],
      removed: [agent, egress, net],
      error: null,
      exitCode: null,
      stopRequested: true,
      commandsSeen: ['c1', 'c2'],
      proposals: [
        { id: 'p1', kind: 'allowlist', reason: 'npm', change: { hosts: ['NPM.test'] }, status: 'approved', receivedAt: 10, decidedAt: 11, decision: { by: 'me' } },
      ],
      orphans: [],
      outputBytes: 7,
      gateways: ['10.0.0.1', '10.0.1.1'],
      canaryHashes: [CANARY_HASH],
    });
  });
});
