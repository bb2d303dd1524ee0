import { isAbsolute, resolve } from 'node:path';

/**
 * The cred-proxy's routes file: which path prefix goes to which fixed upstream, and how the
 * route's secret is injected. No secret is in this file, only the path of the file holding it.
 *
 *   {"routes": [{"path": "/anthropic", "upstream": "https://api.anthropic.com",
 *                "inject": {"header": "x-api-key", "format": "{token}"},
 *                "roles": ["anthropic-base-url"],
 *                "token_file": "/run/bottle/cred-proxy/secrets/0",
 *                "ca_file": "/run/bottle/cred-proxy/ca/0.pem"}]}      // ca_file optional
 *
 * Unknown keys are errors (a misspelt `ca_file` must not silently mean "no extra CA").
 * Relative file paths are relative to the routes file's folder.
 */

export interface Upstream {
  /** `https://host[:port]` for messages; never carries a path, query or credentials. */
  origin: string;
  protocol: 'http:' | 'https:';
  /** The name or address dialled (IPv6 without brackets). */
  hostname: string;
  port: number;
  /** The Host header sent upstream: host, plus the port when it is not the scheme's default. */
  host: string;
  /** The upstream URL's path without its trailing slash ('' for the root). */
  basePath: string;
}

export interface Route {
  /** The prefix as declared, without a trailing slash ('/' for the root route). */
  path: string;
  /** What a request path is matched against: `path`, or '' for the root route. */
  prefix: string;
  upstream: Upstream;
  inject: { header: string; format: string };
  roles: string[];
  tokenFile: string;
  caFile?: string;
}

export type ParseResult = { ok: true; routes: Route[] } | { ok: false; errors: string[] };

/** The health check's path; never routed (GET/HEAD answer health, other methods 405). */
export const HEALTH_PATH = '/healthz';

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Headers the proxy itself controls: injecting into them would break framing or routing. */
const UNINJECTABLE = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'upgrade',
  'expect',
  'accept-encoding',
]);
const ROUTE_KEYS = new Set(['path', 'upstream', 'inject', 'roles', 'token_file', 'ca_file']);
const INJECT_KEYS = new Set(['header', 'format']);

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function parseUpstream(raw: string): Upstream | string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return 'not a valid URL (expected https://host[:port][/path] or http://...)';
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return `scheme ${url.protocol}// is not allowed; use https:// or http://`;
  if (url.hostname === '') return 'the URL has no host';
  if (url.username !== '' || url.password !== '') return 'must not contain credentials';
  if (url.search !== '' || url.hash !== '' || raw.includes('?') || raw.includes('#')) return 'must not contain a query or fragment';
  const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
  return {
    origin: `${url.protocol}//${url.host}`,
    protocol: url.protocol,
    hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port,
    host: url.host,
    basePath: url.pathname.replace(/\/+$/, ''),
  };
}

/** Same rules as the manifest: plain path characters, no empty, . or .. segments. */
export function routePathProblem(path: string): string | undefined {
  if (!path.startsWith('/')) return 'must start with /';
  if (!/^[A-Za-z0-9._~/-]*$/.test(path)) return 'may only contain letters, digits, / and . _ ~ -';
  const segments = path.slice(1).replace(/\/$/, '').split('/');
  if (path !== '/' && segments.some((s) => s === '' || s === '.' || s === '..')) return 'must not contain empty, . or .. segments';
  if (path.replace(/\/$/, '') === HEALTH_PATH) return `${HEALTH_PATH} is the cred-proxy's health check`;
  return undefined;
}

function injectProblem(v: unknown): string | undefined {
  if (!isRecord(v)) return 'must be an object {header, format}';
  for (const k of Object.keys(v)) if (!INJECT_KEYS.has(k)) return `unknown key "${k}"`;
  if (typeof v.header !== 'string' || !HEADER_NAME.test(v.header)) return 'header: not a valid HTTP header name';
  if (UNINJECTABLE.has(v.header.toLowerCase()) || v.header.toLowerCase().startsWith('proxy-')) return `header: "${v.header}" is controlled by the proxy`;
  if (typeof v.format !== 'string' || !v.format.includes('{token}')) return 'format: must be a string containing {token}, as in "Bearer {token}"';
  if (!/^[\x20-\x7e]*$/.test(v.format)) return 'format: only printable ASCII is allowed';
  return undefined;
}

