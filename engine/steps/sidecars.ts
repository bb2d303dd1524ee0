import { BottleError } from '../../config/errors.js';
import type { CreatedResource } from '../../machines/bottle.machine.js';
import { gitGateFiles } from '../../machines/git-gate.js';
import type { BottlePlan } from '../../machines/plan.js';
import type { Readiness } from '../../machines/ports.js';
import {
  credProxyFiles,
  EGRESS_ALLOWLIST_PATH,
  netFixerSpec,
  netnsHolderSpec,
  secretHash,
  sidecarSpec,
  superviseFiles,
  workspaceVolumeSpec,
} from '../../machines/specs.js';
import { failWith, type PlanStepInput, type StepDeps, stagedPaths } from './deps.js';
import { currentView } from './review.js';

/**
 * The sidecars, in parallel, each waited for with its own readiness check, and meanwhile the
 * agent's network namespace (holder, default route removed). A sidecar is healthy only once
 * it has its policy: the egress proxy its allowlist, the cred-proxy every token, the git gate
 * its remotes, supervise the bottle's current capabilities; one without fails the start.
 */
export async function startSidecars(deps: StepDeps, input: PlanStepInput & { gateways: string[] }, signal: AbortSignal) {
  const { plan, runId } = input;
  const { runtime } = deps;
  const staged = stagedPaths(deps, plan, runId);
  const created: CreatedResource[] = [];
  const deadline = deps.sidecarDeadlineMs ?? 30_000;
  const netns = async () => {
    // The workspace volume first: the holder keeps it mounted for the whole run (a tmpfs volume
    // lives only while some container has it mounted).
    await runtime.ensureVolume(workspaceVolumeSpec(plan, runId), signal);
    created.push({ kind: 'volume', name: plan.volume });
    await runtime.ensureContainer(netnsHolderSpec(plan, runId), signal);
    created.push({ kind: 'container', name: plan.netns.holder, role: 'network' });
    await runtime.startContainer(plan.netns.holder, signal);
    await removeDefaultRoute(deps, plan, runId, signal);
  };
  // Each ref is read once, so the canary's hashes and the cred-proxy's files agree even if
  // a token file is replaced while the launch runs.
  const values = new Map<string, string>();
  const read = (ref: { file: string } | { env: string }) => {
    const key = JSON.stringify(ref);
    const value = values.get(key) ?? deps.secrets.read(ref);
    values.set(key, value);
    return value;
  };
  const secretHashes = plan.routes.map((r) => secretHash(read(r.token)));
  const results = await Promise.allSettled([
    netns(),
    ...plan.sidecars.map(async (s) => {
      const config = s.role === 'egress' ? [{ hostPath: staged.allowlistFile, containerPath: EGRESS_ALLOWLIST_PATH }] : [];
      await runtime.ensureContainer(sidecarSpec(plan, runId, s, config, input.gateways ?? [], s.role === 'egress' ? secretHashes : []), signal);
      created.push({ kind: 'container', name: s.name, role: s.role });
      // The real tokens reach the cred-proxy's container through the Docker API, read from
      // their refs now: never a staged host file, an env var or a log record.
      if (s.role === 'cred-proxy') await runtime.putFiles(s.name, credProxyFiles(plan, read), signal);
      // The git gate's keys, known_hosts, tokens and CAs take the same way, to the gate alone.
      if (s.role === 'git-gate') await runtime.putFiles(s.name, gitGateFiles(plan, read), signal);
      // The supervise sidecar is healthy once it knows what the agent may propose against.
      if (s.role === 'supervise') await runtime.putFiles(s.name, superviseFiles({ current: await currentView(deps, plan, plan.allowlist, []), decisions: [] }), signal);
      await runtime.startContainer(s.name, signal);
      await runtime.waitReady(s.name, readinessOf(s.role, s.port), deadline, signal);
    }),
  ]);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  // `created` is in the order things came to exist (teardown reverses it); the journal
  // records it, so replay and resume see the same order.
  if (failed) failWith(failed.reason, created);
  return { created };
}

function readinessOf(role: string, port: number): Readiness {
  return role === 'egress' || role === 'cred-proxy' || role === 'supervise' || role === 'git-gate' ? { kind: 'http', port, path: '/healthz' } : { kind: 'tcp', port };
}

/** Docker before 25 gives internal networks a default route: a one-shot fixer deletes it in the agent's namespace. */
export async function removeDefaultRoute(deps: StepDeps, plan: BottlePlan, runId: string, signal: AbortSignal) {
  const { runtime } = deps;
  const fixer = plan.netns.fixer;
  // A fixer left by a crash of an earlier attempt has either done its work or not: run it afresh.
  await runtime.removeContainer(fixer, signal);
  await runtime.ensureContainer(netFixerSpec(plan, runId), signal);
  try {
    await runtime.startContainer(fixer, signal);
    const { exitCode } = await runtime.waitExit(fixer, {}, signal);
    if (exitCode !== 0) {
      throw new BottleError('SIDECAR_UNHEALTHY', `could not remove the default route from the agent's network (${fixer} exited ${exitCode})`, 'rebuild the images (bottle images build) so the sidecar image has iproute2, then try again');
    }
  } finally {
    await runtime.removeContainer(fixer, signal);
  }
}
