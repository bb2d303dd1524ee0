import { BottleError } from '../../config/errors.js';
import type { CreatedResource } from '../../machines/bottle.machine.js';
import { LABEL } from '../../machines/ports.js';
import { isUnreachable, type StepDeps, waitForDocker } from './deps.js';

const AUDITED_ROLES = new Set(['egress', 'cred-proxy', 'supervise', 'git-gate']);

/**
 * Removes what the run created, in the order given (the machine passes it reversed), then
 * sweeps anything else labelled with this run: a crash in the middle of a step can leave an
 * object the context never listed, and the run label says it is ours, so that is still exact.
 */
export async function teardown(deps: StepDeps, input: { identity: string; runId: string; resources: CreatedResource[] }, signal: AbortSignal) {
  const removed: CreatedResource[] = [];
  // Only a run that made Docker objects waits for a daemon that went away; one that never
  // reached Docker fails its teardown at once, as before.
  const patient = input.resources.some((r) => r.kind !== 'stage');
  const whenDockerAnswers = <T>(fn: () => Promise<T>) => (patient ? retryWhenDockerAnswers(deps, signal, fn) : fn());
  for (const r of input.resources) {
    await whenDockerAnswers(() => removeResource(deps, r, signal, input.identity));
    removed.push(r);
  }
  const stray = await whenDockerAnswers(() => deps.runtime.listLabelled({ [LABEL.identity]: input.identity, [LABEL.run]: input.runId }, signal));
  const rank = { container: 0, network: 1, volume: 2 } as const;
  for (const o of stray.sort((a, b) => rank[a.kind] - rank[b.kind])) {
    const role = o.labels[LABEL.role];
    const r: CreatedResource = { kind: o.kind, name: o.name, ...(role ? { role } : {}) };
    await whenDockerAnswers(() => removeResource(deps, r, signal, input.identity));
    removed.push(r);
  }
  return { removed };
}

async function removeResource(deps: StepDeps, r: CreatedResource, signal: AbortSignal, identity: string) {
  switch (r.kind) {
    case 'container':
      // Sidecars write their audit lines to stdout; they are kept before the container goes.
      if (r.role && AUDITED_ROLES.has(r.role)) await collectAudit(deps, identity, r.name, r.role, signal);
      await deps.runtime.removeContainer(r.name, signal);
      break;
    case 'network':
      await deps.runtime.removeNetwork(r.name, signal);
      break;
    case 'volume':
      await deps.runtime.removeVolume(r.name, signal);
      break;
    case 'stage':
      await deps.stager.removeDir(r.name);
      break;
  }
}

async function collectAudit(deps: StepDeps, identity: string, container: string, source: string, signal: AbortSignal) {
  // Stopped first (SIGTERM), so a sidecar writes the summary of the audit lines its budget
  // held back since the last one (sidecars/common/audit-budget.ts) before its output is read.
  await deps.runtime.stopContainer(container, 3, signal);
  const lines = (await deps.runtime.readStdout(container, signal)).split('\n').filter((l) => l.trim().startsWith('{'));
  if (lines.length > 0) await deps.audit.append(identity, source, lines);
}

/**
 * A teardown that meets a daemon restarting (the reason the bottle is being torn down, often)
 * waits for it and carries on, rather than leaving the bottle's objects behind. A daemon on its
 * way down still answers for a moment, with errors of its closing store: those are tried again
 * a few times, after which the daemon is either gone (waited for) or the error is real.
 */
async function retryWhenDockerAnswers<T>(deps: StepDeps, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (signal.aborted) throw err;
      if (isUnreachable(err)) {
        deps.progress('Docker is not answering; teardown waits for it to come back');
        await waitForDocker(deps, signal);
        continue;
      }
      if (!(err instanceof BottleError && err.code === 'DOCKER_ERROR') || attempt >= TRIES) throw err;
      await new Promise((r) => setTimeout(r, 1000 * attempt));
    }
  }
}

const TRIES = 5;
