import { posix } from 'node:path';
import { BottleError } from '../config/errors.js';
import type { Proposal, ProposalKind } from '../machines/bottle.machine.js';
import { unifiedDiff } from '../machines/diff.js';
import type { BottlePlan } from '../machines/plan.js';
import type { ContainerSpec, IncomingProposal } from '../machines/ports.js';
import {
  AGENT_SESSION_DIR,
  CRED_DIR,
  CRED_ROUTES_PATH,
  credCaPath,
  credTokenPath,
  DOCKERFILE_TEMPLATE,
  SIDECAR_UID,
  type SuperviseCurrent,
  type SuperviseDecision,
  superviseFiles,
} from '../machines/specs.js';
import type { StepDeps } from './steps.js';

/**
 * Capability review on the host side: proposals travel from the supervise sidecar's stdout to
 * the run's owner (a queue file and a mailbox command, see ProposalBoard), the machine's
 * decisions travel back into the sidecar as files, and an approved change is applied to the
 * running bottle: an allowlist to egress (steps.ts), a route to the cred-proxy, a Dockerfile
 * as a new per-bottle image and a recreated agent container that keeps its workspace volume
 * and its session state.
 */

const KINDS: readonly ProposalKind[] = ['allowlist', 'dockerfile', 'route'];
const MAX_DOCKERFILE = 256 * 1024;
const POLL_MS = 400;
// Control characters other than tab and newline, DEL and C1, and the bidirectional controls
// that make text read differently from what it is.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is rejected
const UNSAFE_TEXT = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

function hasUnsafeText(value: unknown): boolean {
  if (typeof value === 'string') return UNSAFE_TEXT.test(value);
  if (Array.isArray(value)) return value.some(hasUnsafeText);
  if (value && typeof value === 'object') return Object.entries(value).some(([k, v]) => UNSAFE_TEXT.test(k) || hasUnsafeText(v));
  return false;
}

/** The token file of a route approved at run time (the approving CLI puts it there). */
export const approvedTokenPath = (proposalId: string) => `${CRED_DIR}/secrets/${proposalId}`;

/**
 * The sidecar validated the proposal already; the host checks the shape again, because the
 * sidecar shares the bottle with the agent and the owner must not trust its stdout blindly.
 */
export function checkIncoming(value: unknown): IncomingProposal | null {
  if (!value || typeof value !== 'object') return null;
  // What a human will read in a terminal carries no control or bidirectional-override
  // characters (tab and newline aside), whatever the sidecar let through.
  if (hasUnsafeText(value)) return null;
  const p = value as Record<string, unknown>;
  const change = p.change as Record<string, unknown> | undefined;
  if (typeof p.id !== 'string' || !/^p[a-z0-9]{6,32}$/.test(p.id)) return null;
  if (typeof p.kind !== 'string' || !KINDS.includes(p.kind as ProposalKind)) return null;
  if (typeof p.reason !== 'string' || p.reason.length === 0 || p.reason.length > 2000) return null;
  if (!change || typeof change !== 'object') return null;
  const kind = p.kind as ProposalKind;
  if (kind === 'allowlist') {
    const hosts = change.hosts;
    if (!Array.isArray(hosts) || hosts.length === 0 || hosts.length > 50 || !hosts.every((h) => typeof h === 'string' && h.length <= 260)) return null;
    return { id: p.id, kind, reason: p.reason, change: { hosts } };
  }
  if (kind === 'dockerfile') {
    if (typeof change.dockerfile !== 'string' || change.dockerfile.length === 0 || Buffer.byteLength(change.dockerfile) > MAX_DOCKERFILE) return null;
    return { id: p.id, kind, reason: p.reason, change: { dockerfile: change.dockerfile } };
  }
  const r = change.route as Record<string, unknown> | undefined;
  const inject = r?.inject as Record<string, unknown> | undefined;
  if (!r || typeof r.path !== 'string' || typeof r.upstream !== 'string' || !inject || typeof inject.header !== 'string' || typeof inject.format !== 'string') return null;
  const roles = Array.isArray(r.roles) ? r.roles.filter((x): x is string => typeof x === 'string') : [];
  return { id: p.id, kind, reason: p.reason, change: { route: { path: r.path, upstream: r.upstream, inject: { header: inject.header, format: inject.format }, roles } } };
}

interface RouteChange {
  path: string;
  upstream: string;
  inject: { header: string; format: string };
  roles: string[];
}

const routeOf = (p: Proposal) => p.change.route as RouteChange;
/** Route proposals in force: approved, or being applied now (the machine marks an approval `applying` before its step runs). */
export const approvedRoutes = (proposals: Proposal[]) => proposals.filter((p) => p.kind === 'route' && (p.status === 'approved' || p.status === 'applying'));

/** What the supervise sidecar shows the agent: the Dockerfile, the allowlist in force, the routes without secrets. */
export async function currentView(deps: StepDeps, plan: BottlePlan, allowlist: string[], proposals: Proposal[]): Promise<SuperviseCurrent> {
  const file = deps.paths.perBottleDockerfile(plan.identity);
  const dockerfile = (await deps.files.exists(file)) ? await deps.files.readText(file) : DOCKERFILE_TEMPLATE;
  const routes = [
    ...plan.routes.map((r) => ({ path: r.path, upstream: r.upstream, inject: r.inject, roles: r.roles })),
    ...approvedRoutes(proposals).map(routeOf),
  ];
  return { dockerfile, allowlist, routes };
}

