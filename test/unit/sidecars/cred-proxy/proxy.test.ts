import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  allHeaderText,
  type Handler,
  makePki,
  type Pki,
  rawExchange,
  replaceFile,
  request,
  type RouteSpec,
  startProxy,
  startUpstream,
  until,
} from './harness.js';

const TOKEN = 'sk-ant-real-0123456789abcdef-SECRET';
const ROTATED = 'sk-ant-rotated-fedcba9876543210-SECRET';
const PLACEHOLDER = 'bottle-placeholder-r1';
const fp = (t: string) => createHash('sha256').update(t).digest('hex').slice(0, 8);

let pki: Pki;
beforeAll(() => {
  pki = makePki();
});
afterAll(() => rmSync(pki.dir, { recursive: true, force: true }));

/** The model API over TLS (its CA given to the route) and a proxy with one route to it. */
async function modelSetup(
  opts: { handler?: Handler; inject?: RouteSpec['inject']; token?: string; upstreamPath?: string } = {},
) {
  const model = await startUpstream({ tls: { key: pki.key, cert: pki.cert }, ...(opts.handler ? { handler: opts.handler } : {}) });
  const proxy = await startProxy(
    [
      {
        path: '/anthropic',
        upstream: `${model.origin}${opts.upstreamPath ?? ''}`,
        inject: opts.inject ?? { header: 'Authorization', format: 'Bearer {token}' },
        roles: ['anthropic-base-url'],
        token: opts.token ?? TOKEN,
        ca_file: pki.caFile,
      },
    ],
    { placeholder: PLACEHOLDER },
  );
  return { model, ...proxy };
}

