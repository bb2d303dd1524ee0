import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { validateManifest } from '../../../config/manifest.js';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { approvedTokenPath } from '../../../machines/proposals.js';
import { CRED_ROUTES_PATH, EGRESS_HASHES_PATH, secretHash } from '../../../machines/specs.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir } from '../../../store/paths.js';
import { fakeContext, startFakeRun, testInput, until, worldFile } from '../../support/engine.js';

/** Secret files rotated on the host reach the running sidecar that uses them (fake backend). */

describe('rotation of secret files while the agent runs', () => {
  it('a git remote token and ssh key reach the running git gate; a removed file is revoked there', async () => {
    const ctx = fakeContext();
    const token = join(ctx.home, 'git-token');
    const key = join(ctx.home, 'id_key');
    const hosts = join(ctx.home, 'known_hosts');
    writeFileSync(token, 'token-one-123456\n');
    writeFileSync(key, 'KEY ONE');
    writeFileSync(hosts, 'git.test ssh-ed25519 AAAA\n');
    const result = validateManifest({
      version: 1,
      bottles: {
        box: {
          egress: { allow: ['allowed.test'] },
          git: [
            { name: 'docs', upstream: 'https://git.test/docs.git', token: { file: token }, push: [] },
            { name: 'origin', upstream: 'ssh://git@git.test/app.git', key: { file: key }, known_hosts: { file: hosts }, push: ['agent/*'] },
          ],
        },
      },
      agents: { coder: { bottle: 'box', prompt: 'p', command: ['fake-agent', '--ms', 'forever'] } },
    });
    if (!result.ok) throw new Error(JSON.stringify(result.issues));
    const input = testInput(ctx, result.manifest);
    const states: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s) });
    await until(() => states.includes('running'), 'running');
    const gateFiles = () => FakeRuntime.read(worldFile(ctx)).containers['bottle-coder-git-gate']?.files ?? {};
    const fileEnding = (suffix: string) => Object.entries(gateFiles()).find(([p]) => p.endsWith(suffix))?.[1];
    expect(fileEnding('/0/token')).toBe('token-one-123456');
    expect(fileEnding('/1/key')).toBe('KEY ONE\n');

    writeFileSync(`${token}.new`, 'token-two-654321\n');
    renameSync(`${token}.new`, token);
    writeFileSync(key, 'KEY TWO');
    await until(() => fileEnding('/0/token') === 'token-two-654321', 'the rotated token in the gate');
    await until(() => fileEnding('/1/key') === 'KEY TWO\n', 'the rotated key in the gate, ending in a newline');
    rmSync(token);
    await until(() => fileEnding('/0/token') === '', 'the removed token revoked in the gate');

    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 's1', type: 'stop' });
    expect((await host.done).state).toBe('done');
  });
});

describe('the egress canary learns tokens while the bottle runs', () => {
  it('a rotated route token and a route approved with its hash reach the egress hashes file', async () => {
    const ctx = fakeContext();
    const token = join(ctx.home, 'api-token');
    writeFileSync(token, 'api-token-one-123456\n');
    const result = validateManifest({
      version: 1,
      bottles: {
        box: {
          egress: { allow: ['allowed.test'] },
          cred_proxy: { routes: [{ path: '/api', upstream: 'https://api.test', token: { file: token }, inject: { header: 'x-api-key', format: '{token}' } }] },
        },
      },
      agents: { coder: { bottle: 'box', prompt: 'p', command: ['fake-agent', '--ms', 'forever'] } },
    });
    if (!result.ok) throw new Error(JSON.stringify(result.issues));
    const input = testInput(ctx, result.manifest);
    const states: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s) });
    await until(() => states.includes('running'), 'running');
    const world = () => FakeRuntime.read(worldFile(ctx));
    const hashes = () => (world().containers['bottle-coder-egress']?.files?.[EGRESS_HASHES_PATH] ?? '').split('\n').filter(Boolean);

    writeFileSync(`${token}.new`, 'api-token-two-654321\n');
    renameSync(`${token}.new`, token);
    await until(() => hashes().includes(secretHash('api-token-two-654321')), 'the rotated token hashed for the canary');

    // A route approved at run time: its secret is in the proxy, its hash in the approval.
    const dir = commandsDir(ctx.home, input.identity, input.runId);
    const route = { path: '/later', upstream: 'https://later.test', inject: { header: 'x-api-key', format: '{token}' }, roles: [] };
    postCommand(dir, { id: 'propose-proute00001', type: 'propose', proposal: { id: 'proute00001', kind: 'route', reason: 'r', change: { route } } });
    const rt = new FakeRuntime(worldFile(ctx));
    await until(() => states.includes('capabilityReview'), 'review');
    await rt.putFiles('bottle-coder-cred-proxy', [{ containerPath: approvedTokenPath('proute00001'), content: 'later-token-abcdef', mode: 0o600 }]);
    postCommand(dir, { id: 'a1', type: 'approve', proposal: 'proute00001', by: 'tester', secretRef: 'env:LATER', secretHash: secretHash('later-token-abcdef') });
    await until(() => hashes().includes(secretHash('later-token-abcdef')), 'the approved route hashed for the canary');
    expect(hashes()).toContain(secretHash('api-token-two-654321'));
    const routes = JSON.parse(world().containers['bottle-coder-cred-proxy']!.files![CRED_ROUTES_PATH]!);
    expect(routes.routes.map((r: { path: string }) => r.path)).toEqual(['/api', '/later']);

    postCommand(dir, { id: 's1', type: 'stop' });
    expect((await host.done).state).toBe('done');
  });
});
