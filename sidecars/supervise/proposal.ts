/**
 * What the agent may propose, checked before anything is queued: a proposal is a strict JSON
 * object of one of three kinds, and every problem is reported at once with the path of the
 * offending value (`hosts[0]`, `route.inject.format`, ...). Pure: no I/O, so the host can run
 * the same checks on a change it is about to apply.
 *
 * The single-value rules are the manifest's (config/field-rules.ts), so a proposal that passes
 * here is something the manifest would also accept.
 */
import { z } from 'zod';
import {
  headerNameProblem,
  injectFormatProblem,
  parseEgressEntry,
  routePathProblem,
  routeRoleProblem,
  routeUpstreamProblem,
} from '../../config/field-rules.js';
import { checkedString, formatPath, strict } from '../../config/manifest.js';

export const PROPOSAL_KINDS = ['allowlist', 'dockerfile', 'route'] as const;
export type ProposalKind = (typeof PROPOSAL_KINDS)[number];

export const LIMITS = {
  reasonChars: 2000,
  hosts: 50,
  dockerfileBytes: 256 * 1024,
  roles: 8,
} as const;

export interface RouteChange {
  path: string;
  upstream: string;
  inject: { header: string; format: string };
  roles: string[];
}

/** The change itself, as the host receives it in a proposal line. */
export type ProposalChange = { hosts: string[] } | { dockerfile: string } | { route: RouteChange };

/** A proposal that passed every check (hosts lowercased, route roles defaulted to []). */
export type ValidProposal =
  | { kind: 'allowlist'; reason: string; change: { hosts: string[] } }
  | { kind: 'dockerfile'; reason: string; change: { dockerfile: string } }
  | { kind: 'route'; reason: string; change: { route: RouteChange } };

export interface ProposalIssue {
  /** Where the problem is, as in `hosts[0]` or `route.inject.format`; `(root)` for the whole body. */
  path: string;
  message: string;
}

export type ProposalResult = { ok: true; proposal: ValidProposal } | { ok: false; error: string; issues: ProposalIssue[] };

/** At most this many issues are reported (a body of 50 bad hosts still gets all 50). */
const MAX_ISSUES = 100;

// ---- single values ----------------------------------------------------------------------

/**
 * Text a human reads in a terminal (reason, Dockerfile): control characters could rewrite what
 * the terminal shows, and bidirectional controls can make text read differently than it is
 * ("Trojan Source"); tab and newline are fine.
 */
function displayTextProblem(text: string): string | undefined {
  // A carriage return too: it moves the cursor back over what the line showed (and the host
  // refuses it, so a proposal with one would be queued here and never reach a human).
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is rejected
  if (/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/.test(text)) return 'must not contain control characters (tab and newline are fine)';
  if (/[\u200e\u200f\u202a-\u202e\u2066-\u2069]/.test(text)) return 'must not contain bidirectional control characters (they make text read differently than it is)';
  return undefined;
}

function reasonProblem(reason: string): string | undefined {
  if (reason !== '' && reason.trim() === '') return 'must not be blank: say why the change is needed';
  return displayTextProblem(reason);
}

/** A FROM instruction: the first word of a line, case-insensitive, followed by an image. */
const FROM_LINE = /^[ \t]*from[ \t]+\S/im;

export function dockerfileProblem(text: string): string | undefined {
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > LIMITS.dockerfileBytes) return `is ${bytes} bytes; at most ${LIMITS.dockerfileBytes} (256 KiB)`;
  if (text.includes('\0')) return 'must not contain a NUL byte';
  const display = displayTextProblem(text);
  if (display !== undefined) return display;
  if (!FROM_LINE.test(text)) return 'has no FROM instruction (send the whole new Dockerfile, starting from its FROM line)';
  return undefined;
}

/** The manifest's rule, with spaces and control characters refused (URL parsing would silently drop some). */
function upstreamProblem(raw: string): string | undefined {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is rejected
  if (/[\u0000-\u0020\u007f]/.test(raw)) return 'must not contain spaces or control characters';
  const problem = routeUpstreamProblem(raw);
  return problem?.replace('put the secret in token', 'the human names the secret when approving');
}

/** Keys that look like they carry a credential: a proposal never may. */
const SECRET_KEY = /token|secret|passw|credential|api[-_]?key|auth|private|^key$|cookie|bearer/i;
const SECRET_MESSAGE =
  'a proposal never carries a secret: the human names the secret when approving the route (bottle approve ... --token-env NAME or --token-file PATH)';

// ---- schemas ----------------------------------------------------------------------------

const Reason = z.string().min(1).max(LIMITS.reasonChars).superRefine((value, ctx) => {
  const message = reasonProblem(value);
  if (message !== undefined) ctx.addIssue({ code: 'custom', message });
});

const EgressEntry = z.string().transform((raw, ctx) => {
  const parsed = parseEgressEntry(raw);
  if (parsed.ok) return parsed.entry;
  ctx.addIssue({ code: 'custom', message: parsed.message });
  return z.NEVER;
});

const Hosts = z
  .array(EgressEntry)
  .min(1)
  .max(LIMITS.hosts)
  .superRefine((hosts, ctx) => {
    const first = new Map<string, number>();
    hosts.forEach((h, i) => {
      const seen = first.get(h);
      if (seen === undefined) first.set(h, i);
      else ctx.addIssue({ code: 'custom', path: [i], message: `duplicate entry (same as hosts[${seen}])` });
    });
  });