describe('injection', () => {
  it("gives the model API the real token in the route's header and format, never the placeholder or the agent's own credentials", async () => {
    const { model, port, audits } = await modelSetup();
    const reply = await request(port, '/anthropic/v1/messages?beta=true', {
      method: 'POST',
      body: '{"model":"m","stream":false}',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${PLACEHOLDER}`,
        'x-api-key': PLACEHOLDER,
        'proxy-authorization': 'Basic dXNlcjpwYXNz',
        cookie: 'session=agent-side',
        'x-custom': 'kept',
        'anthropic-version': '2023-06-01',
        'x-sneaky': `token=${PLACEHOLDER}`,
        connection: 'x-hop',
        'x-hop': 'dropped',
        'x-forwarded-host': 'evil.test',
        'accept-encoding': 'gzip, br',
      },
    });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body)).toMatchObject({ ok: true, url: '/v1/messages?beta=true' });

    expect(model.requests).toHaveLength(1);
    const seen = model.requests[0]!;
    expect(seen).toMatchObject({ method: 'POST', url: '/v1/messages?beta=true', body: '{"model":"m","stream":false}' });
    expect(seen.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(seen.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === 'authorization')).toHaveLength(1);
    expect(seen.headers.host).toBe(`127.0.0.1:${model.port}`);
    expect(seen.headers['x-custom']).toBe('kept');
    expect(seen.headers['anthropic-version']).toBe('2023-06-01');
    expect(seen.headers['accept-encoding']).toBe('identity');
    for (const h of ['x-api-key', 'proxy-authorization', 'cookie', 'x-sneaky', 'x-hop', 'x-forwarded-host']) expect(seen.headers[h], h).toBeUndefined();
    expect(allHeaderText(seen)).not.toContain(PLACEHOLDER);

    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({ type: 'request', route: '/anthropic', method: 'POST', path: '/anthropic/v1/messages', status: 200, token_fp: fp(TOKEN) });
  });

  it('replaces the header the route injects (x-api-key) rather than adding a second one', async () => {
    const { model, port } = await modelSetup({ inject: { header: 'x-api-key', format: '{token}' } });
    const reply = await request(port, '/anthropic/v1/models', { headers: { 'x-api-key': PLACEHOLDER, 'X-Api-Key': 'another' } });
    expect(reply.status).toBe(200);
    const seen = model.requests[0]!;
    expect(seen.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-api-key')).toHaveLength(1);
    expect(seen.headers['x-api-key']).toBe(TOKEN);
    expect(seen.headers.authorization).toBeUndefined();
  });

  it('puts a token with $ patterns in it literally', async () => {
    const odd = "tok$&$1$'$`-0123456789";
    const { model, port } = await modelSetup({ token: odd });
    await request(port, '/anthropic/x');
    expect(model.requests[0]!.headers.authorization).toBe(`Bearer ${odd}`);
  });
});

describe('routing', () => {
  it("sends a request with another host's Host header to the route's upstream all the same", async () => {
    const decoy = await startUpstream();
    const { model, port } = await modelSetup();
    const reply = await request(port, '/anthropic/v1/messages', { headers: { host: `127.0.0.1:${decoy.port}` } });
    expect(reply.status).toBe(200);
    expect(model.requests).toHaveLength(1);
    expect(model.requests[0]!.headers.host).toBe(`127.0.0.1:${model.port}`);
    expect(decoy.requests).toHaveLength(0);

    // Absolute-form (a forward-proxy request naming the decoy) is refused outright.
    const abs = await rawExchange(port, `GET http://127.0.0.1:${decoy.port}/anthropic/v1 HTTP/1.1\r\nHost: 127.0.0.1:${decoy.port}\r\nConnection: close\r\n\r\n`);
    expect(abs).toMatch(/^HTTP\/1\.1 400 /);
    expect(abs).toContain('not a forward proxy');
    const tunnel = await rawExchange(port, `CONNECT 127.0.0.1:${decoy.port} HTTP/1.1\r\nHost: 127.0.0.1:${decoy.port}\r\n\r\n`);
    expect(tunnel).toMatch(/^HTTP\/1\.1 405 /);
    expect(decoy.requests).toHaveLength(0);
    expect(model.requests).toHaveLength(1);
  });

  it('picks the longest prefix on a segment boundary, keeps the upstream base path, and answers 404 naming the routes', async () => {
    const one = await startUpstream();
    const two = await startUpstream();
    const { port, audits } = await startProxy([
      { path: '/a', upstream: `${one.origin}/base/`, inject: { header: 'authorization', format: 'Bearer {token}' }, token: 'token-one-0123456789' },
      { path: '/a/b/', upstream: two.origin, inject: { header: 'authorization', format: 'Bearer {token}' }, token: 'token-two-0123456789' },
    ]);
    await request(port, '/a/b/c?x=1');
    await request(port, '/a/bc');
    await request(port, '/a');
    await request(port, '/a?q=2');
    await request(port, '/a/b');
    expect(two.requests.map((r) => [r.url, r.headers.authorization])).toEqual([
      ['/c?x=1', 'Bearer token-two-0123456789'],
      ['/', 'Bearer token-two-0123456789'],
    ]);
    expect(one.requests.map((r) => r.url)).toEqual(['/base/bc', '/base', '/base?q=2']);

    const miss = await request(port, '/ab/c');
    expect(miss.status).toBe(404);
    const doc = JSON.parse(miss.body);
    expect(doc.routes).toEqual(['/a', '/a/b']);
    expect(doc.error.message).toContain('/a, /a/b');
    expect(one.requests).toHaveLength(3);
    expect(two.requests).toHaveLength(2);
    await until(() => audits.length === 6, 'the audit lines');
    expect(audits.find((a) => a.status === 404)).toMatchObject({ route: null, path: '/ab/c', token_fp: null });
  });

  it('refuses dot segments, and a credential in the request target, before any upstream sees them', async () => {
    const { model, port, audits } = await modelSetup();
    for (const p of ['/anthropic/../admin', '/anthropic/%2e%2E/admin', '/anthropic/x/..%2fadmin', '/anthropic/./v1']) {
      const reply = await request(port, p);
      expect(reply.status, p).toBe(400);
      expect(reply.body).toContain('dot segments');
    }
    const withPlaceholder = await request(port, `/anthropic/v1?key=${PLACEHOLDER}`);
    expect(withPlaceholder.status).toBe(400);
    expect(withPlaceholder.body).toContain('placeholder');
    const withToken = await request(port, `/anthropic/v1/${TOKEN}/x`);
    expect(withToken.status).toBe(400);
    expect(withToken.body).not.toContain(TOKEN);
    expect(model.requests).toHaveLength(0);
    await until(() => audits.length === 6, 'the audit lines');
    expect(audits[5]).toMatchObject({ status: 400, alarm: 'a real token in the request target', path: '/anthropic/v1/[redacted]/x' });
    expect(JSON.stringify(audits)).not.toContain(TOKEN);
  });
});

describe('streaming', () => {
  it('passes ten server-sent events spaced 200 ms apart on as ten separate reads over about two seconds', async () => {
    const { port } = await modelSetup({
      handler: (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        let n = 0;
        const next = () => {
          n += 1;
          res.write(`event: tick\ndata: {"n":${n}}\n\n`);
          if (n === 10) res.end();
          else setTimeout(next, 200);
        };
        setTimeout(next, 50);
      },
    });
    const reply = await request(port, '/anthropic/v1/messages', { method: 'POST', body: '{"stream":true}' });
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toBe('text/event-stream');
    expect(reply.reads.map((r) => r.data)).toEqual(Array.from({ length: 10 }, (_, i) => `event: tick\ndata: {"n":${i + 1}}\n\n`));
    const times = reply.reads.map((r) => r.at);
    // The spread of arrival times, not the speed: the events came as produced, not at the end.
    expect(times[9]! - times[0]!).toBeGreaterThan(1500);
    for (let i = 1; i < 10; i += 1) expect(times[i]! - times[i - 1]!, `gap before event ${i + 1}`).toBeGreaterThan(100);
  });

  it('ends the upstream exchange when the agent goes away mid-stream, and audits it', async () => {
    let upstreamClosed = false;
    const { port, audits } = await modelSetup({
      handler: (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const timer = setInterval(() => res.write('data: tick\n\n'), 50);
        res.on('close', () => {
          clearInterval(timer);
          upstreamClosed = true;
        });
      },
    });
    await new Promise<void>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, path: '/anthropic/v1/messages', agent: false }, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => undefined);
      req.on('close', () => resolve());
      setTimeout(() => reject(new Error('no first event')), 3000).unref();
      req.end();
    });
    await until(() => upstreamClosed, 'the upstream response to close');
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({ status: 200, error: 'the connection closed before the response ended' });
  });

  it('streams a large body both ways and counts the bytes', async () => {
    const big = 'x'.repeat(3 * 1024 * 1024);
    const { port, audits } = await modelSetup({
      handler: (_req, res, body) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
        res.end(body);
      },
    });
    const reply = await request(port, '/anthropic/upload', { method: 'POST', chunks: [big.slice(0, 1_000_000), big.slice(1_000_000)] });
    expect(reply.status).toBe(200);
    expect(reply.body.length).toBe(big.length);
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({ bytes_up: big.length, bytes_down: big.length, status: 200 });
  });
});

