import { createHash } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, runMain } from '../main-process.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makePki, type Pki, replaceFile, request, startUpstream, tempDir, until, writeConfig } from './harness.js';

/** The sidecar's entry point, run as the container runs it (env and files only), on loopback. */
const MAIN = fileURLToPath(new URL('../../../../sidecars/cred-proxy/main.ts', import.meta.url));
const TOKEN = 'sk-ant-main-0123456789abcdef';
const ROTATED = 'sk-ant-main-rotated-9876543210';
const PLACEHOLDER = 'bottle-placeholder-main';
const fp = (t: string) => createHash('sha256').update(t).digest('hex').slice(0, 8);

let pki: Pki;
beforeAll(() => {
  pki = makePki();
});
afterAll(() => rmSync(pki.dir, { recursive: true, force: true }));


const route = (upstream: string, extra: Record<string, unknown> = {}) => ({
  path: '/anthropic',
  upstream,
  inject: { header: 'x-api-key', format: '{token}' },
  roles: ['anthropic-base-url'],
  token: TOKEN,
  ...extra,
});

describe('cred-proxy main', () => {
  it('refuses to start without a readable routes file', async () => {
    const { out, exited } = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_CRED_ROUTES: join(tempDir(), 'missing.json') });
    expect(await exited).toBe(1);
    expect(out.stderr).toContain('cannot read the routes file');
    expect(out.stdout).not.toContain('ready');
  });

  it('refuses to start when a token file or a CA file is missing, naming the route and never a token', async () => {
    const dir = tempDir();
    const { routesFile, tokenFiles } = writeConfig(dir, [route('https://127.0.0.1:1'), { ...route('https://127.0.0.1:2'), path: '/other', roles: [], token: 'other-token-0123456789' }]);
    rmSync(tokenFiles[1]!);
    const noToken = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_CRED_ROUTES: routesFile });
    expect(await noToken.exited).toBe(1);
    expect(noToken.out.stderr).toContain('route /other');
    expect(noToken.out.stderr).toContain('ENOENT');
    expect(noToken.out.stdout).not.toContain('ready');
    expect(noToken.out.stderr).not.toContain(TOKEN);

    const ca = writeConfig(tempDir(), [route('https://127.0.0.1:1', { ca_file: join(dir, 'no-such-ca.pem') })]);
    const noCa = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_CRED_ROUTES: ca.routesFile });
    expect(await noCa.exited).toBe(1);
    expect(noCa.out.stderr).toContain('CA bundle');
    expect(noCa.out.stderr).not.toContain(TOKEN);
  });

  it('refuses an invalid routes file, a bad port or a bad placeholder (exit 2)', async () => {
    const dir = tempDir();
    const bad = join(dir, 'routes.json');
    writeFileSync(bad, JSON.stringify({ routes: [{ path: '/a', upstream: 'ftp://x', inject: { header: 'x', format: '{token}' }, token_file: '/t' }] }));
    const invalid = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_CRED_ROUTES: bad });
    expect(await invalid.exited).toBe(2);
    expect(invalid.out.stderr).toContain('routes[0].upstream');
    const { routesFile } = writeConfig(tempDir(), [route('https://127.0.0.1:1')]);
    expect(await runMain(MAIN, { BOTTLE_SIDECAR_PORT: 'cred', BOTTLE_CRED_ROUTES: routesFile }).exited).toBe(2);
    expect(await runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_CRED_ROUTES: routesFile, BOTTLE_CRED_PLACEHOLDER: 'x' }).exited).toBe(2);
  });

  it('serves: ready, /healthz, the real token upstream, audit lines with the run and fingerprint; 503 while the token file is gone; a rotated token without restart', async () => {
    const model = await startUpstream({ tls: { key: pki.key, cert: pki.cert } });
    const dir = tempDir();
    const { routesFile, tokenFiles } = writeConfig(dir, [route(model.origin, { ca_file: pki.caFile })]);
    const port = await freePort();
    const { out, child } = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(port), BOTTLE_CRED_ROUTES: routesFile, BOTTLE_CRED_PLACEHOLDER: PLACEHOLDER, BOTTLE_RUN: 'r1', BOTTLE_TEST_DIAL_LOOPBACK: '1' });
    await until(() => out.stdout.includes('ready'), 'ready', 20_000);
    expect((await request(port, '/healthz')).status).toBe(200);

    const reply = await request(port, '/anthropic/v1/messages?beta=true', { method: 'POST', body: '{}', headers: { 'x-api-key': PLACEHOLDER } });
    expect(reply.status).toBe(200);
    expect(model.requests[0]!.headers['x-api-key']).toBe(TOKEN);
    await until(() => out.stdout.split('\n').filter((l) => l.startsWith('{')).length === 1, 'the audit line');
    const line = JSON.parse(out.stdout.split('\n').find((l) => l.startsWith('{'))!);
    expect(line).toMatchObject({ type: 'request', route: '/anthropic', method: 'POST', path: '/anthropic/v1/messages', status: 200, bytes_up: 2, token_fp: fp(TOKEN), run: 'r1' });
    expect(typeof line.at).toBe('number');
    expect(typeof line.duration_ms).toBe('number');

    // The token file disappears: health and the route fail closed; nothing reaches the upstream.
    rmSync(tokenFiles[0]!);
    await until(async () => (await request(port, '/healthz')).status === 503, 'health to fail', 5000);
    expect((await request(port, '/anthropic/v1/messages')).status).toBe(503);
    expect(model.requests).toHaveLength(1);

    // A new token is renamed into place: used at once, by the same process.
    replaceFile(tokenFiles[0]!, `${ROTATED}\n`);
    await until(async () => (await request(port, '/healthz')).status === 200, 'health to recover', 5000);
    expect((await request(port, '/anthropic/v1/messages')).status).toBe(200);
    expect(model.requests.at(-1)!.headers['x-api-key']).toBe(ROTATED);
    expect(child.exitCode).toBeNull();
    await until(() => out.stdout.includes(fp(ROTATED)), 'the audit line of the rotated token');
    expect(out.stderr).toContain(`reloaded (fingerprint ${fp(ROTATED)})`);

    for (const text of [out.stdout, out.stderr]) {
      expect(text).not.toContain(TOKEN);
      expect(text).not.toContain(ROTATED);
    }
  });

  it('picks up a route added to the routes file without a restart, audits the reload, and keeps the routes in force on a bad file', async () => {
    const model = await startUpstream();
    const added = await startUpstream();
    const dir = tempDir();
    const { routesFile, tokenFiles } = writeConfig(dir, [route(model.origin)]);
    const port = await freePort();
    const { out, child } = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(port), BOTTLE_CRED_ROUTES: routesFile, BOTTLE_CRED_PLACEHOLDER: PLACEHOLDER, BOTTLE_RUN: 'r2', BOTTLE_TEST_DIAL_LOOPBACK: '1' });
    await until(() => out.stdout.includes('ready'), 'ready', 20_000);
    const routesLines = () =>
      out.stdout
        .split('\n')
        .filter((l) => l.startsWith('{') && l.includes('"type":"routes"'))
        .map((l) => JSON.parse(l));

    // As the engine adds an approved route: its token first, then the whole routes file.
    const tokenFile = join(dir, 'secrets', 'p7');
    writeFileSync(tokenFile, `${ROTATED}\n`, { mode: 0o600 });
    const inject = { header: 'Authorization', format: 'Bearer {token}' };
    replaceFile(
      routesFile,
      JSON.stringify({
        routes: [
          { path: '/anthropic', upstream: model.origin, inject: { header: 'x-api-key', format: '{token}' }, roles: ['anthropic-base-url'], token_file: tokenFiles[0] },
          { path: '/github', upstream: added.origin, inject, roles: [], token_file: tokenFile },
        ],
      }),
    );
    await until(async () => (await request(port, '/github/user', { headers: { authorization: `Bearer ${PLACEHOLDER}` } })).status === 200, 'the added route', 5000);
    expect(added.requests[0]!.headers.authorization).toBe(`Bearer ${ROTATED}`);
    expect(added.requests[0]!.url).toBe('/user');
    expect((await request(port, '/anthropic/v1/messages')).status).toBe(200);
    expect(routesLines()).toEqual([{ type: 'routes', decision: 'reloaded', routes: ['/anthropic', '/github'], at: expect.any(Number), run: 'r2' }]);
    expect(out.stderr).toContain(`added route /github -> ${added.origin} (authorization, token ${fp(ROTATED)})`);
    expect((await request(port, '/healthz')).status).toBe(200);

    // A broken file: rejected on stdout, the routes in force keep serving.
    replaceFile(routesFile, '{"routes": [');
    await until(() => routesLines().length === 2, 'the rejection', 5000);
    expect(routesLines()[1]).toMatchObject({ type: 'routes', decision: 'rejected', error: expect.stringContaining('invalid routes file'), run: 'r2' });
    expect((await request(port, '/github/user')).status).toBe(200);
    expect((await request(port, '/healthz')).status).toBe(200);
    expect(child.exitCode).toBeNull();

    for (const text of [out.stdout, out.stderr]) {
      expect(text).not.toContain(TOKEN);
      expect(text).not.toContain(ROTATED);
    }
  });
});
