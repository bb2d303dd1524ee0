/**
 * Checks on single manifest values. Each returns an error message, or undefined when the
 * value is fine, so the schema (manifest.ts) and other layers (the supervise proposal
 * checks) can share them without depending on zod.
 */

export type EgressEntryResult = { ok: true; entry: string } | { ok: false; message: string };

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const PORT = /^[1-9][0-9]{0,4}$/;

/**
 * Parses one egress allowlist entry: `host`, `host:port` or `*.domain`, and returns it
 * lowercased. The egress sidecar matches hosts textually, so anything that is not plainly
 * one of those forms (a URL, a path, a wildcard in the middle of a name) is rejected here
 * instead of silently never matching or matching more than the user meant.
 */
export function parseEgressEntry(raw: string): EgressEntryResult {
  const fail = (message: string): EgressEntryResult => ({ ok: false, message });
  if (raw === '') return fail('must not be empty');
  if (/\s/.test(raw)) return fail('must not contain whitespace');
  if (raw.includes('://')) return fail('write a host, host:port or *.domain, not a URL (drop the scheme)');
  if (raw.includes('/')) return fail('write a host, host:port or *.domain, without a path');
  // Checked before lowercasing: some non-ASCII letters lowercase to ASCII (U+212A KELVIN SIGN
  // becomes k), which would allow a different host than the one written.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the range is all of ASCII
  if (!/^[\u0000-\u007f]*$/.test(raw)) return fail('must be ASCII (write an international name in its xn-- form)');

  const entry = raw.toLowerCase();
  const colon = entry.indexOf(':');
  if (colon !== entry.lastIndexOf(':')) return fail('expected host or host:port (IPv6 literals are not supported)');
  const host = colon === -1 ? entry : entry.slice(0, colon);
  const port = colon === -1 ? undefined : entry.slice(colon + 1);

  if (port !== undefined && !(PORT.test(port) && Number(port) <= 65535)) {
    return fail('port must be a number from 1 to 65535');
  }
  if (host.startsWith('*.')) {
    if (port !== undefined) return fail('a *.domain entry takes no port');
    const domain = host.slice(2);
    const problem = hostnameProblem(domain);
    if (problem !== undefined) return fail(problem);
    // `*.com` would open a whole top-level domain.
    if (!domain.includes('.')) return fail('a wildcard needs a domain of at least two labels, as in *.example.com');
    return { ok: true, entry };
  }
  if (host.includes('*')) return fail('a wildcard is only allowed as the whole first label, as in *.example.com');
  const problem = hostnameProblem(host);
  return problem === undefined ? { ok: true, entry } : fail(problem);
}

/** `host` is already lowercased. */
function hostnameProblem(host: string): string | undefined {
  if (host === '') return 'the host is missing';
  if (host.length > 253) return 'the host name is longer than 253 characters';
  for (const label of host.split('.')) {
    if (label === '') return 'the host name has an empty label (a leading, trailing or double dot)';
    if (!LABEL.test(label)) {
      return `"${label}" is not a valid host name label (letters, digits and inner hyphens, at most 63)`;
    }
  }
  return undefined;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function envNameProblem(name: string): string | undefined {
  return ENV_NAME.test(name)
    ? undefined
    : 'not a valid environment variable name (letters, digits and _, not starting with a digit)';
}

/** Literal env values go into docker's --env-file, which is line based. */
export function envValueProblem(value: string): string | undefined {
  if (/[\r\n]/.test(value)) return 'must not contain a newline (an env file cannot carry one)';
  if (value.includes('\0')) return 'must not contain a NUL byte';
  return undefined;
}

export function pathProblem(path: string): string | undefined {
  if (path === '') return 'must not be empty';
  if (path.includes('\0')) return 'must not contain a NUL byte';
  return undefined;
}

/** Parses a URL string; undefined when it does not parse. */
export function parseUrl(raw: string): URL | undefined {
  return URL.canParse(raw) ? new URL(raw) : undefined;
}

/**
 * A cred-proxy upstream. Credentials, a query or a fragment in it would be copied into every
 * proxied request and shown in plans and audit logs; the secret belongs in `token`.
 */
export function routeUpstreamProblem(raw: string): string | undefined {
  const url = parseUrl(raw);
  if (url === undefined) return 'not a valid URL (expected https://host[:port][/path] or http://...)';
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    return `scheme ${url.protocol}// is not allowed; use https:// or http://`;
  }
  if (url.hostname === '') return 'the URL has no host';
  if (url.username !== '' || url.password !== '') return 'must not contain credentials; put the secret in token';
  if (url.search !== '' || url.hash !== '') return 'must not contain a query or fragment';
  return undefined;
}

