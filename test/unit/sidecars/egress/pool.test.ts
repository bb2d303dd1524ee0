import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { fakeResolver, startHttpUpstream, startProxy, startRecordingUpstream, until, viaProxy } from './harness.js';

/**
 * The keep-alive pool of plain-HTTP upstream connections (upstream.ts UpstreamPool): a
 * connection is reused only for the same vetted target (name, port, and the addresses vetted
 * for the request), never across targets, and the policy in force decides every request first.
 */

const LOOPBACK = ['127.0.0.1'];

const agents: http.Agent[] = [];
afterEach(() => {
  for (const a of agents.splice(0)) a.destroy();
});

/** A keep-alive client: its requests share one connection to the proxy. */
function keepAliveClient(proxyPort: number) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  agents.push(agent);
  let connections = 0;
  const get = (url: string, opts: { method?: string; body?: string } = {}) =>
    new Promise<{ status: number; body: string; reused: boolean }>((resolve, reject) => {
      const req = http.request({ agent, host: '127.0.0.1', port: proxyPort, method: opts.method ?? 'GET', path: url, headers: { host: new URL(url).host } });
      req.on('socket', (s) => {
        if (!(s as net.Socket & { counted?: boolean }).counted) {
          (s as net.Socket & { counted?: boolean }).counted = true;
          connections += 1;
        }
      });
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), reused: req.reusedSocket }));
      });
      req.on('error', reject);
      req.end(opts.body);
    });
  return {
    get,
    get connections() {
      return connections;
    },
  };
}

