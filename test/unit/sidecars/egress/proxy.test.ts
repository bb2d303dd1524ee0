import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openAuditLog } from '../../../../sidecars/egress/audit.js';
import { parseBlockList } from '../../../../config/address-policy.js';
import { readAllowlistFile, watchAllowlistFile } from '../../../../sidecars/egress/proxy.js';
import {
  connectVia,
  echoThrough,
  fakeResolver,
  rawExchange,
  startEchoServer,
  startHttpUpstream,
  startProxy,
  until,
  viaProxy,
} from './harness.js';

let tmp: string | undefined;
afterEach(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  tmp = undefined;
});
const tempDir = () => {
  tmp ??= mkdtempSync(join(tmpdir(), 'bottle-egress-'));
  return tmp;
};

const LOOPBACK = ['127.0.0.1'];

describe('plain HTTP', () => {
  it('forwards a request to an allowed host, which sees it with end-to-end headers only', async () => {
    const up = await startHttpUpstream();
    const { resolve, lookups } = fakeResolver({ 'allowed.test': LOOPBACK });
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve });

    const reply = await viaProxy(port, `http://allowed.test:${up.port}/path?q=1`, {
      method: 'POST',
      body: 'payload',
      headers: {
        'x-custom': 'kept',
        'proxy-authorization': 'Basic c2VjcmV0',
        'proxy-connection': 'keep-alive',
        connection: 'x-hop',
        'x-hop': 'dropped',
        te: 'trailers',
      },
    });
    expect(reply.status).toBe(200);
    expect(reply.body).toBe('hello from upstream: POST /path?q=1 payload');
    expect(reply.headers['x-upstream']).toBe('yes');
    expect(reply.headers['keep-alive']).not.toBe('timeout=99'); // the upstream's hop-by-hop header stays on its hop

    expect(up.requests).toHaveLength(1);
    const seen = up.requests[0]!;
    expect(seen).toMatchObject({ method: 'POST', url: '/path?q=1', body: 'payload' });
    expect(seen.headers.host).toBe(`allowed.test:${up.port}`);
    expect(seen.headers['x-custom']).toBe('kept');
    for (const h of ['proxy-authorization', 'proxy-connection', 'x-hop', 'te']) expect(seen.headers[h], h).toBeUndefined();
    expect(lookups).toEqual(['allowed.test']);

    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({
      method: 'POST',
      host: 'allowed.test',
      port: up.port,
      decision: 'allow',
      rule: `allowed.test:${up.port}`,
      bytes_up: 7,
      bytes_down: reply.body.length,
      status: 200,
      address: '127.0.0.1',
    });
  });

  it('streams a large body both ways', async () => {
    const big = 'x'.repeat(3 * 1024 * 1024);
    const up = await startHttpUpstream((_req, res, body) => {
      res.writeHead(200);
      res.end(body.toUpperCase());
    });
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const reply = await viaProxy(port, `http://allowed.test:${up.port}/upload`, { method: 'PUT', body: big });
    expect(reply.body).toBe(big.toUpperCase());
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({ bytes_up: big.length, bytes_down: big.length });
  });

  it('answers Expect: 100-continue itself for an allowed host, and refuses a denied one without asking for the body', async () => {
    const up = await startHttpUpstream();
    const { port } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const socket = net.connect(port, '127.0.0.1');
    const text = await new Promise<string>((resolve) => {
      let got = '';
      socket.on('data', (c: Buffer) => {
        got += c.toString();
        if (got.startsWith('HTTP/1.1 100 Continue\r\n\r\n') && !got.includes('200')) socket.write('hello');
        if (got.includes('hello from upstream')) resolve(got);
      });
      socket.write(`POST http://allowed.test:${up.port}/e HTTP/1.1\r\nHost: allowed.test:${up.port}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n`);
    });
    socket.destroy();
    expect(text).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /);
    expect(up.requests[0]).toMatchObject({ body: 'hello' });
    expect(up.requests[0]!.headers.expect).toBeUndefined();
    const denied = await rawExchange(port, 'POST http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
    expect(denied.text).toMatch(/^HTTP\/1\.1 403 /);
  });

  it('refuses a denied host with a 403 naming it and the manifest key; its server sees nothing and the name is not even resolved', async () => {
    const denied = await startHttpUpstream();
    const { resolve, lookups } = fakeResolver({ 'denied.test': LOOPBACK });
    const { port, audits } = await startProxy({ allowlist: ['allowed.test'], resolve });
    const reply = await viaProxy(port, `http://denied.test:${denied.port}/`);
    expect(reply.status).toBe(403);
    expect(reply.body).toContain(`denied.test:${denied.port}`);
    expect(reply.body).toContain('bottles.web.egress.allow');
    expect(reply.body).toContain(`"denied.test:${denied.port}"`);
    expect(denied.connections).toBe(0);
    expect(lookups).toEqual([]);
    expect(audits).toEqual([expect.objectContaining({ decision: 'deny', host: 'denied.test', port: denied.port, rule: null, status: 403 })]);
  });

  it('says <bottle> when it does not know the bottle name', async () => {
    const { port } = await startProxy({ bottle: undefined, allowlist: [] });
    const reply = await viaProxy(port, 'http://denied.test/');
    expect(reply.body).toContain('add "denied.test" to bottles.<bottle>.egress.allow');
  });

  it('a wildcard allows a subdomain and not the bare domain', async () => {
    const up = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'sub.wild.test': LOOPBACK, 'wild.test': LOOPBACK });
    const { port } = await startProxy({ allowlist: [`*.wild.test:${up.port}`], resolve });
    expect((await viaProxy(port, `http://sub.wild.test:${up.port}/`)).status).toBe(200);
    const bare = await viaProxy(port, `http://wild.test:${up.port}/`);
    expect(bare.status).toBe(403);
    expect(bare.body).toContain('wild.test is not in the allowlist');
    expect(up.requests.map((r) => r.headers.host)).toEqual([`sub.wild.test:${up.port}`]);
  });

  it('refuses a port that is not listed', async () => {
    const up = await startHttpUpstream();
    const other = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK });
    const { port } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve });
    const reply = await viaProxy(port, `http://allowed.test:${other.port}/`);
    expect(reply.status).toBe(403);
    expect(reply.body).toContain(`port ${other.port} is not allowed for allowed.test (allowed: ${up.port})`);
    expect(other.connections).toBe(0);
  });

  it('refuses a Host header that disagrees with the target, in both directions', async () => {
    const allowed = await startHttpUpstream();
    const denied = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK, 'denied.test': LOOPBACK });
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${allowed.port}`], resolve });

    const a = await viaProxy(port, `http://denied.test:${denied.port}/`, { headers: { host: `allowed.test:${allowed.port}` } });
    expect(a.status).toBe(400);
    expect(a.body).toContain('does not match the target');
    const b = await viaProxy(port, `http://allowed.test:${allowed.port}/`, { headers: { host: `denied.test:${denied.port}` } });
    expect(b.status).toBe(400);
    const c = await viaProxy(port, `http://allowed.test:${allowed.port}/`, { headers: { host: 'allowed.test' } });
    expect(c.status).toBe(400); // same name, other port (80)
    expect(allowed.connections + denied.connections).toBe(0);
    expect(audits.map((r) => r.decision)).toEqual(['deny', 'deny', 'deny']);

    const dup = await rawExchange(port, `GET http://allowed.test:${allowed.port}/ HTTP/1.1\r\nHost: allowed.test:${allowed.port}\r\nHost: denied.test\r\n\r\n`);
    expect(dup.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(allowed.connections).toBe(0);
  });

  it('accepts a Host header that names the target in another spelling (default port, case, trailing dot)', async () => {
    const up = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK });
    const { port } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve });
    const reply = await viaProxy(port, `http://Allowed.Test.:${up.port}/`, { headers: { host: `ALLOWED.test:${up.port}` } });
    expect(reply.status).toBe(200);
  });

  it('refuses origin-form, https:// and userinfo requests, and answers /healthz only when asked to', async () => {
    const up = await startHttpUpstream();
    const { port } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const origin = await rawExchange(port, `GET /path HTTP/1.1\r\nHost: allowed.test:${up.port}\r\n\r\n`);
    expect(origin.text).toMatch(/^HTTP\/1\.1 400 [\s\S]*forward proxy/);
    const https = await rawExchange(port, `GET https://allowed.test:${up.port}/ HTTP/1.1\r\nHost: allowed.test:${up.port}\r\n\r\n`);
    expect(https.text).toMatch(/^HTTP\/1\.1 400 [\s\S]*use CONNECT/);
    const userinfo = await rawExchange(port, `GET http://me@allowed.test:${up.port}/ HTTP/1.1\r\nHost: allowed.test:${up.port}\r\n\r\n`);
    expect(userinfo.text).toMatch(/^HTTP\/1\.1 400 /);
    const health = await rawExchange(port, 'GET /healthz HTTP/1.1\r\nHost: egress\r\nConnection: close\r\n\r\n');
    expect(health.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(up.connections).toBe(0);

    const healthy = await startProxy({ health: () => ({ ok: true, message: 'ok' }) });
    expect((await viaProxyOrigin(healthy.port)).status).toBe(200);
    const sick = await startProxy({ health: () => ({ ok: false, message: 'cannot read the allowlist' }) });
    const s = await viaProxyOrigin(sick.port);
    expect(s.status).toBe(503);
    expect(s.body).toContain('cannot read the allowlist');
  });

  it('refuses an allowed name that resolves to a loopback, link-local or metadata address (real address policy)', async () => {
    const up = await startHttpUpstream();
    const { resolve } = fakeResolver({
      'loop.test': ['127.0.0.1'],
      'mapped.test': ['::ffff:127.0.0.1'],
      'meta.test': ['169.254.169.254'],
      'mixed.test': ['172.30.0.9', '127.0.0.1'],
      'gateway.test': ['172.30.0.1'],
      'lan.test': ['10.20.0.5'],
    });
    const names = ['loop.test', 'mapped.test', 'meta.test', 'mixed.test', 'gateway.test', 'lan.test'];
    const { port, audits } = await startProxy({
      allowlist: names.map((n) => `${n}:${up.port}`),
      resolve,
      isForbidden: undefined, // the production policy
      deny: parseBlockList('172.30.0.1').blocks,
      // The gateway sits inside an opted-in block: still refused (the host's addresses come first).
      privateNetworks: parseBlockList('172.30.0.0/16').blocks,
      bottle: 'web',
    });
    for (const name of names) {
      const reply = await viaProxy(port, `http://${name}:${up.port}/`);
      expect(reply.status, name).toBe(403);
      expect(reply.body, name).toContain(`${name} resolves to`);
      expect(reply.body, name).toContain(name === 'lan.test' ? 'allow it with bottles.web.private_networks' : 'never connects');
    }
    const literal = await startProxy({ allowlist: [`127.0.0.1:${up.port}`], isForbidden: undefined });
    const lit = await viaProxy(literal.port, `http://127.0.0.1:${up.port}/`);
    expect(lit.status).toBe(403);
    expect(lit.body).toContain('127.0.0.1 is a loopback address, which the egress proxy never connects to');
    expect(up.connections).toBe(0);
    expect(audits.map((a) => [a.host, a.decision, a.rule])).toEqual(names.map((n) => [n, 'deny', `${n}:${up.port}`]));
    expect(audits.find((a) => a.host === 'meta.test')!.reason).toContain('169.254.169.254, a link-local address (cloud metadata)');
    expect(audits.find((a) => a.host === 'gateway.test')!.reason).toContain('an address of the Docker host');
    expect(audits.map((a) => a.address_class)).toEqual(['loopback', 'loopback', 'link-local (cloud metadata)', 'loopback', 'docker host', 'private (RFC 1918)']);
    expect(audits.find((a) => a.host === 'lan.test')!.reason).toBe('lan.test resolves to 10.20.0.5, a private address (RFC 1918); allow it with bottles.web.private_networks');
  });

  it('resolves once and dials the vetted address, trying the next one when a connection fails', async () => {
    const up = await startHttpUpstream();
    let calls = 0;
    // 127.0.0.2 answers nothing on this port (the upstream listens on 127.0.0.1 only).
    const resolve = async () => {
      calls += 1;
      return calls === 1 ? ['127.0.0.2', '127.0.0.1'] : ['169.254.169.254'];
    };
    const { port, audits } = await startProxy({
      allowlist: [`allowed.test:${up.port}`],
      resolve,
      isForbidden: (ip) => (ip === '127.0.0.1' || ip === '127.0.0.2' ? undefined : 'forbidden'),
    });
    const reply = await viaProxy(port, `http://allowed.test:${up.port}/`);
    expect(reply.status).toBe(200);
    expect(calls).toBe(1);
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]!.address).toBe('127.0.0.1');
  });

  it('answers 502 when the upstream cannot be reached or the name does not resolve', async () => {
    const closed = net.createServer();
    const closedPort = await new Promise<number>((r) => closed.listen(0, '127.0.0.1', () => r((closed.address() as net.AddressInfo).port)));
    await new Promise((r) => closed.close(r));
    const { port, audits } = await startProxy({
      allowlist: [`allowed.test:${closedPort}`, 'nxdomain.test'],
      resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve,
    });
    const refused = await viaProxy(port, `http://allowed.test:${closedPort}/`);
    expect(refused.status).toBe(502);
    expect(refused.body).toContain('ECONNREFUSED');
    const nx = await viaProxy(port, 'http://nxdomain.test/');
    expect(nx.status).toBe(502);
    expect(nx.body).toContain('could not resolve nxdomain.test');
    await until(() => audits.length === 2, 'two audit lines');
    expect(audits.map((a) => [a.decision, a.status, a.error !== undefined])).toEqual([
      ['allow', 502, true],
      ['allow', 502, true],
    ]);
  });
});

