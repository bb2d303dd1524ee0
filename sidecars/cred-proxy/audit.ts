/**
 * One cred-proxy request, written as one JSON line on stdout when its response has ended (so
 * the byte counts and the duration are known). It never holds a token: `token_fp` is the
 * fingerprint of the route's token (first 8 hex digits of its sha256), `path` is the request
 * path without its query (query values are where credentials and personal data hide), and any
 * secret that might still be in a field is redacted before the line is written.
 */
export interface AuditRecord {
  /** When the request arrived (epoch ms). */
  at: number;
  /** `request` for every proxied or refused request. */
  type: 'request';
  /** The matching route's path prefix; null when no route matched (404) or the request was refused before routing. */
  route: string | null;
  method: string;
  /** The request path as the agent sent it, without the query. */
  path: string;
  /** The status the agent got (0 when the connection ended before any status was sent). */
  status: number;
  /** Request body bytes from the agent, and response body bytes to the agent (after redaction). */
  bytes_up: number;
  bytes_down: number;
  /** From arrival to the end of the response. */
  duration_ms: number;
  /** Fingerprint of the route's token used for the request; null when no route or no token was (404, refusals, 503). */
  token_fp: string | null;
  /** Secrets the upstream echoed back, replaced with [redacted] before the agent saw them. */
  redacted?: number;
  /** Something the audit reader must look at: a real token or the placeholder where it must not be. */
  alarm?: string;
  /** What went wrong (upstream unreachable, TLS failure, reset, ...). */
  error?: string;
  /** For an upstream the address policy refused: the address's class (`private (RFC 1918)`, `loopback`, `docker host`, ...). */
  address_class?: string;
  /** The run, when the sidecar was given one (BOTTLE_RUN). */
  run?: string;
}

const ORDER = [
  'at',
  'type',
  'route',
  'method',
  'path',
  'status',
  'bytes_up',
  'bytes_down',
  'duration_ms',
  'token_fp',
  'redacted',
  'alarm',
  'error',
  'address_class',
  'run',
] as const;

/** The record as one JSON line, its fields always in the same order. */
export function auditLine(r: AuditRecord): string {
  const out: Record<string, unknown> = {};
  for (const k of ORDER) if (r[k] !== undefined) out[k] = r[k];
  return `${JSON.stringify(out)}\n`;
}

/**
 * A change of the routes file while the proxy runs, written as one JSON line on stdout beside
 * the request lines: `reloaded` with the route paths now in force, or `rejected` with why (the
 * routes in force stay as they were). Never a token: the routes file holds none, and `error`
 * is redacted before the line is written.
 */
export type RoutesRecord =
  | { type: 'routes'; decision: 'reloaded'; routes: string[]; at: number; run?: string }
  | { type: 'routes'; decision: 'rejected'; error: string; at: number; run?: string };

const ROUTES_ORDER = ['type', 'decision', 'routes', 'error', 'at', 'run'] as const;

/** The record as one JSON line, its fields always in the same order. */
export function routesLine(r: RoutesRecord): string {
  const out: Record<string, unknown> = {};
  const fields = r as Partial<Record<(typeof ROUTES_ORDER)[number], unknown>>;
  for (const k of ROUTES_ORDER) if (fields[k] !== undefined) out[k] = fields[k];
  return `${JSON.stringify(out)}\n`;
}

/** What one request's line will say, filled in as the request goes; written once, when its response closes. */
export interface RequestOutcome {
  /** The matching route's path prefix, once routed. */
  route: string | null;
  tokenFp: string | null;
  status: number;
  bytesUp: number;
  /** Tokens redacted from the response head (header values, status message). */
  redactedInHead: number;
  /** The response body's redacting stream, once there is a body: what it redacted and passed on. */
  body?: { readonly bytesOut: number; readonly redactor: { readonly count: number } };
  alarm?: string;
  error?: string;
  addressClass?: string;
}

/** Tokens redacted from a response, head and body. */
export const redactedCount = (o: RequestOutcome): number => o.redactedInHead + (o.body?.redactor.count ?? 0);

/** The line of one request; `redact` takes every secret out of the text fields (the path, the error). */
export function requestRecord(at: number, durationMs: number, method: string, path: string, o: RequestOutcome, redact: (text: string) => string): AuditRecord {
  const redacted = redactedCount(o);
  return {
    at,
    type: 'request',
    route: o.route,
    method,
    // Never a token, even one the agent somehow put in its path.
    path: redact(path.length > 2048 ? `${path.slice(0, 2048)}...` : path),
    status: o.status,
    bytes_up: o.bytesUp,
    bytes_down: o.body?.bytesOut ?? 0,
    duration_ms: durationMs,
    token_fp: o.tokenFp,
    ...(redacted > 0 ? { redacted } : {}),
    ...(o.alarm !== undefined ? { alarm: o.alarm } : {}),
    ...(o.error !== undefined ? { error: redact(o.error) } : {}),
    ...(o.addressClass !== undefined ? { address_class: o.addressClass } : {}),
  };
}
