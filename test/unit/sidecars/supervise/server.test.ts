import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { lineText } from '../../../../sidecars/supervise/server.js';
import { CURRENT, propose, rawExchange, replaceHostFile, request, startSupervise, tempDir, until, writeHostFile } from './harness.js';

const ID = /^p[a-z0-9]{10}$/;
const ROUTE = { path: '/github', upstream: 'https://api.github.com', inject: { header: 'Authorization', format: 'Bearer {token}' } };
const DOCKERFILE = 'FROM debian:bookworm\nRUN apt-get update && apt-get install -y jq\n';

const proposalFiles = (dir: string) => (existsSync(join(dir, 'proposals')) ? readdirSync(join(dir, 'proposals')) : []);

describe('POST /proposals: accepted', () => {
  it('accepts each kind with 201 and a pending id, emits exactly one proposal line each, keeps a file each', async () => {
    const s = await startSupervise({ current: CURRENT });
    const bodies = [
      { kind: 'allowlist', reason: 'the build fetches crates', hosts: ['Index.Crates.io', 'static.crates.io'] },
      { kind: 'dockerfile', reason: 'jq is needed', dockerfile: DOCKERFILE },
      { kind: 'route', reason: 'open pull requests', route: ROUTE },
    ];
    const changes = [{ hosts: ['index.crates.io', 'static.crates.io'] }, { dockerfile: DOCKERFILE }, { route: { ...ROUTE, roles: [] } }];
    const ids: string[] = [];
    for (const [i, body] of bodies.entries()) {
      const reply = await propose(s.port, body);
      expect(reply.status).toBe(201);
      expect(reply.headers['content-type']).toContain('application/json');
      expect(Object.keys(reply.json)).toEqual(['id', 'status']);
      expect(reply.json.status).toBe('pending');
      expect(reply.json.id).toMatch(ID);
      ids.push(reply.json.id);

      expect(s.lines).toHaveLength(i + 1);
      const line = s.lines[i]!;
      expect(line).toEqual({ source: 'supervise', type: 'proposal', at: expect.any(String), proposal: { id: reply.json.id, kind: body.kind, reason: body.reason, change: changes[i] } });
      expect(Object.keys(line)).toEqual(['source', 'type', 'at', 'proposal']);
      if (line.type === 'proposal') expect(Object.keys(line.proposal)).toEqual(['id', 'kind', 'reason', 'change']);
      expect(new Date(line.at).toISOString()).toBe(line.at);
      // One line of JSON, whatever newlines the Dockerfile or reason hold.
      expect(lineText(line).split('\n')).toHaveLength(2);
      expect(JSON.parse(lineText(line))).toEqual(line);

      const file = JSON.parse(readFileSync(join(s.dir, 'proposals', `${reply.json.id}.json`), 'utf8'));
      expect(file).toEqual({ id: reply.json.id, kind: body.kind, reason: body.reason, change: changes[i], at: line.at });
    }
    expect(new Set(ids).size).toBe(3);
    expect(proposalFiles(s.dir).sort()).toEqual(ids.map((id) => `${id}.json`).sort());

    for (const [i, id] of ids.entries()) {
      const one = await request(s.port, `/proposals/${id}`);
      expect(one.status).toBe(200);
      expect(one.json).toEqual({ id, kind: bodies[i]!.kind, status: 'pending' });
    }
    const all = await request(s.port, '/proposals');
    expect(all.status).toBe(200);
    expect(all.json).toEqual(ids.map((id, i) => ({ id, kind: bodies[i]!.kind, status: 'pending' })));
  });

  it('accepts a body sent in chunks without a length, and a JSON body whatever its content type', async () => {
    const s = await startSupervise({ current: CURRENT });
    const text = JSON.stringify({ kind: 'allowlist', reason: 'r', hosts: ['a.example.com'] });
    const raw = await rawExchange(
      s.port,
      `POST /proposals HTTP/1.1\r\nHost: supervise\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${[text.slice(0, 10), text.slice(10)].map((c) => `${c.length.toString(16)}\r\n${c}\r\n`).join('')}0\r\n\r\n`,
    );
    expect(raw).toMatch(/^HTTP\/1\.1 201 /);
    expect((await request(s.port, '/proposals', { method: 'POST', body: text, headers: { 'content-type': 'text/plain' } })).status).toBe(201);
    expect(s.lines.filter((l) => l.type === 'proposal')).toHaveLength(2);
  });

  it('stops at the limit with 429, queuing nothing more', async () => {
    const s = await startSupervise({ current: CURRENT, limit: 2 });
    const body = { kind: 'allowlist', reason: 'r', hosts: ['a.example.com'] };
    expect((await propose(s.port, body)).status).toBe(201);
    expect((await propose(s.port, body)).status).toBe(201);
    const third = await propose(s.port, body);
    expect(third.status).toBe(429);
    expect(third.json.error).toContain('at most 2');
    // Still validated first: a bad one is a 400, not a 429.
    expect((await propose(s.port, { kind: 'nope' })).status).toBe(400);
    expect(s.lines.filter((l) => l.type === 'proposal')).toHaveLength(2);
    expect(s.lines.filter((l) => l.type === 'rejected').map((l) => (l.type === 'rejected' ? l.status : 0))).toEqual([429, 400]);
    expect(proposalFiles(s.dir)).toHaveLength(2);
    expect(s.server.store.limit).toBe(2);
  });

  it('keeps proposals in memory when the proposals folder cannot be created', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'proposals'), 'not a folder');
    const s = await startSupervise({ dir, current: CURRENT });
    expect(s.server.store.persistent).toBe(false);
    expect(s.logs.join('\n')).toContain('memory only');
    const reply = await propose(s.port, { kind: 'allowlist', reason: 'r', hosts: ['a.example.com'] });
    expect(reply.status).toBe(201);
    expect((await request(s.port, `/proposals/${reply.json.id}`)).json.status).toBe('pending');
    expect(s.lines.filter((l) => l.type === 'proposal')).toHaveLength(1);
  });
});

