/**
 * The canary through the proxy (loopback only, names mapped by the injected resolver): the
 * placeholder, or a real token given to the proxy only as `<length>:<sha256>`, in a plain
 * request's target, headers or body is refused with a 403 that never quotes it, audited with
 * `alarm`, and the upstream gets nothing (or, for a body cut off mid-stream, no byte of it).
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { describe, expect, it } from 'vitest';
import {
  connectVia,
  echoThrough,
  fakeResolver,
  rawExchange,
  startEchoServer,
  startHttpUpstream,
  startProxy,
  startRecordingUpstream,
  until,
  viaProxy,
} from './harness.js';

const CANARY = 'bottle-placeholder-run0001';
const TOKEN = 'sk-test-Tk9sX2FfcmVhbF90b2tlbl9mb3JfdGVzdHM_0123'; // made up for the test: printable ASCII, no spaces
const SECRETS = {
  canary: CANARY,
  hashes: [{ length: Buffer.byteLength(TOKEN), sha256: createHash('sha256').update(TOKEN).digest('hex') }],
};
const FP = SECRETS.hashes[0]!.sha256.slice(0, 8);
const nearMiss = (t: string) => `${t.slice(0, 12)}${t[12] === 'x' ? 'y' : 'x'}${t.slice(13)}`;

const CASES = [
  { name: 'the placeholder', secret: CANARY, alarm: 'canary' as const, extra: {} },
  { name: 'a real token known only by its hash', secret: TOKEN, alarm: 'token' as const, extra: { token_fp: FP } },
];

async function setup() {
  const up = await startRecordingUpstream();
  const { resolve, lookups } = fakeResolver({ 'allowed.test': ['127.0.0.1'] });
  const proxy = await startProxy({ allowlist: [`allowed.test:${up.port}`, '*.wild.test'], resolve, secrets: SECRETS });
  return { up, lookups, ...proxy, base: `http://allowed.test:${up.port}` };
}

/** A plain request through the proxy whose body goes out as `parts`, `gapMs` apart (and after `between`, when given). */
function sendInParts(
  proxyPort: number,
  url: string,
  parts: readonly string[],
  gapMs: number,
  between: () => Promise<void> = async () => undefined,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const total = parts.reduce((n, p) => n + Buffer.byteLength(p), 0);
    const req = http.request({
      host: '127.0.0.1',
      port: proxyPort,
      method: 'POST',
      path: url,
      headers: { host: new URL(url).host, 'content-type': 'application/json', 'content-length': String(total) },
      agent: false,
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    // A proxy that forwarded the credential leaves this request waiting on a silent upstream.
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error('no answer from the proxy within 5 s'));
    }, 5000);
    req.on('close', () => clearTimeout(timer));
    req.flushHeaders();
    void (async () => {
      for (const [i, p] of parts.entries()) {
        if (i > 0) {
          await new Promise((r) => setTimeout(r, gapMs));
          await between();
        }
        if (i === parts.length - 1) req.end(p);
        else req.write(p);
      }
    })().catch(reject);
  });
}

function expectBlocked(reply: { status: number; body: string }, secret: string, where: RegExp) {
  expect(reply.status).toBe(403);
  expect(reply.body).toMatch(/a credential \(.*\) was found in/);
  expect(reply.body).toMatch(where);
  expect(reply.body).toContain('was blocked');
  expect(reply.body).not.toContain(secret);
}

