import { posix } from 'node:path';
import { BottleError } from '../../config/errors.js';
import { parseEgressEntry } from '../../config/field-rules.js';
import type { Proposal } from '../../machines/bottle.machine.js';
import type { BottlePlan } from '../../machines/plan.js';
import type { ContainerSpec } from '../../machines/ports.js';
import { checkAddress, literalHost, privateBlocks, refusalText } from '../../config/address-policy.js';
import { approvedRoutes, approvedTokenPath, routeOf } from '../../machines/proposals.js';
import { AGENT_SESSION_DIR, agentSpec, allowlistFile, CRED_ROUTES_PATH, credCaPath, credTokenPath, SIDECAR_UID } from '../../machines/specs.js';
import { forwardedEnv, type PlanStepInput, type StepDeps, stagedPaths } from './deps.js';
import type { CanaryHashes } from './rotation.js';

/**
 * An approved change applied to the running bottle: an allowlist to the egress sidecar, a route
 * to the cred-proxy, a Dockerfile as a new per-bottle image and a recreated agent container
 * that keeps its workspace volume and its session state.
 */

/** Set while the agent container is being replaced: agentExit waits instead of ending the run. */
export const swapMarker = (stageDir: string) => posix.join(stageDir, 'agent-swap');

/**
 * Applies an approved Dockerfile: builds the per-bottle image (a failure leaves everything as
 * it was and fails the proposal with the build's error), then replaces the agent container
 * with one from the new image. The workspace is a volume and stays; the session state
 * (~/.claude) is copied from the old container into the new one and kept in the bottle's
 * transcript folder. Only then does the text become bottles/<identity>/Dockerfile.
 */
export async function applyDockerfile(
  deps: StepDeps,
  plan: BottlePlan,
  proposal: Proposal,
  stageDir: string,
  agentSpecFor: (image: string) => ContainerSpec,
  signal: AbortSignal,
): Promise<{ image: string }> {
  const { runtime } = deps;
  const text = proposal.change.dockerfile;
  if (typeof text !== 'string') throw new BottleError('USAGE', `proposal ${proposal.id} carries no Dockerfile text`, 'deny it');
  deps.progress(`building the image of proposal ${proposal.id}`);
  const { image } = await deps.capabilities.buildBottleImage(plan, text, deps.progress, signal);
  const marker = swapMarker(stageDir);
  await deps.files.writeText(marker, `${image}\n`);
  try {
    const existing = await runtime.inspectContainer(plan.container, signal);
    if (!(existing && existing.image === image && existing.state === 'running')) {
      deps.progress(`recreating ${plan.container} from ${image}`);
      // The session is kept on the host before the old container goes: a crash after its
      // removal finds it there when the step runs again.
      const kept = posix.join(deps.paths.transcriptDir(plan.identity), 'session.tar');
      let session: Buffer | null = null;
      if (existing) {
        await runtime.stopContainer(plan.container, 10, signal);
        session = await runtime.readArchive(plan.container, AGENT_SESSION_DIR, signal);
        if (session) await deps.files.writeText(kept, session);
        await runtime.removeContainer(plan.container, signal);
      } else {
        session = await deps.files.readBytes(kept);
      }
      await runtime.ensureContainer(agentSpecFor(image), signal);
      if (session) await runtime.writeArchive(plan.container, posix.dirname(AGENT_SESSION_DIR), session, signal);
      await runtime.startContainer(plan.container, signal);
    }
    await deps.files.writeText(deps.paths.perBottleDockerfile(plan.identity), text);
  } finally {
    await deps.files.remove(marker);
  }
  return { image };
}

/**
 * Applies an approved route: the cred-proxy gets a routes file with the route added; its token
 * is already in the proxy's container (the approving CLI put it there through the Docker API,
 * so the secret never passes through the engine's log or the owner's environment).
 */
