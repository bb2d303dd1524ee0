import type { ResolveOutput } from '../../machines/bottle.machine.js';
import { LABEL, type LabelledObject } from '../../machines/ports.js';
import type { StepDeps } from './deps.js';

/** The world's facts the pure plan needs: existing container names, runtimes, a per-bottle Dockerfile. */
export async function resolveWorld(deps: StepDeps, input: { identity: string; probeNames: string[] }, signal: AbortSignal): Promise<ResolveOutput> {
  const [info, existing, perBottle] = await Promise.all([
    deps.runtime.info(signal),
    deps.runtime.existingContainers(input.probeNames, signal),
    deps.files.exists(deps.paths.perBottleDockerfile(input.identity)),
  ]);
  return { existingContainers: existing.sort(), runtimes: [...info.runtimes].sort(), perBottleDockerfile: perBottle };
}

/**
 * Objects of this identity from other runs: a dead run's are orphans (the launch stops and
 * names `bottle cleanup`); a live run's, from this store or another BOTTLE_HOME, mean the
 * bottle is busy, and the launch stops without touching them.
 */
export async function probeOrphans(deps: StepDeps, input: { identity: string; runId: string }, signal: AbortSignal) {
  const objects = await deps.runtime.listLabelled({ [LABEL.identity]: input.identity }, signal);
  const orphans: LabelledObject[] = [];
  const busy: LabelledObject[] = [];
  for (const o of objects) {
    const run = o.labels[LABEL.run] ?? '';
    if (run === input.runId) continue;
    ((await deps.runs.isLive(o.labels[LABEL.home], input.identity, run)) ? busy : orphans).push(o);
  }
  const order = (a: LabelledObject, b: LabelledObject) => (a.kind + a.name).localeCompare(b.kind + b.name);
  return { orphans: orphans.sort(order), busy: busy.sort(order) };
}
