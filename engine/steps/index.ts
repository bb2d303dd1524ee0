import type { StepId } from '../../machines/bottle.machine.js';
import { agentExit } from './agent-exit.js';
import { applyProposal } from './apply.js';
import type { StepDeps, StepFn } from './deps.js';
import { createAgent, createNetworks, ensureImages, stageFiles } from './prepare.js';
import { CanaryHashes } from './rotation.js';
import { startSidecars } from './sidecars.js';
import { teardown } from './teardown.js';
import { probeOrphans, resolveWorld } from './world.js';

export type { StepDeps, StepFn } from './deps.js';

/**
 * The machine's steps (Temporal's activities), one named function each, bound to the ports
 * they are built from (createActivities(deps)). Each is idempotent or reconciles, because a
 * restored machine runs the invocation of its current state again: names are deterministic,
 * `ensure*` adopts what exists, removal of what is gone succeeds. A step that fails after
 * creating something reports it in `created`, so teardown removes exactly what exists.
 */
export function createSteps(deps: StepDeps): Record<StepId, StepFn> {
  // Shared by the two steps that change what the egress canary must know.
  const canary = new CanaryHashes(deps);
  const steps = {
    resolveWorld: (input: Parameters<typeof resolveWorld>[1], signal: AbortSignal) => resolveWorld(deps, input, signal),
    probeOrphans: (input: Parameters<typeof probeOrphans>[1], signal: AbortSignal) => probeOrphans(deps, input, signal),
    stageFiles: (input: Parameters<typeof stageFiles>[1]) => stageFiles(deps, input),
    ensureImages: (input: Parameters<typeof ensureImages>[1], signal: AbortSignal) => ensureImages(deps, input, signal),
    createNetworks: (input: Parameters<typeof createNetworks>[1], signal: AbortSignal) => createNetworks(deps, input, signal),
    startSidecars: (input: Parameters<typeof startSidecars>[1], signal: AbortSignal) => startSidecars(deps, input, signal),
    createAgent: (input: Parameters<typeof createAgent>[1], signal: AbortSignal) => createAgent(deps, input, signal),
    agentExit: (input: Parameters<typeof agentExit>[2], signal: AbortSignal) => agentExit(deps, canary, input, signal),
    applyProposal: (input: Parameters<typeof applyProposal>[2], signal: AbortSignal) => applyProposal(deps, canary, input, signal),
    teardown: (input: Parameters<typeof teardown>[1], signal: AbortSignal) => teardown(deps, input, signal),
  } satisfies Record<StepId, (input: never, signal: AbortSignal) => Promise<unknown>>;
  return steps;
}