export async function applyRoute(deps: StepDeps, plan: BottlePlan, proposal: Proposal, proposals: Proposal[], signal: AbortSignal): Promise<void> {
  const proxy = plan.sidecars.find((s) => s.role === 'cred-proxy');
  if (!proxy) {
    throw new BottleError('USAGE', `bottle '${plan.identity}' has no cred-proxy to add a route to`, 'deny it; routes need cred_proxy.routes in the manifest (at least one) for the proxy to run');
  }
  // The approving CLI judged the upstream (and resolved its name); an approval that reached the
  // mailbox another way is judged here too, as far as that needs no lookup: a literal address.
  const literal = literalHost(routeOf(proposal).upstream);
  const verdict = literal === undefined ? ({ ok: true } as const) : checkAddress(literal, { allow: privateBlocks(plan.privateNetworks ?? []) });
  if (!verdict.ok) {
    throw new BottleError('ADDRESS_REFUSED', `proposal ${proposal.id}: its upstream ${refusalText(verdict, 'the cred-proxy', plan.bottle)}`, `deny it: bottle deny ${plan.identity} ${proposal.id}`);
  }
  const token = await deps.runtime.readArchive(proxy.name, approvedTokenPath(proposal.id), signal);
  if (!token) {
    throw new BottleError('SECRET_UNREADABLE', `the secret for proposal ${proposal.id} did not reach ${proxy.name}`, `approve it again: bottle approve ${plan.identity} ${proposal.id} --token-env NAME`);
  }
  const { routes, file } = credRoutesFile(plan, proposals);
  const taken = new Set<string>();
  for (const r of routes) {
    if (taken.has(r.path)) throw new BottleError('USAGE', `proposal ${proposal.id}: the cred-proxy already has a route at ${r.path}`, 'deny it and ask for another path');
    taken.add(r.path);
  }
  await deps.runtime.putFiles(proxy.name, [file], signal);
}

/** The cred-proxy's routes.json for the manifest's routes and the approved ones (no secrets: paths to token files). */
export function credRoutesFile(plan: BottlePlan, proposals: Proposal[]) {
  const routes = [
    ...plan.routes.map((r, i) => ({ path: r.path, upstream: r.upstream, inject: r.inject, roles: r.roles, token_file: credTokenPath(i), ...(r.ca ? { ca_file: credCaPath(i) } : {}) })),
    ...approvedRoutes(proposals).map((p) => ({ ...routeOf(p), token_file: approvedTokenPath(p.id) })),
  ];
  return { routes, file: { containerPath: CRED_ROUTES_PATH, content: `${JSON.stringify({ routes }, null, 2)}\n`, mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID } };
}

/**
 * The approved proposal the machine marked `applying`, applied by kind. An allowlist addition
 * goes to the running egress sidecar as a new allowlist file, which the proxy reloads without
 * a restart and without dropping open connections.
 */
export async function applyProposal(
  deps: StepDeps,
  canary: CanaryHashes,
  input: PlanStepInput & { proposal: Proposal; allowlist: string[]; proposals?: Proposal[] },
  signal: AbortSignal,
) {
  const { plan, proposal } = input;
  if (proposal.kind === 'allowlist') {
    const bad = input.allowlist.map((e) => ({ e, r: parseEgressEntry(e) })).filter((x) => !x.r.ok);
    if (bad.length > 0) {
      throw new BottleError('USAGE', `proposal ${proposal.id}: not an egress entry: ${bad.map((b) => `'${b.e}'`).join(', ')}`, 'deny it and ask for host, host:port or *.domain');
    }
    const egress = plan.sidecars.find((s) => s.role === 'egress');
    if (!egress) throw new BottleError('INTERNAL', `bottle '${plan.identity}' has no egress sidecar`);
    await deps.runtime.putFiles(egress.name, [allowlistFile(input.allowlist)], signal);
    return { applied: true as const, allowlist: input.allowlist };
  }
  if (proposal.kind === 'route') {
    await applyRoute(deps, plan, proposal, input.proposals ?? [proposal], signal);
    await canary.push(plan, input.proposals ?? [proposal], signal);
    return { applied: true as const };
  }
  const staged = stagedPaths(deps, plan, input.runId);
  const { image } = await applyDockerfile(deps, plan, proposal, staged.dir, (img) => ({ ...agentSpec(plan, input.runId, staged, forwardedEnv(deps, plan)), image: img }), signal);
  return { applied: true as const, image };
}
