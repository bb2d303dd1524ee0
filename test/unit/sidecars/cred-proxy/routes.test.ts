import { describe, expect, it } from 'vitest';
import { matchRoute, parseRoutes, type Route, requestPathProblem, upstreamTarget } from '../../../../sidecars/cred-proxy/routes.js';

const route = (over: Record<string, unknown> = {}) => ({
  path: '/anthropic',
  upstream: 'https://api.anthropic.com',
  inject: { header: 'x-api-key', format: '{token}' },
  roles: ['anthropic-base-url'],
  token_file: '/run/bottle/cred-proxy/secrets/0',
  ...over,
});
const parse = (routes: unknown[], extra: Record<string, unknown> = {}) => parseRoutes(JSON.stringify({ routes, ...extra }), '/etc/routes');
const routesOf = (r: ReturnType<typeof parse>): Route[] => {
  if (!r.ok) throw new Error(r.errors.join('; '));
  return r.routes;
};
const errorsOf = (r: ReturnType<typeof parse>): string => (r.ok ? '' : r.errors.join('\n'));

describe('parseRoutes', () => {
  it('reads a route as the engine writes it', () => {
    const [r] = routesOf(parse([route({ ca_file: '/run/bottle/cred-proxy/ca/0.pem' })]));
    expect(r).toEqual({
      path: '/anthropic',
      prefix: '/anthropic',
      upstream: { origin: 'https://api.anthropic.com', protocol: 'https:', hostname: 'api.anthropic.com', port: 443, host: 'api.anthropic.com', basePath: '' },
      inject: { header: 'x-api-key', format: '{token}' },
      roles: ['anthropic-base-url'],
      tokenFile: '/run/bottle/cred-proxy/secrets/0',
      caFile: '/run/bottle/cred-proxy/ca/0.pem',
    });
  });

  it('normalises paths, upstreams and file names', () => {
    const rs = routesOf(
      parse([
        route({ path: '/gh/', upstream: 'http://[::1]:8080/api/v3/', token_file: 'secrets/1', inject: { header: 'Authorization', format: 'Bearer {token}' }, roles: undefined }),
        route({ path: '/', upstream: 'https://internal.test:443', token_file: '/t' }),
      ]),
    );
    expect(rs[0]).toMatchObject({ path: '/gh', prefix: '/gh', tokenFile: '/etc/routes/secrets/1', roles: [], inject: { header: 'authorization' } });
    expect(rs[0]!.upstream).toEqual({ origin: 'http://[::1]:8080', protocol: 'http:', hostname: '::1', port: 8080, host: '[::1]:8080', basePath: '/api/v3' });
    expect(rs[1]).toMatchObject({ path: '/', prefix: '' });
    expect(rs[1]!.upstream).toMatchObject({ port: 443, host: 'internal.test' });
  });

  it('refuses what it does not understand, naming where', () => {
    expect(errorsOf(parseRoutes('{', '/'))).toContain('not valid JSON');
    expect(errorsOf(parse([], { extra: 1 }))).toContain('unknown key "extra"');
    expect(errorsOf(parse([route({ cafile: 'x' })]))).toContain('routes[0]: unknown key "cafile"');
    expect(errorsOf(parse([route({ path: 'anthropic' })]))).toContain('routes[0].path: must start with /');
    expect(errorsOf(parse([route({ path: '/a/../b' })]))).toContain('routes[0].path');
    expect(errorsOf(parse([route({ path: '/a%2f' })]))).toContain('routes[0].path');
    expect(errorsOf(parse([route({ path: '/healthz' })]))).toContain('health check');
    expect(errorsOf(parse([route({ upstream: 'ftp://x' })]))).toContain('scheme ftp:');
    expect(errorsOf(parse([route({ upstream: 'https://u:p@x' })]))).toContain('credentials');
    expect(errorsOf(parse([route({ upstream: 'https://x/?a=1' })]))).toContain('query');
    expect(errorsOf(parse([route({ upstream: 'not a url' })]))).toContain('not a valid URL');
    expect(errorsOf(parse([route({ inject: { header: 'Host', format: '{token}' } })]))).toContain('controlled by the proxy');
    expect(errorsOf(parse([route({ inject: { header: 'bad header', format: '{token}' } })]))).toContain('not a valid HTTP header name');
    expect(errorsOf(parse([route({ inject: { header: 'x', format: 'Bearer' } })]))).toContain('{token}');
    expect(errorsOf(parse([route({ inject: { header: 'x', format: 'Bearer {token}\r\nX-Evil: 1' } })]))).toContain('printable ASCII');
    expect(errorsOf(parse([route({ token_file: '' })]))).toContain('token_file');
    expect(errorsOf(parse([route(), route({ path: '/anthropic/' })]))).toContain('already routes[0].path');
    expect(errorsOf(parse([route(), route({ path: '/other' })]))).toContain('at most one route may have the role anthropic-base-url');
  });
});

describe('matching', () => {
  const rs = routesOf(
    parse([
      route({ path: '/a', upstream: 'https://one.test/base/', roles: [] }),
      route({ path: '/a/b', upstream: 'https://two.test', roles: [] }),
    ]),
  );
  it('takes the longest prefix on a segment boundary', () => {
    expect(matchRoute(rs, '/a')?.path).toBe('/a');
    expect(matchRoute(rs, '/a/')?.path).toBe('/a');
    expect(matchRoute(rs, '/a/bc')?.path).toBe('/a');
    expect(matchRoute(rs, '/a/b')?.path).toBe('/a/b');
    expect(matchRoute(rs, '/a/b/c')?.path).toBe('/a/b');
    expect(matchRoute(rs, '/ab')).toBeUndefined();
    expect(matchRoute(rs, '/')).toBeUndefined();
  });

  it('a root route takes everything the others do not', () => {
    const withRoot = routesOf(parse([route({ path: '/', roles: [] }), route({ path: '/a', roles: [] })]));
    expect(matchRoute(withRoot, '/anything')?.path).toBe('/');
    expect(matchRoute(withRoot, '/a/x')?.path).toBe('/a');
    expect(upstreamTarget(withRoot[0]!, '/anything/x', '?q')).toBe('/anything/x?q');
  });

  it('puts what follows the prefix under the upstream base path', () => {
    expect(upstreamTarget(rs[0]!, '/a', '')).toBe('/base');
    expect(upstreamTarget(rs[0]!, '/a/', '')).toBe('/base/');
    expect(upstreamTarget(rs[0]!, '/a/v1/messages', '?beta=true')).toBe('/base/v1/messages?beta=true');
    expect(upstreamTarget(rs[1]!, '/a/b', '')).toBe('/');
    expect(upstreamTarget(rs[1]!, '/a/b', '?x')).toBe('/?x');
  });

  it('refuses dot segments in any spelling', () => {
    for (const p of ['/a/..', '/a/../b', '/a/./b', '/a/%2e%2e/b', '/a/%2E./b', '/a/..%2Fb', '/a/..%5cb', '/a/..\\b']) expect(requestPathProblem(p), p).toBeDefined();
    for (const p of ['/a/b', '/a/...', '/a/.well-known/x', '/a/v1.2/x']) expect(requestPathProblem(p), p).toBeUndefined();
  });
});