describe.each(CASES)('$name', ({ secret, alarm, extra }) => {
  it('in the URL: 403, alarm, and the upstream sees nothing', async () => {
    const { up, port, audits, base } = await setup();
    const reply = await viaProxy(port, `${base}/search?q=1&key=${secret}`);
    expectBlocked(reply, secret, /the request target/);
    expect(up.connections).toBe(0);
    expect(audits).toEqual([
      expect.objectContaining({ method: 'GET', host: 'allowed.test', port: up.port, decision: 'deny', alarm, status: 403, bytes_up: 0, ...extra }),
    ]);
    expect(JSON.stringify(audits)).not.toContain(secret);
  });

  it('in a header: 403, alarm, and the upstream sees nothing', async () => {
    const { up, port, audits, base } = await setup();
    const reply = await viaProxy(port, `${base}/v1/things`, { headers: { authorization: `Bearer ${secret}` } });
    expectBlocked(reply, secret, /the authorization header/);
    const basic = await viaProxy(port, `${base}/repo.git/info/refs`, { headers: { authorization: `Basic ${Buffer.from(`git:${secret}`).toString('base64')}` } });
    expectBlocked(basic, secret, /Basic credentials/);
    expect(up.connections).toBe(0);
    expect(audits.map((a) => [a.decision, a.alarm, a.status])).toEqual([
      ['deny', alarm, 403],
      ['deny', alarm, 403],
    ]);
  });

  it('in the body: 403, alarm, and the upstream sees nothing', async () => {
    const { up, port, audits, base } = await setup();
    const reply = await viaProxy(port, `${base}/upload`, { method: 'POST', body: `{"note":"hi","key":"${secret}"}` });
    expectBlocked(reply, secret, /the request body/);
    await new Promise((r) => setTimeout(r, 50));
    expect(up.text).toBe('');
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({ method: 'POST', host: 'allowed.test', decision: 'deny', alarm, status: 403, bytes_up: 0, ...extra });
    expect(JSON.stringify(audits)).not.toContain(secret);
  });

  it('in the body, split across two chunks sent 100 ms apart: the upstream request is cut off before any byte of it', async () => {
    const { up, port, audits, base } = await setup();
    const first = `{"note":"hello world","key":"${secret.slice(0, 11)}`;
    const second = `${secret.slice(11)}","more":"${'m'.repeat(100)}"}`;
    // The second part goes once the first has reached the upstream (at least 100 ms later).
    const reply = await sendInParts(port, `${base}/upload`, [first, second], 100, () => until(() => up.text.includes('"note"'), 'the first part upstream'));
    expectBlocked(reply, secret, /the request body/);
    await until(() => up.closed === up.connections, 'the upstream connection to be aborted');
    // The request was under way (headers and the checked start of the body went out) and was
    // aborted: the upstream got the body only up to the start of the credential.
    const seen = up.text;
    expect(seen).toMatch(/^POST \/upload HTTP\/1\.1\r\n/);
    const body = seen.slice(seen.indexOf('\r\n\r\n') + 4);
    expect(first.startsWith(body)).toBe(true);
    expect(body.length).toBeLessThanOrEqual(first.length - 11);
    expect(seen).not.toContain(secret.slice(0, 2));
    expect(seen).not.toContain('more');
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({ decision: 'deny', alarm, status: 403, bytes_up: body.length, address: '127.0.0.1', ...extra });
  });

  it('a near miss (one character different) passes, in the URL, a header and the body', async () => {
    const up = await startHttpUpstream();
    const { port, audits } = await startProxy({
      allowlist: [`allowed.test:${up.port}`],
      resolve: fakeResolver({ 'allowed.test': ['127.0.0.1'] }).resolve,
      secrets: SECRETS,
    });
    const miss = nearMiss(secret);
    const body = `{"key":"${miss}"}`;
    const reply = await viaProxy(port, `http://allowed.test:${up.port}/p?key=${miss}`, { method: 'POST', body, headers: { 'x-api-key': miss } });
    expect(reply.status).toBe(200);
    expect(up.requests).toEqual([expect.objectContaining({ url: `/p?key=${miss}`, body })]);
    expect(up.requests[0]!.headers['x-api-key']).toBe(miss);
    const split = await sendInParts(port, `http://allowed.test:${up.port}/q`, [body.slice(0, 15), body.slice(15)], 20);
    expect(split.status).toBe(200);
    expect(up.requests[1]!.body).toBe(body);
    await until(() => audits.length === 2, 'the audit lines');
    expect(audits.map((a) => [a.decision, a.alarm])).toEqual([
      ['allow', undefined],
      ['allow', undefined],
    ]);
  });
});