/** Parses and checks the routes file's text. `baseDir` resolves relative file paths. */
export function parseRoutes(text: string, baseDir: string): ParseResult {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    return { ok: false, errors: [`not valid JSON: ${(err as Error).message}`] };
  }
  if (!isRecord(doc) || !Array.isArray(doc.routes)) return { ok: false, errors: ['expected {"routes": [...]}'] };
  const unknown = Object.keys(doc).filter((k) => k !== 'routes');
  const errors: string[] = unknown.map((k) => `unknown key "${k}"`);
  const routes: Route[] = [];
  const seen = new Map<string, number>();
  doc.routes.forEach((r: unknown, i: number) => {
    const at = `routes[${i}]`;
    if (!isRecord(r)) {
      errors.push(`${at}: must be an object`);
      return;
    }
    const before = errors.length;
    for (const k of Object.keys(r)) if (!ROUTE_KEYS.has(k)) errors.push(`${at}: unknown key "${k}"`);
    const path = typeof r.path === 'string' ? r.path : undefined;
    const pathProblem = path === undefined ? 'must be a string' : routePathProblem(path);
    if (pathProblem) errors.push(`${at}.path: ${pathProblem}`);
    const upstream = typeof r.upstream === 'string' ? parseUpstream(r.upstream) : 'must be a string';
    if (typeof upstream === 'string') errors.push(`${at}.upstream: ${upstream}`);
    const inject = injectProblem(r.inject);
    if (inject) errors.push(`${at}.inject.${inject}`);
    const roles = r.roles ?? [];
    if (!Array.isArray(roles) || roles.some((x) => typeof x !== 'string')) errors.push(`${at}.roles: must be a list of strings`);
    if (typeof r.token_file !== 'string' || r.token_file === '') errors.push(`${at}.token_file: must be a file path`);
    if (r.ca_file !== undefined && r.ca_file !== null && (typeof r.ca_file !== 'string' || r.ca_file === '')) errors.push(`${at}.ca_file: must be a file path`);
    if (errors.length > before) return;

    const declared = path!.length > 1 ? path!.replace(/\/$/, '') : path!;
    const other = seen.get(declared);
    if (other !== undefined) {
      errors.push(`${at}.path: "${declared}" is already routes[${other}].path`);
      return;
    }
    seen.set(declared, i);
    const inj = r.inject as { header: string; format: string };
    const file = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
    routes.push({
      path: declared,
      prefix: declared === '/' ? '' : declared,
      upstream: upstream as Upstream,
      inject: { header: inj.header.toLowerCase(), format: inj.format },
      roles: [...(roles as string[])],
      tokenFile: file(r.token_file as string),
      ...(typeof r.ca_file === 'string' ? { caFile: file(r.ca_file) } : {}),
    });
  });
  const base = routes.filter((r) => r.roles.includes('anthropic-base-url'));
  if (base.length > 1) errors.push(`at most one route may have the role anthropic-base-url; ${base.map((r) => r.path).join(', ')} do`);
  return errors.length > 0 ? { ok: false, errors } : { ok: true, routes };
}

/** The route whose prefix is the longest one matching `path` on a segment boundary. */
export function matchRoute(routes: readonly Route[], path: string): Route | undefined {
  let best: Route | undefined;
  for (const r of routes) {
    if (path !== r.prefix && !path.startsWith(`${r.prefix}/`)) continue;
    if (best === undefined || r.prefix.length > best.prefix.length) best = r;
  }
  return best;
}

/** The path (and query) to request upstream: the upstream's base path, then what follows the prefix. */
export function upstreamTarget(route: Route, path: string, query: string): string {
  const rest = path.slice(route.prefix.length);
  const joined = `${route.upstream.basePath}${rest}`;
  return `${joined === '' ? '/' : joined}${query}`;
}

/**
 * Why a request path is refused before routing, or undefined. Dot segments (also
 * percent-encoded, or around an encoded slash or backslash) would let a path climb out of
 * the upstream's base path once the upstream normalises it.
 */
export function requestPathProblem(path: string): string | undefined {
  if (!path.startsWith('/')) return 'not an absolute path';
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is refused
  if (/[\u0000-\u001f\u007f\s]/.test(path)) return 'control characters or spaces in the path';
  const plain = path.replace(/%2e/gi, '.').replace(/%2f|%5c|\\/gi, '/');
  if (plain.split('/').some((s) => s === '.' || s === '..')) return 'dot segments (. or ..) in the path';
  return undefined;
}