describe('tokens', () => {
  it('uses a rotated token file for the next request, without a restart', async () => {
    const { model, port, tokenFiles, audits } = await modelSetup();
    await request(port, '/anthropic/v1/messages');
    expect(model.requests[0]!.headers.authorization).toBe(`Bearer ${TOKEN}`);

    replaceFile(tokenFiles[0]!, `${ROTATED}\n`);
    await until(
      async () => {
        await request(port, '/anthropic/v1/messages');
        return model.requests.at(-1)!.headers.authorization === `Bearer ${ROTATED}`;
      },
      'the rotated token upstream',
      3000,
    );
    for (const r of model.requests) expect([`Bearer ${TOKEN}`, `Bearer ${ROTATED}`]).toContain(r.headers.authorization);
    await until(() => audits.length === model.requests.length, 'the audit lines');
    expect(audits[0]!.token_fp).toBe(fp(TOKEN));
    expect(audits.at(-1)!.token_fp).toBe(fp(ROTATED));
  });

  it('refuses the route (503) while its token file is gone, and /healthz says so', async () => {
    const { model, port, tokenFiles } = await modelSetup();
    expect((await request(port, '/healthz')).status).toBe(200);
    rmSync(tokenFiles[0]!);
    await until(async () => (await request(port, '/healthz')).status === 503, 'health to fail', 3000);
    const health = await request(port, '/healthz');
    expect(health.body).toContain('/anthropic');
    expect(health.body).toContain('ENOENT');
    const refused = await request(port, '/anthropic/v1/messages');
    expect(refused.status).toBe(503);
    expect(refused.body).toContain('token is unavailable');
    expect(model.requests).toHaveLength(0);

    replaceFile(tokenFiles[0]!, ROTATED);
    await until(async () => (await request(port, '/healthz')).status === 200, 'health to recover', 3000);
    expect((await request(port, '/anthropic/v1/messages')).status).toBe(200);
    expect(model.requests[0]!.headers.authorization).toBe(`Bearer ${ROTATED}`);
  });
});