describe('the canary, elsewhere', () => {
  it('is checked before the allowlist: a denied host still raises the alarm, and a name under a wildcard is not even resolved', async () => {
    const { port, audits, lookups } = await setup();
    const denied = await viaProxy(port, `http://denied.test/?t=${CANARY}`);
    expectBlocked(denied, CANARY, /the request target/);
    const dns = await viaProxy(port, `http://${CANARY}.wild.test/`);
    expectBlocked(dns, CANARY, /the request target/);
    expect(lookups).toEqual([]);
    expect(audits.map((a) => [a.host, a.alarm])).toEqual([
      ['denied.test', 'canary'],
      [null, 'canary'], // the name is the credential's carrier: not written down
    ]);
    expect(JSON.stringify(audits)).not.toContain(CANARY);
  });

  it('a percent-encoded placeholder in the query is still seen', async () => {
    const { up, port, base } = await setup();
    const encoded = [...CANARY].map((c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`).join('');
    expectBlocked(await viaProxy(port, `${base}/?k=${encoded}`), CANARY, /the request target/);
    expect(up.connections).toBe(0);
  });

  it('CONNECT: the request line and headers are checked; the tunnel payload is opaque and not read', async () => {
    const echo = await startEchoServer();
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${echo.port}`], resolve: fakeResolver({ 'allowed.test': ['127.0.0.1'] }).resolve, secrets: SECRETS });
    const auth = Buffer.from(`user:${TOKEN}`).toString('base64');
    const r = await rawExchange(port, `CONNECT allowed.test:${echo.port} HTTP/1.1\r\nHost: allowed.test:${echo.port}\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`);
    expect(r.text).toMatch(/^HTTP\/1\.1 403 [\s\S]*was found in the Proxy-Authorization header \(Basic credentials\)/);
    expect(r.text).not.toContain(TOKEN);
    expect(echo.connections).toBe(0);
    expect(audits).toEqual([expect.objectContaining({ method: 'CONNECT', host: 'allowed.test', decision: 'deny', alarm: 'token', token_fp: FP, status: 403 })]);

    // The placeholder as a name to tunnel to: refused before the name is resolved, and the name is not written down.
    const { resolve, lookups } = fakeResolver({});
    const wild = await startProxy({ allowlist: ['*.wild.test'], resolve, secrets: SECRETS });
    const byName = await connectVia(wild.port, `${CANARY}.wild.test:443`);
    expect(byName.status).toBe(403);
    expect(byName.body).not.toContain(CANARY);
    expect(lookups).toEqual([]);
    expect(wild.audits).toEqual([expect.objectContaining({ method: 'CONNECT', host: null, port: null, alarm: 'canary', status: 403 })]);

    // Inside an established tunnel the bytes are TLS as far as the proxy knows: passed as they are.
    const t = await connectVia(port, `allowed.test:${echo.port}`);
    expect(t.status).toBe(200);
    expect(await echoThrough(t.socket, `opaque ${CANARY}`)).toBe(`opaque ${CANARY}`);
  });

  it('a plain Upgrade request carrying the placeholder is refused as a credential, with the alarm', async () => {
    const { port, audits } = await setup();
    const r = await rawExchange(port, `GET http://allowed.test/ws HTTP/1.1\r\nHost: allowed.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-T: ${CANARY}\r\n\r\n`);
    expect(r.text).toMatch(/^HTTP\/1\.1 403 /);
    expect(r.text).not.toContain(CANARY);
    expect(audits).toEqual([expect.objectContaining({ decision: 'deny', alarm: 'canary', status: 403 })]);
  });

  it('a long body with nothing to find streams through whole, checked in slices', async () => {
    const line = `${'a'.repeat(30)}-${'b'.repeat(30)} ${nearMiss(TOKEN)}\n`;
    const big = line.repeat(Math.ceil((512 * 1024) / line.length));
    const up = await startHttpUpstream((_req, res, body) => {
      res.writeHead(200);
      res.end(String(body.length));
    });
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve: fakeResolver({ 'allowed.test': ['127.0.0.1'] }).resolve, secrets: SECRETS });
    const reply = await viaProxy(port, `http://allowed.test:${up.port}/upload`, { method: 'PUT', body: big });
    expect(reply).toMatchObject({ status: 200, body: String(big.length) });
    expect(up.requests[0]!.body).toBe(big);
    await until(() => audits.length === 1, 'the audit line');
    expect(audits[0]).toMatchObject({ decision: 'allow', bytes_up: big.length });
  });
});