/** Decided proposals as the agent sees them: an approval counts once it has been applied. */
export function decisionsOf(proposals: Proposal[]): SuperviseDecision[] {
  const out: SuperviseDecision[] = [];
  for (const p of proposals) {
    if (p.status !== 'approved' && p.status !== 'denied' && p.status !== 'failed') continue;
    out.push({
      id: p.id,
      status: p.status,
      ...(p.decision?.reason ? { reason: p.decision.reason } : {}),
      ...(p.error ? { error: p.error.message } : {}),
      ...(p.decidedAt ? { at: new Date(p.decidedAt).toISOString() } : {}),
    });
  }
  return out;
}

/**
 * While the agent runs: proposals the sidecar printed go to the board (each id once; the
 * board and the machine both ignore an id they have), and the sidecar's view of the current
 * capabilities and of the decisions follows the machine's. Returns a stop function.
 */
export function watchProposals(deps: StepDeps, plan: BottlePlan, runId: string, signal: AbortSignal): () => void {
  const supervise = plan.sidecars.find((s) => s.role === 'supervise');
  const board = deps.board;
  if (!supervise || !board) return () => undefined;
  const submitted = new Set<string>();
  let pushedFor: Proposal[] | undefined;
  let pushedText = '';
  let stopped = false;
  let lastProblem = '';
  let wake: (() => void) | null = null;

  const tick = async () => {
    const out = await deps.runtime.readStdout(supervise.name, signal);
    const known = new Set((board.view()?.proposals ?? []).map((p) => p.id));
    for (const line of out.split('\n')) {
      if (!line.startsWith('{') || !line.includes('"proposal"')) continue;
      let rec: { type?: unknown; proposal?: unknown };
      try {
        rec = JSON.parse(line);
      } catch {
        continue;
      }
      if (rec.type !== 'proposal') continue;
      const p = checkIncoming(rec.proposal);
      if (!p) {
        deps.progress(`supervise printed a proposal the engine does not accept; ignored: ${line.slice(0, 200)}`);
        continue;
      }
      if (submitted.has(p.id) || known.has(p.id)) continue;
      if (p.kind === 'dockerfile') {
        // The human reviews the change as a diff against the Dockerfile in force now; the
        // log keeps that diff, so the audit's hash of it never depends on later approvals.
        const view = board.view();
        const base = (await currentView(deps, plan, view?.allowlist ?? plan.allowlist, view?.proposals ?? [])).dockerfile;
        p.change.diff = unifiedDiff(base, String(p.change.dockerfile), { a: 'Dockerfile (current)', b: `Dockerfile (proposal ${p.id})` });
      }
      await board.submit(plan.identity, runId, p);
      submitted.add(p.id);
      deps.progress(`proposal ${p.id} (${p.kind}): ${p.reason}  -> bottle proposals ${plan.identity}`);
    }
    // The sidecar's files follow the machine's proposals (the allowlist and the Dockerfile in
    // force change only through them): nothing to read or push while they are the ones pushed.
    const view = board.view();
    if (!view || view.proposals === pushedFor) return;
    const current = await currentView(deps, plan, view.allowlist, view.proposals);
    const decisions = decisionsOf(view.proposals);
    const text = JSON.stringify({ current, decisions });
    if (text !== pushedText) {
      await deps.runtime.putFiles(supervise.name, superviseFiles({ current, decisions }), signal);
      pushedText = text;
    }
    pushedFor = view.proposals;
  };

  // A decision reaches the sidecar as soon as the machine has it, not at the next poll.
  let dirty = false;
  const stopListening = board.onChange?.(() => {
    dirty = true;
    wake?.();
  });
  const loop = async () => {
    while (!stopped && !signal.aborted) {
      dirty = false;
      try {
        await tick();
        lastProblem = '';
      } catch (err) {
        const msg = (err as Error).message ?? String(err);
        // Said once per distinct problem, not every poll.
        if (msg !== lastProblem && !stopped && !signal.aborted) deps.progress(`supervise: ${msg}`);
        lastProblem = msg;
      }
      if (dirty) continue;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, POLL_MS);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  };
  void loop();
  return () => {
    stopped = true;
    stopListening?.();
    wake?.();
  };
}

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
  const token = await deps.runtime.readArchive(proxy.name, approvedTokenPath(proposal.id), signal);
  if (!token) {
    throw new BottleError('SECRET_UNREADABLE', `the secret for proposal ${proposal.id} did not reach ${proxy.name}`, `approve it again: bottle approve ${plan.identity} ${proposal.id} --token-env NAME`);
  }
  const routes = [
    ...plan.routes.map((r, i) => ({ path: r.path, upstream: r.upstream, inject: r.inject, roles: r.roles, token_file: credTokenPath(i), ...(r.ca ? { ca_file: credCaPath(i) } : {}) })),
    ...approvedRoutes(proposals).map((p) => ({ ...routeOf(p), token_file: approvedTokenPath(p.id) })),
  ];
  const taken = new Set<string>();
  for (const r of routes) {
    if (taken.has(r.path)) throw new BottleError('USAGE', `proposal ${proposal.id}: the cred-proxy already has a route at ${r.path}`, 'deny it and ask for another path');
    taken.add(r.path);
  }
  await deps.runtime.putFiles(
    proxy.name,
    [{ containerPath: CRED_ROUTES_PATH, content: `${JSON.stringify({ routes }, null, 2)}\n`, mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID }],
    signal,
  );
}