describe('the token rule', () => {
  it('a token file rotated to a token with a space or a tab inside is refused like a missing one: 503, never injected', async () => {
    const { model, port, tokenFiles } = await modelSetup();
    expect((await request(port, '/anthropic/v1/messages')).status).toBe(200);
    for (const bad of ['sk-ant-rotated fedcba9876543210', 'sk-ant-rotated\tfedcba9876543210']) {
      replaceFile(tokenFiles[0]!, `${bad}\n`);
      await until(async () => (await request(port, '/healthz')).status === 503, 'health to fail', 3000);
      const health = await request(port, '/healthz');
      expect(health.body).toContain('whitespace');
      expect(health.body).not.toContain('fedcba9876543210');
      const before = model.requests.length;
      const refused = await request(port, '/anthropic/v1/messages');
      expect(refused.status).toBe(503);
      expect(model.requests).toHaveLength(before);
      replaceFile(tokenFiles[0]!, ROTATED);
      await until(async () => (await request(port, '/healthz')).status === 200, 'health to recover', 3000);
    }
    for (const r of model.requests) expect([`Bearer ${TOKEN}`, `Bearer ${ROTATED}`]).toContain(r.headers.authorization);
  });
});

describe('redaction', () => {
  it('redacts a token the upstream echoes in its body, a header and its status text, also when split across chunks', async () => {
    const half = Math.floor(TOKEN.length / 2);
    const { port, audits, logs } = await modelSetup({
      handler: (req, res) => {
        const token = String(req.headers.authorization).replace('Bearer ', '');
        const parts = [`data: first ${token} end\n\n`, `data: split ${token.slice(0, half)}`, `${token.slice(half)} done\n\n`];
        // Content-Length as the upstream counted it: the redacted body is shorter, so it must not reach the agent.
        const length = parts.reduce((n, p) => n + Buffer.byteLength(p), 0);
        res.writeHead(401, `Bad key ${token}`, { 'content-type': 'text/plain', 'x-echo': `key=${token}`, 'content-length': length });
        res.write(parts[0]);
        // The next token is split across two writes, 100 ms apart.
        setTimeout(() => res.write(parts[1]), 100);
        setTimeout(() => res.end(parts[2]), 200);
      },
    });
    const reply = await request(port, '/anthropic/v1/messages');
    expect(reply.status).toBe(401);
    expect(reply.statusMessage).toBe('Bad key [redacted]');
    expect(reply.body).toBe('data: first [redacted] end\n\ndata: split [redacted] done\n\n');
    expect(reply.headers['x-echo']).toBe('key=[redacted]');
    expect(reply.headers['content-length']).toBeUndefined();
    expect(reply.rawHeaders.join('\n')).not.toContain(TOKEN);
    // The first event was released at once; only the possible start of a token waited.
    expect(reply.reads.map((r) => r.data)).toEqual(['data: first [redacted] end\n\n', 'data: split ', '[redacted] done\n\n']);
    for (const r of reply.reads) expect(r.data).not.toContain(TOKEN.slice(0, half));
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]!.redacted).toBe(4); // status text, header, two in the body
    expect(logs.join('\n')).toContain('redacted');
    expect(JSON.stringify({ audits, logs })).not.toContain(TOKEN);
  });

  it('keeps redacting a rotated-out token', async () => {
    const { port, tokenFiles, tokens } = await modelSetup({ handler: (_req, res) => res.end(`old: ${TOKEN}`) });
    replaceFile(tokenFiles[0]!, ROTATED);
    await until(() => tokens.get(tokenFiles[0]!).ok && (tokens.get(tokenFiles[0]!) as { fp: string }).fp === fp(ROTATED), 'the rotation');
    const reply = await request(port, '/anthropic/x');
    expect(reply.body).toBe('old: [redacted]');
  });

  it('decodes a compressed body the upstream sent anyway, so a token in it is still redacted', async () => {
    const { port, model } = await modelSetup({
      handler: (req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
        res.end(zlib.gzipSync(JSON.stringify({ error: `invalid key ${String(req.headers.authorization)}` })));
      },
    });
    const reply = await request(port, '/anthropic/v1/messages', { headers: { 'accept-encoding': 'gzip' } });
    expect(model.requests[0]!.headers['accept-encoding']).toBe('identity');
    expect(reply.headers['content-encoding']).toBeUndefined();
    expect(JSON.parse(reply.body)).toEqual({ error: 'invalid key Bearer [redacted]' });
  });

  it('refuses a body in an encoding it cannot inspect', async () => {
    const { port } = await modelSetup({
      handler: (_req, res) => {
        res.writeHead(200, { 'content-encoding': 'zstd' });
        res.end('opaque');
      },
    });
    const reply = await request(port, '/anthropic/x');
    expect(reply.status).toBe(502);
    expect(reply.body).toContain('zstd');
  });

  it('drops Set-Cookie and hop-by-hop headers from responses', async () => {
    const { port } = await modelSetup({
      handler: (_req, res) => {
        res.writeHead(200, { 'set-cookie': ['sid=minted-for-the-real-token', 'b=2'], connection: 'keep-alive, x-hop', 'x-hop': '1', 'x-kept': 'yes' });
        res.end('ok');
      },
    });
    const reply = await request(port, '/anthropic/x');
    expect(reply.headers['set-cookie']).toBeUndefined();
    expect(reply.headers['x-hop']).toBeUndefined();
    expect(reply.headers['x-kept']).toBe('yes');
  });
});

