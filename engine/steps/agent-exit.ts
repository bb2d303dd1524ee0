import { type PlanStepInput, type StepDeps, stagedPaths, waitWhile } from './deps.js';
import { swapMarker } from './apply.js';
import { watchProposals } from './review.js';
import { type CanaryHashes, watchRotations } from './rotation.js';

/**
 * Waits for the agent to exit. Meanwhile rotated secrets reach their sidecars, proposals
 * travel between the supervise sidecar and the machine, and an approved Dockerfile's
 * recreation of the container (the swap marker, or a new container id under the name) is
 * waited through instead of ending the run.
 */
export async function agentExit(deps: StepDeps, canary: CanaryHashes, input: PlanStepInput, signal: AbortSignal) {
  const { plan, runId } = input;
  const { runtime } = deps;
  const stopWatching = watchRotations(deps, canary, plan, signal);
  const stopProposals = watchProposals(deps, plan, runId, signal);
  const marker = swapMarker(stagedPaths(deps, plan, runId).dir);
  try {
    for (;;) {
      const before = await runtime.inspectContainer(plan.container, signal);
      let result: { exitCode: number } | null = null;
      let failure: unknown = null;
      try {
        result = await runtime.waitExit(plan.container, { ...(deps.io ? { io: deps.io } : {}), logFile: deps.paths.agentLog(plan.identity, runId) }, signal);
      } catch (err) {
        if (signal.aborted) throw err;
        failure = err;
      }
      // An approved Dockerfile replaces the agent's container: its end is not the agent's.
      if (await deps.files.exists(marker)) {
        await waitWhile(() => deps.files.exists(marker), signal);
        continue;
      }
      const now = await runtime.inspectContainer(plan.container, signal);
      if (before && now && now.id !== before.id && now.state === 'running') continue;
      if (failure) throw failure;
      return result!;
    }
  } finally {
    stopWatching();
    stopProposals();
  }
}