const Dockerfile = z
  .string()
  .min(1)
  .superRefine((text, ctx) => {
    const message = text === '' ? undefined : dockerfileProblem(text);
    if (message !== undefined) ctx.addIssue({ code: 'custom', message });
  });

const Route = strict({
  path: checkedString(routePathProblem),
  upstream: checkedString(upstreamProblem),
  inject: strict({ header: checkedString(headerNameProblem), format: checkedString(injectFormatProblem) }),
  roles: z
    .array(checkedString(routeRoleProblem))
    .max(LIMITS.roles)
    .default(() => []),
});

const SCHEMAS = {
  allowlist: strict({ kind: z.literal('allowlist'), reason: Reason, hosts: Hosts }),
  dockerfile: strict({ kind: z.literal('dockerfile'), reason: Reason, dockerfile: Dockerfile }),
  route: strict({ kind: z.literal('route'), reason: Reason, route: Route }),
} as const;

// ---- entry points -----------------------------------------------------------------------

/** Parses and checks a request body (the raw text). */
export function parseProposalBody(text: string): ProposalResult {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    return {
      ok: false,
      error: 'the body is not valid JSON',
      issues: [{ path: '(root)', message: `not valid JSON (${(err as Error).message}); send one JSON object such as {"kind":"allowlist","reason":"...","hosts":["api.example.com"]}` }],
    };
  }
  return validateProposal(doc);
}

/** Checks a parsed proposal. Never throws; reports every problem. */
export function validateProposal(doc: unknown): ProposalResult {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    return invalid('the body must be a JSON object', [{ path: '(root)', message: `expected an object with kind and reason, got ${describeValue(doc)}` }]);
  }
  const kind = (doc as Record<string, unknown>).kind;
  const kinds = PROPOSAL_KINDS.join(', ');
  if (kind === undefined) return invalid('the proposal has no kind', [{ path: 'kind', message: `required (one of ${kinds})` }]);
  if (typeof kind !== 'string' || !(PROPOSAL_KINDS as readonly string[]).includes(kind)) {
    const shown = typeof kind === 'string' ? JSON.stringify(kind.slice(0, 40)) : describeValue(kind);
    return invalid('unknown proposal kind', [{ path: 'kind', message: `unknown kind ${shown} (expected one of ${kinds})` }]);
  }
  const parsed = SCHEMAS[kind as ProposalKind].safeParse(doc, { error: friendlyMessage });
  if (!parsed.success) {
    return invalid(`invalid ${kind} proposal`, parsed.error.issues.flatMap(issuesOf).slice(0, MAX_ISSUES));
  }
  const p = parsed.data;
  switch (p.kind) {
    case 'allowlist':
      return { ok: true, proposal: { kind: 'allowlist', reason: p.reason, change: { hosts: p.hosts } } };
    case 'dockerfile':
      return { ok: true, proposal: { kind: 'dockerfile', reason: p.reason, change: { dockerfile: p.dockerfile } } };
    case 'route': {
      const r = p.route;
      const route: RouteChange = { path: r.path, upstream: r.upstream, inject: { header: r.inject.header, format: r.inject.format }, roles: r.roles };
      return { ok: true, proposal: { kind: 'route', reason: p.reason, change: { route } } };
    }
  }
}

/** The body a valid proposal came from (kind, reason and the change's fields), to check it again. */
export function proposalBody(p: { kind: ProposalKind; reason: string; change: ProposalChange }): Record<string, unknown> {
  return { kind: p.kind, reason: p.reason, ...p.change };
}

function invalid(error: string, issues: ProposalIssue[]): ProposalResult {
  return { ok: false, error, issues };
}

function issuesOf(iss: z.core.$ZodIssue): ProposalIssue[] {
  if (iss.code === 'unrecognized_keys') {
    return iss.keys.map((key) => ({
      path: formatPath([...iss.path, key]),
      message: SECRET_KEY.test(key) ? `not accepted: ${SECRET_MESSAGE}` : iss.message,
    }));
  }
  return [{ path: formatPath(iss.path), message: iss.message }];
}

/** Messages for someone writing JSON; falls back to zod's own for everything else. */
function friendlyMessage(iss: z.core.$ZodRawIssue): string | undefined {
  if (iss.code === 'invalid_type') {
    const expected = describeExpected(String(iss.expected));
    if (iss.input === undefined) return `required (${expected})`;
    return `expected ${expected}, got ${describeValue(iss.input)}`;
  }
  if (iss.code === 'invalid_value' && iss.values.length === 1) return `must be ${JSON.stringify(iss.values[0])}`;
  if (iss.code === 'too_small' && iss.minimum === 1 && (iss.origin === 'string' || iss.origin === 'array')) return 'must not be empty';
  if (iss.code === 'too_big' && iss.origin === 'string') return `is longer than ${iss.maximum} characters`;
  if (iss.code === 'too_big' && iss.origin === 'array') return `has more than ${iss.maximum} entries`;
  return undefined;
}

function describeExpected(expected: string): string {
  switch (expected) {
    case 'object':
      return 'an object';
    case 'array':
      return 'an array';
    default:
      return `a ${expected}`;
  }
}

function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  return `a ${typeof value}`;
}
