import { addHeader, connectionNamed, type HeaderMap, isHopByHop } from '../common/http.js';
import { containsAny } from './redact.js';
import { type Route, requestPathProblem } from './routes.js';

/**
 * What the agent sends that never reaches an upstream, and the one credential that does: the
 * request target is refused when it carries a token or the placeholder (a URL ends up in logs
 * and caches); inbound credentials and client facts are stripped; the route's header is set
 * with the real token.
 */

/** Inbound headers never forwarded, whatever the route: credentials and client facts. */
const STRIPPED_INBOUND = new Set([
  'host',
  'authorization',
  'proxy-authorization',
  'x-api-key',
  'cookie',
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-real-ip',
  'accept-encoding',
]);

/** Why a request target is refused (400), for the agent (`message`) and the audit (`error`, `alarm`). */
export interface TargetRefusal {
  message: string;
  error: string;
  alarm?: string;
}

/** Checks the request target before any route is looked at; undefined when it may be routed. */
export function targetRefusal(method: string, url: string, path: string, secrets: readonly string[], placeholder: string | undefined): TargetRefusal | undefined {
  if (!url.startsWith('/')) {
    return { error: 'not an origin-form request', message: 'send requests as GET /<route>/..., with the route in the path; this is not a forward proxy' };
  }
  const problem = requestPathProblem(path);
  if (problem !== undefined) return { error: problem, message: `refused ${method} ${path}: ${problem}` };
  if (containsAny(url, secrets)) {
    const alarm = 'a real token in the request target';
    return { alarm, error: alarm, message: 'refused: the request target carries a credential' };
  }
  if (placeholder !== undefined && url.includes(placeholder)) {
    return {
      error: 'the placeholder in the request target',
      message: 'refused: the request target carries the placeholder credential; the cred-proxy injects credentials as headers only',
    };
  }
  return undefined;
}

/**
 * The headers sent upstream for `raw` (the agent's raw headers) on `route`: hop-by-hop,
 * stripped and credential-carrying headers dropped, Host set to the upstream's, identity
 * encoding asked for (an echoed token must be seen to be redacted), the token injected.
 * `alarm` names the first header that carried a real token (it is dropped, not forwarded).
 */
export function upstreamHeaders(
  raw: readonly string[],
  route: Route,
  token: string,
  secrets: readonly string[],
  placeholder: string | undefined,
): { headers: HeaderMap; alarm?: string } {
  const named = connectionNamed(raw);
  const headers: HeaderMap = {};
  let alarm: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    if (containsAny(value, secrets)) {
      alarm ??= `a real token in the request header ${name}`;
      continue;
    }
    if (isHopByHop(name, named) || STRIPPED_INBOUND.has(name) || name === route.inject.header) continue;
    if (placeholder !== undefined && value.includes(placeholder)) continue;
    addHeader(headers, name, value);
  }
  headers.host = route.upstream.host;
  headers['accept-encoding'] = 'identity';
  // split/join, not replace: a `$` in a token must not be read as a replacement pattern.
  headers[route.inject.header] = route.inject.format.split('{token}').join(token);
  return alarm === undefined ? { headers } : { headers, alarm };
}
