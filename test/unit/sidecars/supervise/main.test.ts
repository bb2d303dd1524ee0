import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { freePort, runMain } from '../main-process.js';
import { CURRENT, propose, request, tempDir, until, writeHostFile } from './harness.js';

/** The sidecar's entry point, run as the container runs it (env and files only), on loopback. */
const MAIN = fileURLToPath(new URL('../../../../sidecars/supervise/main.ts', import.meta.url));

const jsonLines = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe('supervise main', () => {
  it('refuses a bad port (exit 2)', async () => {
    const { out, exited } = runMain(MAIN, { BOTTLE_SIDECAR_PORT: 'supervise', BOTTLE_SUPERVISE_DIR: tempDir() });
    expect(await exited).toBe(2);
    expect(out.stderr).toContain('BOTTLE_SIDECAR_PORT');
    expect(out.stdout).toBe('');
  });

  it('exits 1 when it cannot listen', async () => {
    const port = await freePort();
    const dir = tempDir();
    const first = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(port), BOTTLE_SUPERVISE_DIR: dir });
    await until(() => first.out.stderr.includes('listening'), 'the first to listen', 20_000);
    const second = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(port), BOTTLE_SUPERVISE_DIR: dir });
    expect(await second.exited).toBe(1);
    expect(second.out.stderr).toContain('cannot listen');
  });

  it('serves: 503 until current.json, then proposals as JSON lines on stdout, decisions back to the agent, proposals kept over a restart', async () => {
    const dir = tempDir();
    const port = await freePort();
    const env = { BOTTLE_SIDECAR_PORT: String(port), BOTTLE_SUPERVISE_DIR: dir, BOTTLE_IDENTITY: 'coder-1a2b3c', BOTTLE_RUN: 'r1' };
    const first = runMain(MAIN, env);
    await until(() => first.out.stderr.includes('listening'), 'listening', 20_000);
    expect(first.out.stderr).toContain('bottle coder-1a2b3c, run r1');
    expect((await request(port, '/healthz')).status).toBe(503);

    writeHostFile(dir, 'current.json', CURRENT);
    expect((await request(port, '/healthz')).json).toEqual({ ok: true });
    expect((await request(port, '/current')).json).toEqual(CURRENT);

    const accepted = await propose(port, { kind: 'allowlist', reason: 'crates', hosts: ['index.crates.io'] });
    expect(accepted.status).toBe(201);
    const id = accepted.json.id as string;
    expect((await propose(port, '{"kind":"route","reason":"x","route":{"token":"sk-never-printed-0123"}}')).status).toBe(400);
    await until(() => jsonLines(first.out.stdout).length === 2, 'two lines');
    const [proposal, rejected] = jsonLines(first.out.stdout);
    expect(proposal).toEqual({ source: 'supervise', type: 'proposal', at: expect.any(String), proposal: { id, kind: 'allowlist', reason: 'crates', change: { hosts: ['index.crates.io'] } } });
    expect(rejected).toEqual({ source: 'supervise', type: 'rejected', at: expect.any(String), status: 400, error: expect.any(String) });
    expect(first.out.stdout + first.out.stderr).not.toContain('sk-never-printed');
    expect(existsSync(join(dir, 'proposals', `${id}.json`))).toBe(true);

    writeHostFile(dir, 'decisions.json', { decisions: [{ id, status: 'denied', reason: 'use the mirror' }] });
    expect((await request(port, `/proposals/${id}`)).json).toEqual({ id, kind: 'allowlist', status: 'denied', reason: 'use the mirror' });

    // docker stop: SIGTERM ends it promptly with 0.
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);

    const second = runMain(MAIN, env);
    await until(() => second.out.stderr.includes('listening'), 'listening again', 20_000);
    expect(second.out.stderr).toContain('1 proposal(s) known');
    expect((await request(port, `/proposals/${id}`)).json).toEqual({ id, kind: 'allowlist', status: 'denied', reason: 'use the mirror' });
    expect((await request(port, '/healthz')).status).toBe(200);
    expect(second.out.stdout).toBe('');
    expect(readdirSync(join(dir, 'proposals'))).toEqual([`${id}.json`]);
  });
});