describe('POST /proposals: refused', () => {
  const MARK = 'agent-text-never-logged';
  const cases: [string, string | Buffer, string][] = [
    ['malformed JSON', '{"kind":"allowlist","reason":', '(root)'],
    ['an empty body', '', '(root)'],
    ['not an object', JSON.stringify([{ kind: 'allowlist' }]), '(root)'],
    ['an unknown kind', JSON.stringify({ kind: 'secret', reason: MARK }), 'kind'],
    ['no kind', JSON.stringify({ reason: MARK, hosts: ['a.example.com'] }), 'kind'],
    ['a missing reason', JSON.stringify({ kind: 'allowlist', hosts: ['a.example.com'] }), 'reason'],
    ['missing hosts', JSON.stringify({ kind: 'allowlist', reason: MARK }), 'hosts'],
    ['a missing Dockerfile', JSON.stringify({ kind: 'dockerfile', reason: MARK }), 'dockerfile'],
    ['a Dockerfile without FROM', JSON.stringify({ kind: 'dockerfile', reason: MARK, dockerfile: 'RUN echo hi' }), 'dockerfile'],
    ['a Dockerfile over 256 KiB', JSON.stringify({ kind: 'dockerfile', reason: MARK, dockerfile: `FROM x\n#${'y'.repeat(256 * 1024)}` }), 'dockerfile'],
    ['an extra key', JSON.stringify({ kind: 'allowlist', reason: MARK, hosts: ['a.example.com'], urgent: true }), 'urgent'],
    ['an extra key in a route', JSON.stringify({ kind: 'route', reason: MARK, route: { ...ROUTE, ca_file: '/etc/ssl' } }), 'route.ca_file'],
    ['a route with a token', JSON.stringify({ kind: 'route', reason: MARK, route: { ...ROUTE, token: 'sk-live-0123456789' } }), 'route.token'],
    ['a route without {token}', JSON.stringify({ kind: 'route', reason: MARK, route: { ...ROUTE, inject: { header: 'x-api-key', format: 'static' } } }), 'route.inject.format'],
    ['a bad host entry', JSON.stringify({ kind: 'allowlist', reason: MARK, hosts: [`http://${MARK}.example.com/path`] }), 'hosts[0]'],
    ['a wildcard TLD', JSON.stringify({ kind: 'allowlist', reason: MARK, hosts: ['ok.example.com', '*.com'] }), 'hosts[1]'],
    ['an oversized body', JSON.stringify({ kind: 'dockerfile', reason: MARK, dockerfile: `FROM x\n${'z'.repeat(400 * 1024)}` }), '(root)'],
  ];

  for (const [what, body, path] of cases) {
    it(`refuses ${what} with 400 naming ${path}, queuing nothing and logging none of the body`, async () => {
      const s = await startSupervise({ current: CURRENT });
      const reply = await propose(s.port, body);
      expect(reply.status).toBe(400);
      expect(typeof reply.json.error).toBe('string');
      expect(reply.json.issues.length).toBeGreaterThan(0);
      for (const i of reply.json.issues) expect(Object.keys(i)).toEqual(['path', 'message']);
      expect(reply.json.issues.map((i: { path: string }) => i.path)).toContain(path);

      expect(s.lines).toEqual([{ source: 'supervise', type: 'rejected', at: expect.any(String), status: 400, error: expect.any(String) }]);
      expect(JSON.stringify(s.lines)).not.toContain(MARK);
      expect(s.logs.join('\n')).not.toContain(MARK);
      expect(proposalFiles(s.dir)).toEqual([]);
      expect(s.server.store.size).toBe(0);
      expect((await request(s.port, '/proposals')).json).toEqual([]);
    });
  }

  it('says in the route-with-a-token refusal that the human names the secret on approval', async () => {
    const s = await startSupervise({ current: CURRENT });
    const reply = await propose(s.port, { kind: 'route', reason: 'r', route: { ...ROUTE, token: 'sk-live-0123456789' } });
    expect(reply.json.issues).toEqual([{ path: 'route.token', message: expect.stringContaining('the human names the secret when approving') }]);
  });

  it('refuses an oversized body while it is still arriving, and one announced with Expect: 100-continue before it is sent', async () => {
    const s = await startSupervise({ current: CURRENT, maxBodyBytes: 1024 });
    // Sent in pieces with no length: refused once past the limit, the client still gets the answer.
    const big = await request(s.port, '/proposals', { method: 'POST', body: Buffer.alloc(200 * 1024, 'a') });
    expect(big.status).toBe(400);
    expect(big.json.issues[0].message).toContain('larger than 1024 bytes');

    // Far over the limit (more than the sidecar drains): answered at once, connection closed.
    const huge = await rawExchange(s.port, `POST /proposals HTTP/1.1\r\nHost: supervise\r\nContent-Length: ${50 * 1024 * 1024}\r\n\r\n{"kind":`);
    expect(huge).toMatch(/^HTTP\/1\.1 400 /);

    const waiting = await rawExchange(s.port, 'POST /proposals HTTP/1.1\r\nHost: supervise\r\nContent-Length: 2048\r\nExpect: 100-continue\r\n\r\n');
    expect(waiting).toMatch(/^HTTP\/1\.1 400 /);
    expect(waiting).not.toContain('100 Continue');
    const small = await rawExchange(s.port, 'POST /proposals HTTP/1.1\r\nHost: supervise\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n{}');
    expect(small).toContain('100 Continue');
    expect(small).toContain('HTTP/1.1 400 ');
    expect(s.lines.map((l) => l.type)).toEqual(['rejected', 'rejected', 'rejected', 'rejected']);
  });
});

