import { BottleError } from '../../config/errors.js';
import type { BottlePlan } from '../../machines/plan.js';
import { swapMarker } from './apply.js';
import { isUnreachable, type PlanStepInput, type StepDeps, stagedPaths, waitForDocker, waitWhile } from './deps.js';
import { watchProposals } from './review.js';
import { type CanaryHashes, watchRotations } from './rotation.js';
import { removeDefaultRoute } from './sidecars.js';
import { firstDead, guardedContainers, type SidecarDeath, sidecarDied, watchSidecars } from './watchdog.js';

/**
 * Waits for the agent to exit. Meanwhile rotated secrets reach their sidecars, proposals
 * travel between the supervise sidecar and the machine, and an approved Dockerfile's
 * recreation of the container (the swap marker, or a new container id under the name) is
 * waited through instead of ending the run.
 *
 * Fail closed: a sidecar or the netns holder that stops while the agent runs stops the agent
 * at once and fails the step (SIDECAR_DIED), so the machine tears the bottle down with the
 * reason in the log. A Docker daemon that goes away is waited for; once it answers again the
 * bottle goes on only if it is whole (agent, every sidecar and the holder running, the default
 * route checked absent again), else it is torn down (DOCKER_RESTARTED).
 */
export async function agentExit(deps: StepDeps, canary: CanaryHashes, input: PlanStepInput, signal: AbortSignal) {
  const { plan, runId } = input;
  const { runtime } = deps;
  let death: SidecarDeath | null = null;
  const stopWatching = watchRotations(deps, canary, plan, signal);
  const stopProposals = watchProposals(deps, plan, runId, signal);
  const stopGuard = watchSidecars(deps, plan, signal, (d) => {
    death = d;
    deps.progress(`${d.name} (${d.role}) is ${d.state}: stopping the agent`);
    // SIGKILL at once: the agent gets no grace period without its policy.
    runtime.stopContainer(plan.container, 0, signal).catch((err: unknown) => deps.progress(`could not stop ${plan.container}: ${(err as Error).message}`));
  });
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
      if (death) throw sidecarDied(plan, death);
      if (isUnreachable(failure)) {
        await afterDaemonAbsence(deps, plan, runId, signal);
        continue;
      }
      // An approved Dockerfile replaces the agent's container: its end is not the agent's.
      if (await deps.files.exists(marker)) {
        await waitWhile(() => deps.files.exists(marker), signal);
        continue;
      }
      let now: Awaited<ReturnType<typeof runtime.inspectContainer>>;
      let dead: SidecarDeath | null;
      try {
        now = await runtime.inspectContainer(plan.container, signal);
        if (before && now && now.id !== before.id && now.state === 'running') continue;
        if (failure) throw failure;
        // An agent that ended as one of its sidecars did (a daemon shutting down stops them
        // all) did not end cleanly: that is said, not recorded as the agent's own exit.
        dead = await firstDead(deps, plan, signal);
      } catch (err) {
        if (!isUnreachable(err)) throw err;
        await afterDaemonAbsence(deps, plan, runId, signal);
        continue;
      }
      if (dead) throw sidecarDied(plan, dead);
      return result!;
    }
  } finally {
    stopGuard();
    stopWatching();
    stopProposals();
  }
}

/**
 * The daemon stopped answering under a running bottle. Once it is back: whole (everything
 * running, as with live-restore) means the route fixer runs again, so the agent's default
 * route is checked absent rather than assumed; anything missing means the bottle cannot be
 * trusted, and the step fails so it is torn down. A daemon that does not come back in time
 * fails the step with DOCKER_UNREACHABLE.
 */
async function afterDaemonAbsence(deps: StepDeps, plan: BottlePlan, runId: string, signal: AbortSignal): Promise<void> {
  const { runtime } = deps;
  deps.progress('Docker stopped answering while the agent ran; waiting for it to come back');
  await waitForDocker(deps, signal);
  const missing: string[] = [];
  for (const c of [{ name: plan.container, role: 'agent' }, ...guardedContainers(plan)]) {
    const info = await runtime.inspectContainer(c.name, signal);
    if (info?.state !== 'running') missing.push(`${c.name} (${c.role}: ${info?.state ?? 'gone'})`);
  }
  if (missing.length > 0) {
    // Whatever survived must not go on alone: the agent least of all.
    await runtime.stopContainer(plan.container, 0, signal);
    throw new BottleError(
      'DOCKER_RESTARTED',
      `the Docker daemon restarted under bottle '${plan.identity}' and not all of it survived: ${missing.join(', ')}; the bottle was torn down`,
      `start it again: bottle run ${plan.agent}   (its history: bottle audit ${plan.identity})`,
    );
  }
  deps.progress('Docker is back and the bottle is whole; checking that the agent still has no default route');
  await removeDefaultRoute(deps, plan, runId, signal);
}
