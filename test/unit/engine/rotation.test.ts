import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { validateManifest } from '../../../config/manifest.js';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { approvedTokenPath } from '../../../machines/proposals.js';
import { CRED_ROUTES_PATH, credTokenPath, EGRESS_HASHES_PATH, secretHash } from '../../../machines/specs.js';
import { RunHost } from '../../../engine/host.js';
import { replayFile } from '../../../engine/replay.js';
import { EventLog } from '../../../store/event-log.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir, eventsFile } from '../../../store/paths.js';
import { fakeContext, fakeHostDeps, startFakeRun, testInput, until, worldFile } from '../../support/engine.js';

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
    const input = testInput(ctx, routeManifest(token));
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

/** A bottle with one route whose token is the file `token`. */
function routeManifest(token: string) {
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
  return result.manifest;
}

function rotateTo(file: string, text: string) {
  writeFileSync(`${file}.new`, text);
  renameSync(`${file}.new`, file);
}

describe('a rotated token that breaks the token rule', () => {
  it('is refused with the ref named and recorded; the proxy never gets it (the route is revoked) and the canary learns nothing', async () => {
    const ctx = fakeContext();
    const token = join(ctx.home, 'api-token');
    writeFileSync(token, 'api-token-one-123456\n');
    const input = testInput(ctx, routeManifest(token));
    const states: string[] = [];
    const said: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s), progress: (l) => said.push(l) });
    await until(() => states.includes('running'), 'running');
    const world = () => FakeRuntime.read(worldFile(ctx));
    const proxyToken = () => world().containers['bottle-coder-cred-proxy']?.files?.[credTokenPath(0)];
    const hashes = () => world().containers['bottle-coder-egress']?.files?.[EGRESS_HASHES_PATH] ?? '';
    await until(() => hashes().includes(secretHash('api-token-one-123456')), 'the launch token known to the canary, durably');
    const before = hashes();

    const BAD = 'api token two 654321';
    rotateTo(token, `${BAD}\n`);
    await until(() => said.some((l) => l.includes('refused the rotated secret')), 'the refusal said');
    await until(() => proxyToken() === '', 'the route revoked in the cred-proxy');
    const line = said.find((l) => l.includes('refused the rotated secret'))!;
    expect(line).toContain(`file:${token}`);
    expect(line).toContain('route /api');
    expect(line).toContain('whitespace');
    expect(line).not.toContain(BAD);
    // Never the bad value anywhere in the proxy, and the canary's file is as it was.
    expect(Object.values(world().containers['bottle-coder-cred-proxy']?.files ?? {}).some((c) => c.includes('token two'))).toBe(false);
    expect(hashes()).toBe(before);

    // Recorded in the log: the ref and the problem, never the value.
    const file = eventsFile(ctx.home, input.identity, input.runId);
    const refused = EventLog.read(file).flatMap((r) => (r.kind === 'event' && r.event.type === 'secret.refused' ? [r.event] : []));
    expect(refused).toEqual([{ type: 'secret.refused', ref: `file:${token}`, use: 'the token of route /api', problem: expect.stringContaining('whitespace') }]);
    expect(readFileSync(file, 'utf8')).not.toContain('token two');

    // A valid token again: the route is back, and the canary knows it first.
    rotateTo(token, 'api-token-three-777777\n');
    await until(() => proxyToken() === 'api-token-three-777777', 'the valid token in the proxy');
    expect(hashes()).toContain(secretHash('api-token-three-777777'));

    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 's1', type: 'stop' });
    expect((await host.done).state).toBe('done');
  });
});

