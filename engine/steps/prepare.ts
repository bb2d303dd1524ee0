import { BottleError } from '../../config/errors.js';
import type { CreatedResource } from '../../machines/bottle.machine.js';
import type { BottlePlan } from '../../machines/plan.js';
import { limitsLines } from '../../machines/limits.js';
import { agentSpec, labelsFor, workspaceVolumeSpec } from '../../machines/specs.js';
import { failWith, forwardedEnv, type PlanStepInput, type StepDeps, stagedPaths } from './deps.js';

/** The run's files on the host, mode 0600: the agent's env-file (literals only), its prompt, the allowlist. */
export async function stageFiles(deps: StepDeps, input: PlanStepInput) {
  const { plan, runId } = input;
  const staged = stagedPaths(deps, plan, runId);
  const prompt = 'text' in plan.prompt ? plan.prompt.text : await readPrompt(deps, plan.prompt.file, plan.agent);
  const envLines = Object.entries(plan.env.literals).map(([k, v]) => {
    // docker's env-file format has no quoting: a newline would smuggle a second variable.
    if (/[\n\r\0]/.test(v)) throw new BottleError('MANIFEST_INVALID', `env ${k}: a literal value may not contain a newline`, 'run `bottle validate`');
    return `${k}=${v}\n`;
  });
  await deps.stager.stage(staged.dir, [
    { name: 'agent.env', content: envLines.join('') },
    { name: 'prompt', content: prompt },
    { name: 'allowlist', content: plan.allowlist.map((h) => `${h}\n`).join('') },
  ]);
  return { created: [{ kind: 'stage', name: staged.dir }] as CreatedResource[] };
}

async function readPrompt(deps: StepDeps, file: string, agent: string) {
  try {
    return await deps.files.readText(file);
  } catch (err) {
    throw new BottleError('MANIFEST_INVALID', `agents.${agent}.prompt_file: cannot read ${file}: ${(err as Error).message}`, 'fix the path in the manifest, then `bottle validate`');
  }
}

export async function ensureImages(deps: StepDeps, input: { plan: BottlePlan }, signal: AbortSignal) {
  return deps.images.ensureForPlan(input.plan, deps.progress, signal);
}

/** The internal network (no gateway) and the egress network; their gateways and the Docker host's addresses are what sidecars never dial. */
export async function createNetworks(deps: StepDeps, input: PlanStepInput, signal: AbortSignal) {
  const { plan, runId } = input;
  const created: CreatedResource[] = [];
  const gateways: string[] = [];
  try {
    for (const [name, internal] of [
      [plan.networks.internal, true],
      [plan.networks.egress, false],
    ] as const) {
      const net = await deps.runtime.ensureNetwork({ name, internal, labels: labelsFor(plan, runId, 'network') }, signal);
      created.push({ kind: 'network', name, role: internal ? 'internal' : 'egress' });
      if (net.gateway) gateways.push(net.gateway);
    }
    // And every address of the Docker host (its bridges' gateways, its interfaces): the sidecars
    // never dial those either, not even inside private_networks. Gathered once per launch and
    // journaled with this step's output, so a resumed run gives its sidecars the same list.
    gateways.push(...(await deps.runtime.hostAddresses(signal)).filter((a) => !gateways.includes(a)));
  } catch (err) {
    failWith(err, created);
  }
  return { created, gateways };
}

/** The workspace volume and the agent container, joined to the netns holder's namespace. */
export async function createAgent(deps: StepDeps, input: PlanStepInput, signal: AbortSignal) {
  const { plan, runId } = input;
  const staged = stagedPaths(deps, plan, runId);
  const created: CreatedResource[] = [];
  try {
    const forwarded = forwardedEnv(deps, plan);
    // Created (and listed for teardown) with the netns holder, which keeps it mounted; here it is only adopted.
    await deps.runtime.ensureVolume(workspaceVolumeSpec(plan, runId), signal);
    deps.progress(limitsLines(plan.limits).join('\n  '));
    await deps.runtime.ensureContainer(agentSpec(plan, runId, staged, forwarded), signal);
    created.push({ kind: 'container', name: plan.container, role: 'agent' });
    await deps.runtime.startContainer(plan.container, signal);
  } catch (err) {
    failWith(err, created);
  }
  return { created };
}