describe('decisions.json', () => {
  it('reports each decision: denied with its reason, approved, failed with its error; unknown ids and statuses are left out', async () => {
    const s = await startSupervise({ current: CURRENT });
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await propose(s.port, { kind: 'allowlist', reason: `r${i}`, hosts: [`h${i}.example.com`] })).json.id);
    const [denied, approved, failed, pending] = ids as [string, string, string, string];

    writeHostFile(s.dir, 'decisions.json', {
      decisions: [
        { id: denied, status: 'denied', reason: 'use the mirror instead', at: '2026-01-01T00:00:00.000Z' },
        { id: approved, status: 'approved', at: '2026-01-01T00:00:01.000Z' },
        { id: failed, status: 'approved' },
        { id: failed, status: 'failed', error: 'the image did not build' },
        { id: pending, status: 'applying' },
        { id: 'p0000000000', status: 'approved' },
      ],
    });
    expect((await request(s.port, `/proposals/${denied}`)).json).toEqual({ id: denied, kind: 'allowlist', status: 'denied', reason: 'use the mirror instead' });
    expect((await request(s.port, `/proposals/${approved}`)).json).toEqual({ id: approved, kind: 'allowlist', status: 'approved' });
    expect((await request(s.port, `/proposals/${failed}`)).json).toEqual({ id: failed, kind: 'allowlist', status: 'failed', error: 'the image did not build' });
    expect((await request(s.port, `/proposals/${pending}`)).json).toEqual({ id: pending, kind: 'allowlist', status: 'pending' });
    expect((await request(s.port, '/proposals/p0000000000')).status).toBe(404);
    expect((await request(s.port, '/proposals')).json.map((p: { status: string }) => p.status)).toEqual(['denied', 'approved', 'failed', 'pending']);
    expect(s.logs.join('\n')).toContain('1 entry(ies) not understood');
  });

  it('keeps the last good decisions while the file is half written, invalid or missing; takes a replaced one at once', async () => {
    const s = await startSupervise({ current: CURRENT });
    const id = (await propose(s.port, { kind: 'allowlist', reason: 'r', hosts: ['a.example.com'] })).json.id;
    expect((await request(s.port, `/proposals/${id}`)).json.status).toBe('pending');

    replaceHostFile(s.dir, 'decisions.json', { decisions: [{ id, status: 'denied', reason: 'first' }] });
    expect((await request(s.port, `/proposals/${id}`)).json).toMatchObject({ status: 'denied', reason: 'first' });

    const next = JSON.stringify({ decisions: [{ id, status: 'denied', reason: 'second' }] });
    writeHostFile(s.dir, 'decisions.json', next.slice(0, 20));
    expect((await request(s.port, `/proposals/${id}`)).json).toMatchObject({ status: 'denied', reason: 'first' });
    writeHostFile(s.dir, 'decisions.json', { decisions: 'all of them' });
    expect((await request(s.port, `/proposals/${id}`)).json).toMatchObject({ reason: 'first' });
    replaceHostFile(s.dir, 'decisions.json', '');
    expect((await request(s.port, `/proposals/${id}`)).json).toMatchObject({ reason: 'first' });
    expect(s.logs.join('\n')).toContain('decisions.json is not valid JSON');

    writeHostFile(s.dir, 'decisions.json', next);
    expect((await request(s.port, `/proposals/${id}`)).json).toMatchObject({ status: 'denied', reason: 'second' });
    // Same size, same second: still seen (the change time differs).
    writeHostFile(s.dir, 'decisions.json', next.replace('second', 'thirds'));
    expect((await request(s.port, `/proposals/${id}`)).json).toMatchObject({ reason: 'thirds' });
  });
});