describe('slow and kept-alive upstreams', () => {
  it('waits for a response slower than the keep-alive timeout, reuses a kept-alive connection, and drops it once unused', async () => {
    const model = await startUpstream({
      tls: { key: pki.key, cert: pki.cert },
      handler: (req, res) => {
        setTimeout(() => res.end(`slow ${req.url}`), req.url === '/slow' ? 800 : 0);
      },
    });
    const { port } = await startProxy([{ path: '/m', upstream: model.origin, inject: { header: 'authorization', format: 'Bearer {token}' }, token: TOKEN, ca_file: pki.caFile }], {
      upstreamKeepAliveMs: 300,
    });
    const slow = await request(port, '/m/slow');
    expect(slow).toMatchObject({ status: 200, body: 'slow /slow' });
    expect((await request(port, '/m/a')).status).toBe(200);
    expect((await request(port, '/m/b')).status).toBe(200);
    expect(model.connections).toBe(1);
    // Unused for longer than the keep-alive time: closed, and the next request connects afresh.
    await new Promise((r) => setTimeout(r, 600));
    expect((await request(port, '/m/c')).status).toBe(200);
    expect(model.connections).toBe(2);
    expect(model.requests.map((r) => r.url)).toEqual(['/slow', '/a', '/b', '/c']);
  });
});

