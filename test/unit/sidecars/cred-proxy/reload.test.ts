import { rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fingerprint } from '../../../../sidecars/cred-proxy/tokens.js';
import { type Handler, replaceFile, request, type RouteSpec, sleep, startProxy, startUpstream, until } from './harness.js';

/**
 * The routes file changing under a running proxy (the engine adding an approved route):
 * everything on loopback, plain HTTP upstreams.
 */

const TOKEN_A = 'token-route-a-0123456789';
const TOKEN_B = 'token-route-b-9876543210';
const PLACEHOLDER = 'bottle-placeholder-reload';

const spec = (path: string, upstream: string, token: string): RouteSpec => ({ path, upstream, inject: { header: 'Authorization', format: 'Bearer {token}' }, token });

/** A routes file's text, as the engine writes it. */
const routesText = (routes: { path: string; upstream: string; token_file: string; ca_file?: string }[]) =>
  `${JSON.stringify({ routes: routes.map((r) => ({ inject: { header: 'Authorization', format: 'Bearer {token}' }, roles: [], ...r })) }, null, 2)}\n`;

/** A request on a keep-alive agent, telling whether it went on a connection opened earlier. */
function keptAlive(agent: http.Agent, port: number, path: string): Promise<{ status: number; body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, agent, headers: { authorization: `Bearer ${PLACEHOLDER}` } });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        body += c.toString();
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, reused: req.reusedSocket }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('routes reload', () => {
  it('serves a route added to the routes file (renamed into place) without a restart, on the connections already open', async () => {
    const a = await startUpstream();
    const b = await startUpstream();
    const proxy = await startProxy([spec('/a', a.origin, TOKEN_A)], { placeholder: PLACEHOLDER, watchRoutes: {} });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await keptAlive(agent, proxy.port, '/a/x')).status).toBe(200);
      expect((await keptAlive(agent, proxy.port, '/b/v1/models')).status).toBe(404);

      // As the engine does it: the token first, then the whole routes file.
      const tokenB = join(proxy.dir, 'secrets', 'p1');
      writeFileSync(tokenB, `${TOKEN_B}\n`, { mode: 0o600 });
      replaceFile(
        proxy.routesFile,
        routesText([
          { path: '/a', upstream: a.origin, token_file: proxy.tokenFiles[0]! },
          { path: '/b', upstream: b.origin, token_file: tokenB },
        ]),
      );
      await until(() => proxy.routesEvents.length > 0, 'the reload', 5000);
      expect(proxy.routesEvents).toEqual([{ decision: 'reloaded', routes: ['/a', '/b'] }]);

      const viaB = await keptAlive(agent, proxy.port, '/b/v1/models?limit=1');
      expect(viaB.status).toBe(200);
      expect(viaB.reused).toBe(true); // the agent's connection survived the reload
      expect(b.requests).toHaveLength(1);
      expect(b.requests[0]!.url).toBe('/v1/models?limit=1');
      expect(b.requests[0]!.headers.authorization).toBe(`Bearer ${TOKEN_B}`);
      expect((await keptAlive(agent, proxy.port, '/a/y')).status).toBe(200);
      expect(a.requests.map((r) => r.headers.authorization)).toEqual([`Bearer ${TOKEN_A}`, `Bearer ${TOKEN_A}`]);

      // The new token is redacted and watched like the others.
      expect(proxy.tokens.files()).toContain(tokenB);
      const health = await request(proxy.port, '/healthz');
      expect(health.status).toBe(200);
      expect(health.body).toContain('2 route(s): /a, /b');
      rmSync(tokenB);
      await until(async () => (await request(proxy.port, '/healthz')).status === 503, 'health to notice the new token gone', 5000);
      expect((await request(proxy.port, '/b/v1/models')).status).toBe(503);
      expect(b.requests).toHaveLength(1);
      expect(proxy.audits.find((r) => r.route === '/b' && r.status === 200)?.token_fp).toBe(fingerprint(TOKEN_B));
    } finally {
      agent.destroy();
    }
  });

  it('keeps the routes in force when the new file is invalid, or a new route has no token (and takes it once the token lands)', async () => {
    const a = await startUpstream();
    const b = await startUpstream();
    const proxy = await startProxy([spec('/a', a.origin, TOKEN_A)], { watchRoutes: {} });
    const tokenB = join(proxy.dir, 'secrets', 'p2');
    const good = routesText([
      { path: '/a', upstream: a.origin, token_file: proxy.tokenFiles[0]! },
      { path: '/b', upstream: b.origin, token_file: tokenB },
    ]);

    replaceFile(proxy.routesFile, '{"routes": [{"path": "/b", "upstream": "ftp://x"');
    await until(() => proxy.routesEvents.length === 1, 'the rejection', 5000);
    expect(proxy.routesEvents[0]).toMatchObject({ decision: 'rejected', error: expect.stringContaining('invalid routes file') });
    replaceFile(proxy.routesFile, routesText([{ path: '/b', upstream: 'ftp://x', token_file: tokenB }]));
    await until(() => proxy.routesEvents.length === 2, 'the second rejection', 5000);
    expect(proxy.routesEvents[1]).toMatchObject({ decision: 'rejected', error: expect.stringContaining('routes[0].upstream') });
    replaceFile(proxy.routesFile, '{"routes": []}\n');
    await until(() => proxy.routesEvents.length === 3, 'the third rejection', 5000);
    expect(proxy.routesEvents[2]).toMatchObject({ decision: 'rejected', error: expect.stringContaining('declares no route') });
    expect((await request(proxy.port, '/a/x')).status).toBe(200);
    expect((await request(proxy.port, '/healthz')).status).toBe(200);

    // A new route whose token file is not there yet: refused, the old routes serve, health stays 200.
    replaceFile(proxy.routesFile, good);
    await until(() => proxy.routesEvents.length === 4, 'the token rejection', 5000);
    expect(proxy.routesEvents[3]).toMatchObject({ decision: 'rejected' });
    const error = (proxy.routesEvents[3] as { error: string }).error;
    expect(error).toContain('route /b');
    expect(error).toContain('ENOENT');
    expect((await request(proxy.port, '/b/x')).status).toBe(404);
    expect((await request(proxy.port, '/a/x')).status).toBe(200);
    expect((await request(proxy.port, '/healthz')).status).toBe(200);
    // Reported once, though the file is tried again at each poll.
    await sleep(1200);
    expect(proxy.routesEvents).toHaveLength(4);

    // A new route whose CA bundle is missing: refused as well.
    writeFileSync(tokenB, `${TOKEN_B}\n`);
    replaceFile(proxy.routesFile, routesText([{ path: '/a', upstream: a.origin, token_file: proxy.tokenFiles[0]! }, { path: '/b', upstream: 'https://127.0.0.1:1', token_file: tokenB, ca_file: join(proxy.dir, 'no-ca.pem') }]));
    await until(() => proxy.routesEvents.length === 5, 'the CA rejection', 5000);
    expect(proxy.routesEvents[4]).toMatchObject({ decision: 'rejected', error: expect.stringContaining('CA bundle') });
    expect((await request(proxy.port, '/b/x')).status).toBe(404);

    // The good file again, its token there now: in force.
    replaceFile(proxy.routesFile, good);
    await until(async () => (await request(proxy.port, '/b/x')).status === 200, 'the new route', 5000);
    expect(b.requests[0]!.headers.authorization).toBe(`Bearer ${TOKEN_B}`);
    expect(proxy.routesEvents.at(-1)).toEqual({ decision: 'reloaded', routes: ['/a', '/b'] });
    for (const e of proxy.routesEvents) expect(JSON.stringify(e)).not.toContain(TOKEN_B);
  });

  it('takes a rejected routes file once the missing token lands, without another change to the routes file', async () => {
    const a = await startUpstream();
    const b = await startUpstream();
    const proxy = await startProxy([spec('/a', a.origin, TOKEN_A)], { watchRoutes: {} });
    const tokenB = join(proxy.dir, 'secrets', 'p3');
    replaceFile(proxy.routesFile, routesText([{ path: '/a', upstream: a.origin, token_file: proxy.tokenFiles[0]! }, { path: '/b', upstream: b.origin, token_file: tokenB }]));
    await until(() => proxy.routesEvents.length === 1, 'the rejection', 5000);
    writeFileSync(tokenB, `${TOKEN_B}\n`);
    await until(async () => (await request(proxy.port, '/b/x')).status === 200, 'the new route', 5000);
    expect(proxy.routesEvents.map((e) => e.decision)).toEqual(['rejected', 'reloaded']);
  });

  it('answers 404 for a route removed from the file, and forgets its token file', async () => {
    const a = await startUpstream();
    const b = await startUpstream();
    const proxy = await startProxy([spec('/a', a.origin, TOKEN_A), spec('/b', b.origin, TOKEN_B)], { watchRoutes: {} });
    expect((await request(proxy.port, '/b/x')).status).toBe(200);

    replaceFile(proxy.routesFile, routesText([{ path: '/a', upstream: a.origin, token_file: proxy.tokenFiles[0]! }]));
    await until(() => proxy.routesEvents.length === 1, 'the reload', 5000);
    const gone = await request(proxy.port, '/b/x');
    expect(gone.status).toBe(404);
    expect(JSON.parse(gone.body)).toMatchObject({ type: 'error', error: { type: 'not_found_error' }, routes: ['/a'] });
    expect(b.requests).toHaveLength(1);
    expect((await request(proxy.port, '/a/x')).status).toBe(200);
    expect(proxy.routesEvents).toEqual([{ decision: 'reloaded', routes: ['/a'] }]);
    expect(proxy.audits.at(-2)).toMatchObject({ route: null, status: 404, token_fp: null });

    // Its token file is no business of the proxy any more: removing it leaves health at 200.
    expect(proxy.tokens.files()).toEqual([proxy.tokenFiles[0]]);
    rmSync(proxy.tokenFiles[1]!);
    await sleep(700);
    const health = await request(proxy.port, '/healthz');
    expect(health.status).toBe(200);
    expect(health.body).toContain('1 route(s): /a');
    // Its token is still redacted, as a rotated-out one is.
    expect(proxy.tokens.secrets()).toContain(TOKEN_B);
  });

  it('lets a slow response in flight on a route finish across a reload that removes the route', async () => {
    let release: () => void = () => undefined;
    const released = new Promise<void>((r) => {
      release = r;
    });
    const slow: Handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: first\n\n');
      void released.then(() => res.end('data: last\n\n'));
    };
    const a = await startUpstream({ handler: slow });
    const b = await startUpstream();
    const proxy = await startProxy([spec('/a', a.origin, TOKEN_A)], { watchRoutes: {} });
    const tokenB = join(proxy.dir, 'secrets', 'p4');
    writeFileSync(tokenB, `${TOKEN_B}\n`);

    const inFlight = request(proxy.port, '/a/v1/messages', { method: 'POST', body: '{"stream":true}' });
    await until(() => a.requests.length === 1, 'the slow request upstream');

    replaceFile(proxy.routesFile, routesText([{ path: '/b', upstream: b.origin, token_file: tokenB }]));
    await until(() => proxy.routesEvents.length === 1, 'the reload', 5000);
    expect(proxy.routesEvents).toEqual([{ decision: 'reloaded', routes: ['/b'] }]);
    expect((await request(proxy.port, '/a/v1/messages')).status).toBe(404);
    expect((await request(proxy.port, '/b/x')).status).toBe(200);
    // Past a sweep of the removed route's upstream connections: the one in use stays.
    await sleep(1200);

    release();
    const reply = await inFlight;
    expect(reply.status).toBe(200);
    expect(reply.body).toBe('data: first\n\ndata: last\n\n');
    await until(() => proxy.audits.some((r) => r.route === '/a' && r.method === 'POST'), 'the audit of the slow request');
    const audit = proxy.audits.find((r) => r.route === '/a' && r.method === 'POST')!;
    expect(audit).toMatchObject({ status: 200, bytes_down: reply.body.length });
    expect(audit.error).toBeUndefined();
    expect(a.requests[0]!.headers.authorization).toBe(`Bearer ${TOKEN_A}`);
  });

  it('does not report a routes file caught mid-write when the finished file is good', async () => {
    const a = await startUpstream();
    const b = await startUpstream();
    // No watcher, no poll: each read is a call to check().
    const proxy = await startProxy([spec('/a', a.origin, TOKEN_A)], { watchRoutes: { watch: false, pollMs: 0, settleMs: 60_000 } });
    const tokenB = join(proxy.dir, 'secrets', 'p5');
    writeFileSync(tokenB, `${TOKEN_B}\n`);
    const text = routesText([{ path: '/a', upstream: a.origin, token_file: proxy.tokenFiles[0]! }, { path: '/b', upstream: b.origin, token_file: tokenB }]);

    // Docker's archive API removes the old file, then writes the new one in place.
    rmSync(proxy.routesFile);
    proxy.reloader!.check();
    writeFileSync(proxy.routesFile, text.slice(0, 40));
    proxy.reloader!.check();
    writeFileSync(proxy.routesFile, text);
    proxy.reloader!.check();
    expect(proxy.routesEvents).toEqual([{ decision: 'reloaded', routes: ['/a', '/b'] }]);
    expect((await request(proxy.port, '/b/x')).status).toBe(200);

    // The same bad text read twice is reported, once.
    writeFileSync(proxy.routesFile, text.slice(0, 40));
    proxy.reloader!.check();
    expect(proxy.routesEvents).toHaveLength(1);
    proxy.reloader!.check();
    proxy.reloader!.check();
    expect(proxy.routesEvents).toHaveLength(2);
    expect(proxy.routesEvents[1]).toMatchObject({ decision: 'rejected', error: expect.stringContaining('not valid JSON') });
    // A missing file too; the routes in force stay.
    rmSync(proxy.routesFile);
    proxy.reloader!.check();
    proxy.reloader!.check();
    expect(proxy.routesEvents[2]).toMatchObject({ decision: 'rejected', error: expect.stringContaining('ENOENT') });
    expect((await request(proxy.port, '/b/x')).status).toBe(200);
  });
});