describe('upstream connection pool', () => {
  it('reuses one upstream connection across requests to the same vetted target, from one keep-alive client or several clients', async () => {
    const up = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK });
    const { proxy, port, audits } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve });

    const client = keepAliveClient(port);
    for (let i = 0; i < 5; i++) {
      const r = await client.get(`http://allowed.test:${up.port}/k${i}`);
      expect(r.status).toBe(200);
      expect(r.body).toBe(`hello from upstream: GET /k${i} `);
    }
    expect(client.connections).toBe(1); // the client's connection to the proxy stays open too
    // New client connections each time, same target: still the one upstream connection.
    for (let i = 0; i < 3; i++) expect((await viaProxy(port, `http://allowed.test:${up.port}/n${i}`)).status).toBe(200);
    expect(up.requests.map((r) => r.url)).toEqual(['/k0', '/k1', '/k2', '/k3', '/k4', '/n0', '/n1', '/n2']);
    expect(up.connections).toBe(1);
    expect(proxy.upstreamConnections()).toEqual({ idle: 1, busy: 0 });
    await until(() => audits.length === 8, 'eight audit lines');
    for (const a of audits) expect(a).toMatchObject({ decision: 'allow', status: 200, address: '127.0.0.1' });
  });

  it('never reuses a connection for another port, another name on the same address, or another set of vetted addresses', async () => {
    const a = await startHttpUpstream();
    const b = await startHttpUpstream();
    let second = false;
    const { port } = await startProxy({
      allowlist: [`one.test:${a.port}`, `one.test:${b.port}`, `two.test:${a.port}`, `moving.test:${a.port}`],
      resolve: async (host) => {
        if (host === 'one.test' || host === 'two.test') return LOOPBACK;
        if (host === 'moving.test') return second ? ['127.0.0.1', '127.0.0.2'] : LOOPBACK;
        throw Object.assign(new Error('ENOTFOUND'), { code: 'ENOTFOUND' });
      },
      isForbidden: (ip) => (ip === '127.0.0.1' || ip === '127.0.0.2' ? undefined : 'forbidden'),
      resolveCacheMs: 0,
    });

    expect((await viaProxy(port, `http://one.test:${a.port}/`)).status).toBe(200);
    expect((await viaProxy(port, `http://one.test:${b.port}/`)).status).toBe(200); // another port
    expect([a.connections, b.connections]).toEqual([1, 1]);
    expect((await viaProxy(port, `http://two.test:${a.port}/`)).status).toBe(200); // another name, same address and port
    expect(a.connections).toBe(2);
    expect((await viaProxy(port, `http://moving.test:${a.port}/`)).status).toBe(200);
    expect(a.connections).toBe(3);
    second = true; // the name now resolves to another set of addresses (both vetted again)
    expect((await viaProxy(port, `http://moving.test:${a.port}/`)).status).toBe(200);
    expect(a.connections).toBe(4);
    // ...and each of them is still reused for its own target.
    expect((await viaProxy(port, `http://one.test:${a.port}/`)).status).toBe(200);
    expect((await viaProxy(port, `http://two.test:${a.port}/`)).status).toBe(200);
    expect((await viaProxy(port, `http://one.test:${b.port}/`)).status).toBe(200);
    expect([a.connections, b.connections]).toEqual([4, 1]);
    expect(a.requests.map((r) => r.headers.host)).toEqual([
      `one.test:${a.port}`,
      `two.test:${a.port}`,
      `moving.test:${a.port}`,
      `moving.test:${a.port}`,
      `one.test:${a.port}`,
      `two.test:${a.port}`,
    ]);
  });

  it('a reload that drops a host refuses its next request although a pooled connection to it is open, and closes that connection', async () => {
    const up = await startHttpUpstream();
    const other = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'dropped.test': LOOPBACK, 'kept.test': LOOPBACK });
    const { proxy, port, audits } = await startProxy({ allowlist: [`dropped.test:${up.port}`, `kept.test:${other.port}`], resolve });
    const client = keepAliveClient(port);

    expect((await client.get(`http://dropped.test:${up.port}/before`)).status).toBe(200);
    expect((await client.get(`http://kept.test:${other.port}/before`)).status).toBe(200);
    expect(proxy.upstreamConnections().idle).toBe(2);
    expect(up.open).toBe(1);

    proxy.setAllowlist([`kept.test:${other.port}`]);
    const refused = await client.get(`http://dropped.test:${up.port}/after`);
    expect(refused.status).toBe(403);
    expect(refused.body).toContain(`dropped.test:${up.port}`);
    expect(up.requests.map((r) => r.url)).toEqual(['/before']);
    await until(() => up.open === 0, 'the pooled connection to the dropped host to close');
    // The host still allowed keeps its pooled connection.
    expect((await viaProxy(port, `http://kept.test:${other.port}/after`)).status).toBe(200);
    expect(other.connections).toBe(1);
    expect(proxy.upstreamConnections()).toEqual({ idle: 1, busy: 0 });
    await until(() => audits.length === 4, 'four audit lines');
    expect(audits.map((a) => [a.host, a.decision])).toEqual([
      ['dropped.test', 'allow'],
      ['kept.test', 'allow'],
      ['dropped.test', 'deny'],
      ['kept.test', 'allow'],
    ]);
  });

  it('a reload during an exchange lets it finish but does not keep its connection', async () => {
    let release: (() => void) | undefined;
    const up = await startHttpUpstream((_req, res) => {
      release = () => res.end('late answer');
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('early ');
    });
    const { resolve } = fakeResolver({ 'slow.test': LOOPBACK });
    const { proxy, port } = await startProxy({ allowlist: [`slow.test:${up.port}`], resolve });
    const reply = viaProxy(port, `http://slow.test:${up.port}/`);
    await until(() => release !== undefined, 'the upstream to start answering');
    proxy.setAllowlist([]);
    release!();
    expect(await reply).toMatchObject({ status: 200, body: 'early late answer' });
    await until(() => up.open === 0, 'the connection to close');
    expect(proxy.upstreamConnections()).toEqual({ idle: 0, busy: 0 });
  });

  it('checks the cached resolution against the address policy on every use', async () => {
    const up = await startHttpUpstream();
    const { resolve, lookups } = fakeResolver({ 'allowed.test': LOOPBACK });
    let forbidLoopback = false;
    const { port } = await startProxy({
      allowlist: [`allowed.test:${up.port}`],
      resolve,
      isForbidden: (ip) => (ip === '127.0.0.1' && !forbidLoopback ? undefined : 'forbidden'),
    });
    expect((await viaProxy(port, `http://allowed.test:${up.port}/`)).status).toBe(200);
    expect((await viaProxy(port, `http://allowed.test:${up.port}/`)).status).toBe(200);
    expect(lookups).toEqual(['allowed.test']); // the second request used the cached answer
    forbidLoopback = true;
    const refused = await viaProxy(port, `http://allowed.test:${up.port}/`);
    expect(refused.status).toBe(403);
    expect(refused.body).toContain('allowed.test resolves to 127.0.0.1');
    expect(up.requests).toHaveLength(2);
    expect(up.connections).toBe(1);
  });

  it('resolves again once the cached answer is older than resolveCacheMs, and on every request with 0', async () => {
    const up = await startHttpUpstream();
    const cached = fakeResolver({ 'allowed.test': LOOPBACK });
    const short = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: cached.resolve, resolveCacheMs: 50 });
    await viaProxy(short.port, `http://allowed.test:${up.port}/`);
    await viaProxy(short.port, `http://allowed.test:${up.port}/`);
    await new Promise((r) => setTimeout(r, 80));
    await viaProxy(short.port, `http://allowed.test:${up.port}/`);
    expect(cached.lookups).toEqual(['allowed.test', 'allowed.test']);
    const every = fakeResolver({ 'allowed.test': LOOPBACK });
    const none = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: every.resolve, resolveCacheMs: 0 });
    await viaProxy(none.port, `http://allowed.test:${up.port}/`);
    await viaProxy(none.port, `http://allowed.test:${up.port}/`);
    expect(every.lookups).toEqual(['allowed.test', 'allowed.test']);
  });

  it('keeps at most upstreamMaxIdle idle connections per target and closes them after upstreamIdleMs', async () => {
    // The answers wait until all five requests are in: five connections in use at once.
    const waiting: http.ServerResponse[] = [];
    const up = await startHttpUpstream((_req, res) => {
      waiting.push(res);
      if (waiting.length === 5) for (const r of waiting) r.end('ok');
    });
    const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK });
    const { proxy, port } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve, upstreamMaxIdle: 2, upstreamIdleMs: 150 });
    const replies = await Promise.all(Array.from({ length: 5 }, (_, i) => viaProxy(port, `http://allowed.test:${up.port}/${i}`)));
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(up.connections).toBe(5);
    await until(() => up.open === 2, 'all but two connections to close');
    expect(proxy.upstreamConnections()).toEqual({ idle: 2, busy: 0 });
    await until(() => up.open === 0, 'the idle connections to time out', 2000);
    expect(proxy.upstreamConnections()).toEqual({ idle: 0, busy: 0 });
  });

  it('does not keep a connection whose exchange did not end cleanly, or that the upstream asked to close', async () => {
    let mode: 'close' | 'hang' | 'ok' = 'close';
    const up = await startHttpUpstream((_req, res) => {
      if (mode === 'close') {
        res.writeHead(200, { connection: 'close', 'content-type': 'text/plain' });
        res.end('bye');
      } else if (mode === 'hang') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('part of it');
      } else {
        res.end('ok');
      }
    });
    const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK });
    const { proxy, port } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve });
    expect((await viaProxy(port, `http://allowed.test:${up.port}/`)).body).toBe('bye');
    await until(() => up.open === 0, 'the connection the upstream closed');

    // A client that goes away in the middle of the answer takes the upstream connection with it.
    mode = 'hang';
    await new Promise<void>((resolve) => {
      const req = http.request({ host: '127.0.0.1', port, path: `http://allowed.test:${up.port}/`, headers: { host: `allowed.test:${up.port}` }, agent: false });
      req.on('response', (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => undefined);
      req.end();
    });
    await until(() => up.open === 0, 'the half-answered connection to close');
    expect(proxy.upstreamConnections()).toEqual({ idle: 0, busy: 0 });

    mode = 'ok';
    expect((await viaProxy(port, `http://allowed.test:${up.port}/`)).body).toBe('ok');
    expect(up.connections).toBe(3);
    expect(proxy.upstreamConnections()).toEqual({ idle: 1, busy: 0 });
  });

  it('a request whose body carries the placeholder aborts its upstream request and never reuses that connection', async () => {
    const canary = 'bottle-placeholder-0123456789';
    const up = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK });
    const { proxy, port } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve, secrets: { canary } });
    expect((await viaProxy(port, `http://allowed.test:${up.port}/warm`)).status).toBe(200);
    expect(proxy.upstreamConnections().idle).toBe(1);
    const blocked = await viaProxy(port, `http://allowed.test:${up.port}/post`, { method: 'POST', body: `key=${canary}` });
    expect(blocked.status).toBe(403);
    expect(up.requests.map((r) => r.url)).toEqual(['/warm']);
    expect((await viaProxy(port, `http://allowed.test:${up.port}/after`)).status).toBe(200);
    expect(up.requests.map((r) => r.url)).toEqual(['/warm', '/after']);
    expect(up.requests.some((r) => r.body.includes(canary))).toBe(false);
  });

  it('sends a bodiless idempotent request again, once, when its reused connection turns out closed; never a request with a body', async () => {
    // The upstream answers the first request on each connection, then resets the connection on
    // the next one without answering: what a server closing an idle connection looks like to
    // the proxy when it reuses it at that moment.
    let connections = 0;
    const server = net.createServer((s) => {
      connections += 1;
      let answered = false;
      s.on('error', () => undefined);
      s.on('data', (chunk: Buffer) => {
        if (!chunk.includes('\r\n\r\n')) return;
        if (answered) {
          s.resetAndDestroy?.() ?? s.destroy();
          return;
        }
        answered = true;
        s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok');
      });
    });
    const upPort = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as net.AddressInfo).port)));
    try {
      const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK });
      const { port, audits } = await startProxy({ allowlist: [`allowed.test:${upPort}`], resolve });
      expect((await viaProxy(port, `http://allowed.test:${upPort}/1`)).status).toBe(200);
      expect((await viaProxy(port, `http://allowed.test:${upPort}/2`)).status).toBe(200); // reset, then sent again
      expect(connections).toBe(2);
      const post = await viaProxy(port, `http://allowed.test:${upPort}/3`, { method: 'POST', body: 'data' });
      expect(post.status).toBe(502);
      expect(connections).toBe(2);
      await until(() => audits.length === 3, 'three audit lines');
      expect(audits.map((a) => a.status)).toEqual([200, 200, 502]);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('sends nothing upstream when the client leaves while the name is being resolved', async () => {
    const rec = await startRecordingUpstream();
    let releaseResolve: (() => void) | undefined;
    const { proxy, port } = await startProxy({
      allowlist: [`allowed.test:${rec.port}`],
      resolve: () =>
        new Promise<string[]>((r) => {
          releaseResolve = () => r(LOOPBACK);
        }),
    });
    const sock = net.connect(port, '127.0.0.1');
    sock.on('error', () => undefined);
    await new Promise((r) => sock.on('connect', r));
    sock.write(`GET http://allowed.test:${rec.port}/ HTTP/1.1\r\nHost: allowed.test:${rec.port}\r\n\r\n`);
    await until(() => releaseResolve !== undefined, 'the lookup');
    sock.destroy();
    await new Promise((r) => setTimeout(r, 20));
    releaseResolve!();
    await new Promise((r) => setTimeout(r, 50));
    expect(rec.text).toBe('');
    expect(proxy.upstreamConnections().busy).toBe(0);
  });
});
