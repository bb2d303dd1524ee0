import type { Proposal, ProposalKind } from './bottle.machine.js';
import type { IncomingProposal } from './ports.js';
import { CRED_DIR, type SuperviseDecision } from './specs.js';

/**
 * Capability proposals as pure data: the host's second check of what the supervise sidecar
 * printed, the routes and decisions in force. The engine's steps (engine/steps/review.ts,
 * engine/steps/apply.ts) move them between the sidecar, the machine and the bottle.
 */

const KINDS: readonly ProposalKind[] = ['allowlist', 'dockerfile', 'route'];
const MAX_DOCKERFILE = 256 * 1024;
// Control characters other than tab and newline, DEL and C1, and the bidirectional controls
// that make text read differently from what it is.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is rejected
const UNSAFE_TEXT = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

/** Deeper than any valid proposal (route.inject.format is at depth 4): refused, never recursed into without bound. */
const MAX_DEPTH = 16;

function hasUnsafeText(value: unknown, depth = 0): boolean {
  if (typeof value === 'string') return UNSAFE_TEXT.test(value);
  // A line nested thousands deep would overflow the stack, and a throw here would stop the
  // host from reading every proposal printed after it.
  if (depth > MAX_DEPTH) return true;
  if (Array.isArray(value)) return value.some((v) => hasUnsafeText(v, depth + 1));
  if (value && typeof value === 'object') return Object.entries(value).some(([k, v]) => UNSAFE_TEXT.test(k) || hasUnsafeText(v, depth + 1));
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

export const routeOf = (p: Proposal) => p.change.route as RouteChange;
/** Route proposals in force: approved, or being applied now (the machine marks an approval `applying` before its step runs). */
export const approvedRoutes = (proposals: Proposal[]) => proposals.filter((p) => p.kind === 'route' && (p.status === 'approved' || p.status === 'applying'));
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