function viaProxyOrigin(port: number) {
  return rawExchange(port, 'GET /healthz HTTP/1.1\r\nHost: egress\r\nConnection: close\r\n\r\n').then(({ text }) => ({
    status: Number(text.slice(9, 12)),
    body: text.slice(text.indexOf('\r\n\r\n') + 4),
  }));
}

describe('CONNECT', () => {
  it('tunnels bytes to an allowed host', async () => {
    const echo = await startEchoServer();
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${echo.port}`], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const t = await connectVia(port, `allowed.test:${echo.port}`);
    expect(t.status).toBe(200);
    expect(await echoThrough(t.socket, 'ping through the tunnel')).toBe('ping through the tunnel');
    expect(await echoThrough(t.socket, 'x'.repeat(100_000))).toBe('x'.repeat(100_000));
    expect(audits).toEqual([]); // written when the tunnel ends
    t.socket.end();
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({
      method: 'CONNECT',
      host: 'allowed.test',
      port: echo.port,
      decision: 'allow',
      rule: `allowed.test:${echo.port}`,
      bytes_up: 100_023,
      bytes_down: 100_023,
      status: 200,
      address: '127.0.0.1',
    });
    expect(audits[0]!.duration_ms).toBeGreaterThanOrEqual(0);
  });

  it('refuses a denied host with a 403 naming it; its server sees no connection', async () => {
    const echo = await startEchoServer();
    const { resolve, lookups } = fakeResolver({ 'denied.test': LOOPBACK });
    const { port, audits } = await startProxy({ allowlist: [], resolve });
    const t = await connectVia(port, `denied.test:${echo.port}`);
    expect(t.status).toBe(403);
    expect(t.body).toContain(`denied.test:${echo.port}`);
    expect(t.body).toContain('bottles.web.egress.allow');
    expect(echo.connections).toBe(0);
    expect(lookups).toEqual([]);
    expect(audits).toEqual([expect.objectContaining({ method: 'CONNECT', decision: 'deny', host: 'denied.test', port: echo.port })]);
  });

  it('a wildcard allows a subdomain and not the bare domain; an unlisted port is refused', async () => {
    const echo = await startEchoServer();
    const other = await startEchoServer();
    const { resolve } = fakeResolver({ 'a.wild.test': LOOPBACK, 'wild.test': LOOPBACK });
    const { port } = await startProxy({ allowlist: [`*.wild.test:${echo.port}`], resolve });
    const sub = await connectVia(port, `a.wild.test:${echo.port}`);
    expect(sub.status).toBe(200);
    expect(await echoThrough(sub.socket, 'hi')).toBe('hi');
    expect((await connectVia(port, `wild.test:${echo.port}`)).status).toBe(403);
    expect((await connectVia(port, `a.wild.test:${other.port}`)).status).toBe(403);
    expect(other.connections).toBe(0);
  });

  it.each([
    'allowed.test',
    'allowed.test:',
    'allowed.test:0',
    'allowed.test:99999',
    'allowed.test:443x',
    '127.1:443',
    '0x7f000001:443',
    '[::1',
    '[fe80::1%25lo]:443',
    'a_b..test:443',
    'user@allowed.test:443',
    'http://allowed.test:443',
  ])('refuses the bad target %j with 400', async (target) => {
    const { port, audits } = await startProxy({ allowlist: ['allowed.test'], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const t = await rawExchange(port, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    expect(t.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(audits).toHaveLength(1);
    expect(audits[0]!.decision).toBe('deny');
  });

  it('refuses an allowed name that resolves to a forbidden address, and an IP literal that is forbidden', async () => {
    const echo = await startEchoServer();
    const { resolve } = fakeResolver({ 'allowed.test': ['169.254.169.254'] });
    const { port } = await startProxy({ allowlist: [`allowed.test:${echo.port}`, `127.0.0.1:${echo.port}`], resolve, isForbidden: undefined });
    const byName = await connectVia(port, `allowed.test:${echo.port}`);
    expect(byName.status).toBe(403);
    expect(byName.body).toContain('allowed.test resolves to 169.254.169.254');
    const literal = await connectVia(port, `127.0.0.1:${echo.port}`);
    expect(literal.status).toBe(403);
    const v6 = await connectVia(port, `[::ffff:127.0.0.1]:${echo.port}`);
    expect(v6.status).toBe(403); // not listed in this spelling, and loopback anyway
    expect(echo.connections).toBe(0);
  });

  it('passes bytes the client sent along with the CONNECT request', async () => {
    const echo = await startEchoServer();
    const { port } = await startProxy({ allowlist: [`allowed.test:${echo.port}`], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const socket = net.connect(port, '127.0.0.1');
    const got = await new Promise<string>((resolve) => {
      let text = '';
      socket.on('data', (c: Buffer) => {
        text += c.toString();
        if (text.endsWith('early bytes')) resolve(text);
      });
      socket.write(`CONNECT allowed.test:${echo.port} HTTP/1.1\r\nHost: allowed.test:${echo.port}\r\n\r\nearly bytes`);
    });
    socket.destroy();
    expect(got).toBe('HTTP/1.1 200 Connection Established\r\n\r\nearly bytes');
  });

  it('closes a tunnel that stays idle', async () => {
    const echo = await startEchoServer();
    const { port, audits } = await startProxy({
      allowlist: [`allowed.test:${echo.port}`],
      resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve,
      idleTimeoutMs: 150,
    });
    const t = await connectVia(port, `allowed.test:${echo.port}`);
    expect(await echoThrough(t.socket, 'still here')).toBe('still here');
    const started = Date.now();
    await new Promise((r) => t.socket.once('close', r));
    expect(Date.now() - started).toBeGreaterThanOrEqual(100);
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({ decision: 'allow', error: 'idle timeout', bytes_up: 10, bytes_down: 10 });
  });
});

describe('malformed and slow requests', () => {
  it('refuses both Content-Length and Transfer-Encoding with 400; the upstream sees nothing', async () => {
    const up = await startHttpUpstream();
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const smuggle = `POST http://allowed.test:${up.port}/ HTTP/1.1\r\nHost: allowed.test:${up.port}\r\nContent-Length: 41\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://allowed.test/x HTTP/1.1\r\n\r\n`;
    const r = await rawExchange(port, smuggle);
    expect(r.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(r.text.match(/HTTP\/1\.1/g)).toHaveLength(1);
    const te = await rawExchange(port, `POST http://allowed.test:${up.port}/ HTTP/1.1\r\nHost: allowed.test:${up.port}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`);
    expect(te.text).toMatch(/^HTTP\/1\.1 400 /);
    const dupCl = await rawExchange(port, `POST http://allowed.test:${up.port}/ HTTP/1.1\r\nHost: allowed.test:${up.port}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab`);
    expect(dupCl.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(up.connections).toBe(0);
    expect(audits.every((a) => a.decision === 'deny' && a.status === 400)).toBe(true);
    expect(audits).toHaveLength(3);
  });

  it('refuses headers over 16 KiB with 431', async () => {
    const up = await startHttpUpstream();
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const r = await rawExchange(port, `GET http://allowed.test:${up.port}/ HTTP/1.1\r\nHost: allowed.test:${up.port}\r\nX-Big: ${'a'.repeat(17 * 1024)}\r\n\r\n`);
    expect(r.text).toMatch(/^HTTP\/1\.1 431 /);
    expect(up.connections).toBe(0);
    expect(audits).toEqual([expect.objectContaining({ decision: 'deny', status: 431, reason: 'request headers too large' })]);
    // Just under the limit is fine.
    const ok = await viaProxy(port, `http://allowed.test:${up.port}/`, { headers: { 'x-big': 'a'.repeat(15 * 1024) } });
    expect(ok.status).toBe(200);
  });

  it('times out a client that sends its headers too slowly', async () => {
    const { port, audits } = await startProxy({ allowlist: ['allowed.test'], headersTimeoutMs: 200, requestTimeoutMs: 400 });
    const r = await rawExchange(port, 'GET http://allowed.test/ HTTP/1.1\r\nHost: allo', { waitMs: 5000 });
    expect(r.text).toMatch(/^HTTP\/1\.1 408 /);
    expect(r.closedAfterMs).toBeGreaterThanOrEqual(150);
    expect(r.closedAfterMs).toBeLessThan(2000);
    expect(audits).toEqual([expect.objectContaining({ decision: 'deny', status: 408 })]);
  });

  it('times out a client that sends its body too slowly', async () => {
    const up = await startHttpUpstream();
    const { port } = await startProxy({
      allowlist: [`allowed.test:${up.port}`],
      resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve,
      headersTimeoutMs: 200,
      requestTimeoutMs: 400,
    });
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    const started = Date.now();
    socket.write(`POST http://allowed.test:${up.port}/ HTTP/1.1\r\nHost: allowed.test:${up.port}\r\nContent-Length: 1000\r\n\r\nabc`);
    await new Promise((r) => socket.once('close', r));
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(300);
    expect(took).toBeLessThan(3000);
  });

  it('refuses an HTTP/1.1 request without a Host header and plain-HTTP Upgrade requests', async () => {
    const up = await startHttpUpstream();
    const { port } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: fakeResolver({ 'allowed.test': LOOPBACK }).resolve });
    const noHost = await rawExchange(port, `GET http://allowed.test:${up.port}/ HTTP/1.1\r\n\r\n`);
    expect(noHost.text).toMatch(/^HTTP\/1\.1 400 /);
    const upgrade = await rawExchange(port, `GET http://allowed.test:${up.port}/ws HTTP/1.1\r\nHost: allowed.test:${up.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
    expect(upgrade.text).toMatch(/^HTTP\/1\.1 400 [\s\S]*CONNECT/);
    expect(up.connections).toBe(0);
    // HTTP/1.0 may leave Host out: the URI names the target.
    const old = await rawExchange(port, `GET http://allowed.test:${up.port}/old HTTP/1.0\r\n\r\n`);
    expect(old.text).toMatch(/^HTTP\/1\.1 200 [\s\S]*hello from upstream: GET \/old/);
    expect(up.requests[0]!.headers.host).toBe(`allowed.test:${up.port}`);
  });
});

describe('live reload', () => {
  it('setAllowlist lets a denied host through for new requests while an open tunnel keeps transferring', async () => {
    const echo = await startEchoServer();
    const later = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'first.test': LOOPBACK, 'later.test': LOOPBACK });
    const { proxy, port } = await startProxy({ allowlist: [`first.test:${echo.port}`], resolve });

    const tunnel = await connectVia(port, `first.test:${echo.port}`);
    expect(await echoThrough(tunnel.socket, 'before')).toBe('before');
    expect((await viaProxy(port, `http://later.test:${later.port}/`)).status).toBe(403);

    // The new list drops first.test: the open tunnel is not touched, new tunnels are refused.
    const policy = proxy.setAllowlist([`later.test:${later.port}`]);
    expect(policy.rules.map((r) => r.text)).toEqual([`later.test:${later.port}`]);
    expect(proxy.policy).toBe(policy);
    expect((await viaProxy(port, `http://later.test:${later.port}/`)).status).toBe(200);
    expect(await echoThrough(tunnel.socket, 'after')).toBe('after');
    expect((await connectVia(port, `first.test:${echo.port}`)).status).toBe(403);
    expect(echo.connections).toBe(1);
  });

  it('a rewritten allowlist file (renamed into place) reaches the proxy; a tunnel under way continues', async () => {
    const dir = tempDir();
    const file = join(dir, 'allowlist');
    const echo = await startEchoServer();
    const later = await startHttpUpstream();
    writeFileSync(file, `# initial\nfirst.test:${echo.port}\n`);
    const { resolve } = fakeResolver({ 'first.test': LOOPBACK, 'later.test': LOOPBACK });
    const { proxy, port } = await startProxy({ allowlist: readAllowlistFile(file), resolve });
    const reloads: string[][] = [];
    const watcher = watchAllowlistFile(
      file,
      (entries) => {
        reloads.push(entries);
        proxy.setAllowlist(entries);
      },
      { initialText: readFileSync(file, 'utf8') },
    );
    try {
      const tunnel = await connectVia(port, `first.test:${echo.port}`);
      // A steady download through the tunnel while the allowlist changes.
      let echoed = 0;
      tunnel.socket.on('data', (c: Buffer) => {
        echoed += c.length;
      });
      const pump = setInterval(() => tunnel.socket.write('chunk-'), 5);
      try {
        expect((await viaProxy(port, `http://later.test:${later.port}/`)).status).toBe(403);
        writeFileSync(join(dir, 'allowlist.tmp'), `first.test:${echo.port}\nlater.test:${later.port}\n`);
        renameSync(join(dir, 'allowlist.tmp'), file);
        await until(() => reloads.length === 1, 'the reload', 3000);
        expect(reloads[0]).toEqual([`first.test:${echo.port}`, `later.test:${later.port}`]);
        expect((await viaProxy(port, `http://later.test:${later.port}/`)).status).toBe(200);
        const before = echoed;
        await until(() => echoed > before + 60, 'more bytes through the old tunnel');
      } finally {
        clearInterval(pump);
      }
      expect(tunnel.socket.destroyed).toBe(false);
    } finally {
      watcher.close();
    }
  });

  it('the watcher reports an unreadable file once, keeps quiet about unchanged content, and recovers', async () => {
    const dir = tempDir();
    const file = join(dir, 'allowlist');
    writeFileSync(file, 'a.test\n');
    const events: string[] = [];
    const watcher = watchAllowlistFile(file, (entries) => events.push(`change ${entries.join(',')}`), {
      pollMs: 30,
      onError: () => events.push('error'),
      onRecover: () => events.push('recover'),
    });
    try {
      await until(() => events.length === 1, 'the first read');
      rmSync(file);
      await until(() => events.includes('error'), 'the error');
      await new Promise((r) => setTimeout(r, 100));
      writeFileSync(file, 'a.test\n');
      await until(() => events.includes('recover'), 'the recovery');
      await new Promise((r) => setTimeout(r, 100));
      writeFileSync(file, 'a.test\n# comment\nb.test\n');
      await until(() => events.length === 4, 'the change');
      expect(events).toEqual(['change a.test', 'error', 'recover', 'change a.test,b.test']);
    } finally {
      watcher.close();
    }
  });
});