describe('what the canary knows survives the owner', () => {
  it('rotate twice, the owner dies, resume, rotate again: the first rotated-away token is still in the hashes file', async () => {
    const ctx = fakeContext();
    const token = join(ctx.home, 'api-token');
    writeFileSync(token, 'api-token-one-123456\n');
    const input = testInput(ctx, routeManifest(token));
    let state = '';
    const first = await startFakeRun(ctx, input, { onState: (s) => (state = s) });
    await until(() => state === 'running', 'running');
    const world = () => FakeRuntime.read(worldFile(ctx));
    const hashes = () => (world().containers['bottle-coder-egress']?.files?.[EGRESS_HASHES_PATH] ?? '').split('\n').filter(Boolean);
    const proxyToken = () => world().containers['bottle-coder-cred-proxy']?.files?.[credTokenPath(0)];

    rotateTo(token, 'api-token-two-654321\n');
    await until(() => proxyToken() === 'api-token-two-654321', 'the first rotation in the proxy');
    expect(hashes()).toContain(secretHash('api-token-two-654321'));
    // Rotated away again: from here on only the log remembers api-token-two.
    rotateTo(token, 'api-token-three-777777\n');
    await until(() => proxyToken() === 'api-token-three-777777', 'the second rotation in the proxy');
    // The process "dies" (SIGKILL-like: nothing more recorded, the lock given up).
    first.detach();

    // A new owner process: fresh steps, fresh board, nothing in memory but the log.
    const resumed = RunHost.resume(await fakeHostDeps(ctx, { onState: (s) => (state = s) }), input.identity, input.runId);
    await until(() => state === 'running', 'running after resume');
    rotateTo(token, 'api-token-four-888888\n');
    await until(() => proxyToken() === 'api-token-four-888888', 'the third rotation in the proxy');
    await until(() => hashes().includes(secretHash('api-token-four-888888')), 'the third rotation known to the canary');
    // api-token-two was rotated away under the dead owner: still a secret, still known.
    expect(hashes()).toContain(secretHash('api-token-two-654321'));
    expect(hashes()).toContain(secretHash('api-token-three-777777'));
    expect(hashes()).toContain(secretHash('api-token-one-123456'));

    const file = eventsFile(ctx.home, input.identity, input.runId);
    const learned = EventLog.read(file).flatMap((r) => (r.kind === 'event' && r.event.type === 'canary.learned' ? r.event.hashes : []));
    expect(learned).toEqual([secretHash('api-token-one-123456'), secretHash('api-token-two-654321'), secretHash('api-token-three-777777'), secretHash('api-token-four-888888')]);
    // Hashes only: no token value in the log.
    const text = readFileSync(file, 'utf8');
    for (const t of ['api-token-one-123456', 'api-token-two-654321', 'api-token-three-777777', 'api-token-four-888888']) expect(text).not.toContain(t);

    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 's1', type: 'stop' });
    expect((await resumed.done).state).toBe('done');
    expect(replayFile(file).problem).toBeNull();
  });

  it('a token rotated while no owner ran reaches the proxy on resume, the canary first', async () => {
    const ctx = fakeContext();
    const token = join(ctx.home, 'api-token');
    writeFileSync(token, 'api-token-one-123456\n');
    const input = testInput(ctx, routeManifest(token));
    let state = '';
    const first = await startFakeRun(ctx, input, { onState: (s) => (state = s) });
    await until(() => state === 'running', 'running');
    const world = () => FakeRuntime.read(worldFile(ctx));
    const hashes = () => world().containers['bottle-coder-egress']?.files?.[EGRESS_HASHES_PATH] ?? '';
    const proxyToken = () => world().containers['bottle-coder-cred-proxy']?.files?.[credTokenPath(0)];
    await until(() => hashes().includes(secretHash('api-token-one-123456')), 'the launch token learned');
    first.detach();

    rotateTo(token, 'api-token-while-down-42\n');
    const resumed = RunHost.resume(await fakeHostDeps(ctx, { onState: (s) => (state = s) }), input.identity, input.runId);
    await until(() => proxyToken() === 'api-token-while-down-42', 'the token rotated meanwhile in the proxy');
    expect(hashes()).toContain(secretHash('api-token-while-down-42'));
    expect(hashes()).toContain(secretHash('api-token-one-123456'));

    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 's1', type: 'stop' });
    expect((await resumed.done).state).toBe('done');
  });
});