export const GIT_SCHEMES = ['ssh:', 'https:', 'http:'] as const;

/** A git remote upstream. A password in it would be shown in plans; it belongs in token. */
export function gitUpstreamProblem(raw: string): string | undefined {
  if (!raw.includes('://')) {
    return 'expected a URL such as ssh://git@host/owner/repo.git (scp-style host:path is not supported)';
  }
  const url = parseUrl(raw);
  if (url === undefined) return 'not a valid URL';
  if (!(GIT_SCHEMES as readonly string[]).includes(url.protocol)) {
    return `scheme ${url.protocol}// is not allowed; use ssh://, https:// or http://`;
  }
  if (url.hostname === '') return 'the URL has no host';
  if (url.password !== '') return 'must not contain a password; put the secret in token';
  if (url.pathname === '' || url.pathname === '/') return 'the URL has no repository path';
  return undefined;
}

/** The scheme of a git upstream (`ssh:`, `https:`, ...) when it parses. */
export function urlScheme(raw: unknown): string | undefined {
  return typeof raw === 'string' ? parseUrl(raw)?.protocol : undefined;
}

/**
 * A cred-proxy route path: the URL prefix the agent calls. Limited to plain path characters
 * so that prefix matching in the proxy cannot be confused by dot segments, encodings or
 * query strings.
 */
export function routePathProblem(path: string): string | undefined {
  if (!path.startsWith('/')) return 'must start with /';
  if (!/^[A-Za-z0-9._~/-]*$/.test(path)) return 'may only contain letters, digits, / and . _ ~ -';
  const segments = path.slice(1).replace(/\/$/, '').split('/');
  if (path !== '/' && segments.some((s) => s === '' || s === '.' || s === '..')) {
    return 'must not contain empty, . or .. segments';
  }
  // The cred-proxy answers its health check there; a route would never be reached.
  if (routePathKey(path) === '/healthz') return '/healthz is reserved by the cred-proxy';
  return undefined;
}

/** Paths that route to the same prefix compare equal: `/a` and `/a/` are one route. */
export function routePathKey(path: string): string {
  return path.length > 1 ? path.replace(/\/$/, '') : path;
}

/** RFC 9110 token: what an HTTP header name may be. */
export function headerNameProblem(name: string): string | undefined {
  return /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) ? undefined : 'not a valid HTTP header name';
}

/** The injected header value; a CR or LF in it would let the manifest split the request. */
export function injectFormatProblem(format: string): string | undefined {
  if (!format.includes('{token}')) return 'must contain {token}, as in "Bearer {token}"';
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is rejected
  if (/[\u0000-\u001f\u007f]/.test(format)) return 'must not contain control characters';
  return undefined;
}

export const ROUTE_ROLES = ['anthropic-base-url'] as const;

export function routeRoleProblem(role: string): string | undefined {
  return (ROUTE_ROLES as readonly string[]).includes(role)
    ? undefined
    : `unknown role "${role}" (known: ${ROUTE_ROLES.join(', ')})`;
}

const GIT_REMOTE_NAME = /^[A-Za-z0-9._-]+$/;

export function gitRemoteNameProblem(name: string): string | undefined {
  if (!GIT_REMOTE_NAME.test(name)) return 'may only contain letters, digits and . _ -';
  // The remote becomes a URL path segment on the git gate (`/NAME.git`).
  if (name === '.' || name === '..') return 'must not be . or ..';
  return undefined;
}

/**
 * A push ref pattern: a branch name with optional `*` globs. Characters that git forbids in
 * ref names, and a leading `+` (a forcing refspec), are rejected so that the git gate can
 * match patterns without any ambiguity about what they allow.
 */
export function refPatternProblem(pattern: string): string | undefined {
  if (pattern === '') return 'must not be empty';
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is rejected
  if (/[\s\u0000-\u001f\u007f~^:?[\\]/.test(pattern) || pattern.includes('..') || pattern.includes('@{')) {
    return 'not a valid ref pattern (a branch name with optional * globs, as in agent/*)';
  }
  if (pattern.startsWith('+')) return 'must not start with + (force pushes are never allowed)';
  if (pattern.startsWith('-')) return 'must not start with -';
  if (pattern.startsWith('/') || pattern.endsWith('/') || pattern.includes('//')) {
    return 'must not start or end with / or contain //';
  }
  return undefined;
}