describe('audit', () => {
  it('writes one JSON line per decision with the fields, denials at once and allowed ones when they end', async () => {
    const dir = tempDir();
    const file = join(dir, 'audit', 'egress.jsonl');
    const log = openAuditLog(file, { run: 'run-1' });
    const echo = await startEchoServer();
    const up = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'allowed.test': LOOPBACK });
    const { port } = await startProxy({
      allowlist: [`allowed.test:${echo.port}`, `allowed.test:${up.port}`],
      resolve,
      audit: (r) => log.write(r),
    });
    const lines = () =>
      readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>);

    const tunnel = await connectVia(port, `allowed.test:${echo.port}`);
    await echoThrough(tunnel.socket, 'abc');
    await viaProxy(port, 'http://denied.test/');
    expect(lines().map((l) => l.host)).toEqual(['denied.test']); // the tunnel is still open
    await viaProxy(port, `http://allowed.test:${up.port}/x`);
    await rawExchange(port, `CONNECT nope HTTP/1.1\r\nHost: nope\r\n\r\n`);
    tunnel.socket.end();
    await until(() => lines().length === 4, 'four lines');
    log.close();

    const all = lines();
    for (const l of all) {
      expect(Object.keys(l).slice(0, 11)).toEqual(['at', 'client', 'method', 'host', 'port', 'decision', 'rule', 'reason', 'bytes_up', 'bytes_down', 'duration_ms']);
      expect(typeof l.at).toBe('number');
      expect(l.client).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(l.run).toBe('run-1');
    }
    const byHost = (h: string | null) => all.filter((l) => l.host === h);
    expect(byHost('denied.test')).toEqual([expect.objectContaining({ method: 'GET', port: 80, decision: 'deny', rule: null, bytes_up: 0, bytes_down: 0, status: 403 })]);
    expect(byHost(null)).toEqual([expect.objectContaining({ method: 'CONNECT', decision: 'deny', status: 400 })]);
    const allowed = byHost('allowed.test');
    expect(allowed).toHaveLength(2);
    expect(allowed.find((l) => l.method === 'CONNECT')).toMatchObject({ decision: 'allow', port: echo.port, bytes_up: 3, bytes_down: 3, status: 200 });
    expect(allowed.find((l) => l.method === 'GET')).toMatchObject({ decision: 'allow', port: up.port, bytes_up: 0, status: 200 });
    expect(all.at(-1)!.method).toBe('CONNECT'); // the tunnel's line came last, when it ended
  });
});
