import { BottleError } from '../../config/errors.js';
import type { BottlePlan } from '../../machines/plan.js';
import type { StepDeps } from './deps.js';

/**
 * Fail closed while the agent runs: the sidecars are its only ways out and the holder owns its
 * network namespace, so if one of them stops (killed, crashed, OOM) the agent must not go on
 * with a way out missing its policy, or with no policy at all. The watchdog looks at each of
 * them every `everyMs`; the first that is not running is reported once, and the caller stops
 * the agent and tears the bottle down with the reason in the log.
 */

export const WATCH_EVERY_MS = 1000;

export interface SidecarDeath {
  name: string;
  role: string;
  /** What Docker says: exited, dead, gone, ... */
  state: string;
}

/** The containers the agent's confinement rests on: every sidecar and the netns holder. */
export function guardedContainers(plan: BottlePlan): { name: string; role: string }[] {
  return [...plan.sidecars.map((s) => ({ name: s.name, role: s.role })), { name: plan.netns.holder, role: 'network' }];
}

/**
 * Starts watching; `onDeath` is called at most once. Docker not answering is not a death:
 * the caller handles the daemon's absence (it waits for it, then looks again). Returns stop().
 */
export function watchSidecars(deps: Pick<StepDeps, 'runtime' | 'progress'>, plan: BottlePlan, signal: AbortSignal, onDeath: (d: SidecarDeath) => void, everyMs = WATCH_EVERY_MS): () => void {
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let lastProblem = '';
  const look = async () => {
    if (stopped || signal.aborted) return;
    try {
      const dead = await firstDead(deps, plan, signal);
      if (stopped || signal.aborted) return;
      if (dead) {
        stopped = true;
        onDeath(dead);
        return;
      }
      lastProblem = '';
    } catch (err) {
      // Docker not answering is the daemon's absence, which agentExit handles; anything else
      // is said once per distinct problem, and the watch goes on.
      const msg = (err as Error).message ?? String(err);
      if (!(err instanceof BottleError && err.code === 'DOCKER_UNREACHABLE') && !signal.aborted && msg !== lastProblem) deps.progress(`sidecar watch: ${msg}`);
      lastProblem = msg;
    }
    if (!stopped) timer = setTimeout(look, everyMs);
  };
  timer = setTimeout(look, everyMs);
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}

/** The first sidecar (or the holder) that is not running, or null. */
export async function firstDead(deps: Pick<StepDeps, 'runtime'>, plan: BottlePlan, signal: AbortSignal): Promise<SidecarDeath | null> {
  for (const c of guardedContainers(plan)) {
    const info = await deps.runtime.inspectContainer(c.name, signal);
    if (info?.state !== 'running') return { ...c, state: info?.state ?? 'gone' };
  }
  return null;
}

export function sidecarDied(plan: BottlePlan, d: SidecarDeath): BottleError {
  const what = d.role === 'network' ? "the holder of the agent's network namespace" : `the ${d.role} sidecar`;
  return new BottleError(
    'SIDECAR_DIED',
    `${what} (${d.name}) stopped while the agent ran (${d.state}); the agent was stopped at once and the bottle torn down, so it never ran without its policy`,
    `see what happened with 'bottle audit ${plan.identity}', then start it again: bottle run ${plan.agent}`,
  );
}