describe('upstream failures', () => {
  it('answers 502 with a short reason, never the token, when the upstream cannot be reached or its certificate is not trusted', async () => {
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const deadPort = (closed.address() as net.AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const rogue = await startUpstream({ tls: { key: pki.rogueKey, cert: pki.rogueCert } });
    const trusted = await startUpstream({ tls: { key: pki.key, cert: pki.cert } });
    const inject = { header: 'authorization', format: 'Bearer {token}' };
    const { port, audits, logs } = await startProxy([
      { path: '/dead', upstream: `https://127.0.0.1:${deadPort}`, inject, token: TOKEN, ca_file: pki.caFile },
      { path: '/rogue', upstream: rogue.origin, inject, token: TOKEN, ca_file: pki.caFile },
      // The test CA is not among the system CAs: without ca_file the same server is refused.
      { path: '/no-ca', upstream: trusted.origin, inject, token: TOKEN },
    ]);
    const dead = await request(port, '/dead/v1');
    expect(dead.status).toBe(502);
    expect(dead.body).toContain('ECONNREFUSED');
    const bad = await request(port, '/rogue/v1');
    expect(bad.status).toBe(502);
    expect(bad.body).toMatch(/TLS with https:\/\/127\.0\.0\.1:\d+ failed \(\w+\)/);
    const noCa = await request(port, '/no-ca/v1');
    expect(noCa.status).toBe(502);
    expect(noCa.body).toContain('TLS');
    expect(rogue.requests).toHaveLength(0);
    expect(trusted.requests).toHaveLength(0);
    await until(() => audits.length === 3, 'the audit lines');
    expect(audits.map((a) => a.status)).toEqual([502, 502, 502]);
    for (const a of audits) expect(a.error).toBeTruthy();
    expect(JSON.stringify({ dead, bad, noCa, audits, logs })).not.toContain(TOKEN);
  });

  it('refuses Upgrade requests', async () => {
    const { port, model } = await modelSetup();
    const reply = await rawExchange(port, 'GET /anthropic/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(model.requests).toHaveLength(0);
  });
});

describe('audit', () => {
  it('writes one record per request with the token fingerprint, the path without its query, and no token anywhere', async () => {
    const { port, audits, logs } = await modelSetup();
    await request(port, '/anthropic/v1/messages?api_key=secret-ish&x=1', { method: 'POST', body: 'hello' });
    await request(port, '/nowhere');
    await until(() => audits.length === 2, 'the audit lines');
    expect(audits[0]).toMatchObject({
      type: 'request',
      route: '/anthropic',
      method: 'POST',
      path: '/anthropic/v1/messages',
      status: 200,
      bytes_up: 5,
      token_fp: fp(TOKEN),
    });
    expect(audits[0]!.bytes_down).toBeGreaterThan(0);
    expect(audits[0]!.duration_ms).toBeGreaterThanOrEqual(0);
    expect(audits[1]).toMatchObject({ route: null, path: '/nowhere', status: 404, token_fp: null });
    const text = JSON.stringify({ audits, logs });
    expect(text).not.toContain(TOKEN);
    expect(text).not.toContain('secret-ish');
  });
});

describe('the address policy', () => {
  it('refuses an upstream whose name resolves to a private address not opted in, naming the class and the key, in the answer and the audit; nothing is dialled', async () => {
    const model = await startUpstream();
    const { port, audits } = await startProxy(
      [{ path: '/lan', upstream: `http://lan.test:${model.port}`, inject: { header: 'x-api-key', format: '{token}' }, roles: [], token: TOKEN }],
      { resolve: async () => ['10.20.0.5'], bottle: 'web' },
    );
    const reply = await request(port, '/lan/v1/x');
    expect(reply.status).toBe(403);
    expect(reply.body).toContain('lan.test resolves to 10.20.0.5, a private address (RFC 1918); allow it with bottles.web.private_networks');
    await until(() => audits.length > 0, 'the audit line');
    expect(audits[0]).toMatchObject({ route: '/lan', status: 403, address_class: 'private (RFC 1918)' });
    expect(model.connections).toBe(0);
  });

  it('dials the vetted address of a name it resolved itself (no second lookup), keeping the TLS name check on the name', async () => {
    const model = await startUpstream({ tls: { key: pki.key, cert: pki.cert } });
    let lookups = 0;
    // model.test exists only in this resolver: a second lookup by anyone else would fail.
    const resolve = async (h: string) => {
      lookups += 1;
      if (h !== 'model.test') throw Object.assign(new Error('not found'), { code: 'ENOTFOUND' });
      return ['127.0.0.1'];
    };
    const { port } = await startProxy(
      [{ path: '/m', upstream: `https://model.test:${model.port}`, inject: { header: 'x-api-key', format: '{token}' }, roles: [], token: TOKEN, ca_file: pki.caFile }],
      { resolve },
    );
    const reply = await request(port, '/m/v1/x');
    expect(reply.status).toBe(200);
    expect(model.requests[0]!.headers['x-api-key']).toBe(TOKEN);
    expect(lookups).toBe(1);
  });
});