describe('GET /healthz and /current', () => {
  it('is unhealthy until current.json has been read once, then serves it; keeps the last good one', async () => {
    const s = await startSupervise();
    const before = await request(s.port, '/healthz');
    expect(before.status).toBe(503);
    expect(before.json.ok).toBe(false);
    expect((await request(s.port, '/current')).status).toBe(503);

    writeHostFile(s.dir, 'current.json', '{"dockerfile": null, "allow');
    expect((await request(s.port, '/healthz')).status).toBe(503);
    writeHostFile(s.dir, 'current.json', { dockerfile: null, allowlist: 'x' });
    expect((await request(s.port, '/healthz')).status).toBe(503);

    writeHostFile(s.dir, 'current.json', CURRENT);
    const after = await request(s.port, '/healthz');
    expect(after.status).toBe(200);
    expect(after.json).toEqual({ ok: true });
    const current = await request(s.port, '/current');
    expect(current.status).toBe(200);
    expect(current.json).toEqual(CURRENT);

    writeHostFile(s.dir, 'current.json', '{');
    expect((await request(s.port, '/healthz')).status).toBe(200);
    expect((await request(s.port, '/current')).json).toEqual(CURRENT);
    replaceHostFile(s.dir, 'current.json', { ...CURRENT, dockerfile: null, allowlist: [...CURRENT.allowlist, 'later.example.com'] });
    expect((await request(s.port, '/current')).json.allowlist).toContain('later.example.com');
    replaceHostFile(s.dir, 'current.json', { ...CURRENT, dockerfile: null });
    expect((await request(s.port, '/current')).json.dockerfile).toBeNull();
  });
});

describe('restart', () => {
  it('reloads the proposals a previous run kept, answers for them and counts them against the limit', async () => {
    const dir = tempDir();
    const first = await startSupervise({ dir, current: CURRENT, limit: 3 });
    const a = (await propose(first.port, { kind: 'route', reason: 'gh', route: ROUTE })).json.id;
    const b = (await propose(first.port, { kind: 'dockerfile', reason: 'jq', dockerfile: DOCKERFILE })).json.id;
    await first.close();

    // Files that do not check out are skipped.
    writeFileSync(join(dir, 'proposals', 'p0000000000.json'), '{"id":"p0000000000"');
    writeFileSync(join(dir, 'proposals', 'pzzzzzzzzzz.json'), JSON.stringify({ id: 'pzzzzzzzzzz', kind: 'allowlist', reason: 'r', change: { hosts: ['http://x'] }, at: new Date().toISOString() }));
    writeFileSync(join(dir, 'proposals', 'notes.txt'), 'ignored');
    writeHostFile(dir, 'decisions.json', { decisions: [{ id: a, status: 'denied', reason: 'no' }] });

    const second = await startSupervise({ dir, limit: 3 });
    expect(second.server.store.size).toBe(2);
    expect(second.logs.join('\n')).toContain('reloaded 2 proposal(s)');
    expect(second.logs.join('\n')).toContain('skipping');
    expect((await request(second.port, `/proposals/${a}`)).json).toEqual({ id: a, kind: 'route', status: 'denied', reason: 'no' });
    expect((await request(second.port, `/proposals/${b}`)).json).toEqual({ id: b, kind: 'dockerfile', status: 'pending' });
    expect((await request(second.port, '/proposals')).json.map((p: { id: string }) => p.id)).toEqual([a, b]);
    expect(second.lines).toEqual([]);

    expect((await propose(second.port, { kind: 'allowlist', reason: 'r', hosts: ['a.example.com'] })).status).toBe(201);
    expect((await propose(second.port, { kind: 'allowlist', reason: 'r', hosts: ['b.example.com'] })).status).toBe(429);
  });

  it('starts with an empty or missing folder', async () => {
    const dir = join(tempDir(), 'not-yet');
    const s = await startSupervise({ dir });
    expect(s.server.store.size).toBe(0);
    expect(s.server.store.persistent).toBe(true);
    mkdirSync(dir, { recursive: true });
    writeHostFile(dir, 'current.json', CURRENT);
    expect((await request(s.port, '/healthz')).status).toBe(200);
  });
});

describe('everything else', () => {
  it('answers unknown paths with 404 and wrong methods with 405, in JSON', async () => {
    const s = await startSupervise({ current: CURRENT });
    for (const path of ['/', '/proposal', '/proposals/', '/proposals/a/b', '/current/x', '/%']) {
      const r = await request(s.port, path);
      expect([r.status, path]).toEqual([404, path]);
      expect(typeof r.json.error).toBe('string');
    }
    expect((await request(s.port, '/proposals/not-an-id')).status).toBe(404);
    for (const [method, path, allow] of [
      ['POST', '/current', 'GET'],
      ['PUT', '/proposals', 'GET, POST'],
      ['DELETE', '/proposals/p0123456789', 'GET'],
      ['POST', '/healthz', 'GET'],
    ] as const) {
      const r = await request(s.port, path, { method });
      expect([r.status, method, path]).toEqual([405, method, path]);
      expect(r.headers.allow).toBe(allow);
      expect(typeof r.json.error).toBe('string');
    }
    const head = await request(s.port, '/healthz', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    expect((await request(s.port, '/proposals?status=pending')).status).toBe(200);
    // Every refusal is in the audit (a write or approval tried another way is seen by the
    // human), naming the route it matched, never the path the agent wrote; a lookup of an
    // unknown id is only a read, and not audited.
    const refused = (status: number, method: string, endpoint: string) => ({ source: 'supervise', type: 'refused', at: expect.any(String), status, method, endpoint });
    expect(s.lines).toEqual([
      ...Array.from({ length: 6 }, () => refused(404, 'GET', 'unknown')),
      refused(405, 'POST', '/current'),
      refused(405, 'PUT', '/proposals'),
      refused(405, 'DELETE', '/proposals/ID'),
      refused(405, 'POST', '/healthz'),
    ]);
  });

  it('cuts off a client that is too slow with its headers or its body', async () => {
    const s = await startSupervise({ current: CURRENT, headersTimeoutMs: 200, requestTimeoutMs: 400 });
    const started = Date.now();
    const headers = await rawExchange(s.port, 'GET /healthz HTTP/1.1\r\nHost: sup');
    expect(headers).toMatch(/^HTTP\/1\.1 408 /);
    const body = await rawExchange(s.port, 'POST /proposals HTTP/1.1\r\nHost: supervise\r\nContent-Length: 100\r\n\r\n{"kind":');
    expect(body).toMatch(/^HTTP\/1\.1 408 /);
    expect(Date.now() - started).toBeLessThan(4000);
    expect(s.lines.filter((l) => l.type === 'proposal')).toEqual([]);
  });

  it('answers a malformed request with 400 and closes', async () => {
    const s = await startSupervise({ current: CURRENT });
    expect(await rawExchange(s.port, 'NOT HTTP AT ALL\r\n\r\n')).toMatch(/^HTTP\/1\.1 400 /);
    // Still serving.
    const socket = net.connect(s.port, '127.0.0.1');
    await new Promise((r) => socket.on('connect', r));
    socket.destroy();
    await until(async () => (await request(s.port, '/healthz')).status === 200, 'health');
  });
});
