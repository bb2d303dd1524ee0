import { describe, expect, it } from 'vitest';
import { replayFile } from '../../../engine/replay.js';
import { FakeRuntime, type FakeFailure } from '../../../effects/fakes/fake-runtime.js';
import { eventsFile } from '../../../store/paths.js';
import { fakeContext, startFakeRun, testInput, testManifest, worldFile, type FakeRunOpts } from '../../support/engine.js';

/**
 * A failure injected into each effect ends in failed, after tearing down exactly what
 * had been created, in reverse order of creation, and the history replays.
 */

// The one-shot route fixer is created and removed inside createAgent; it is not a resource of the run.
const notFixer = (name: string | undefined) => name !== 'bottle-coder-netfix';
const creates = (ops: string[]) => ops.filter((o) => /^ensure(Network|Volume|Container) /.test(o)).map((o) => o.split(' ')[1]).filter(notFixer);
const removals = (ops: string[]) => ops.filter((o) => /^remove(Network|Volume|Container) /.test(o)).map((o) => o.split(' ')[1]).filter(notFixer);

const cases: { step: string; opts: FakeRunOpts; code: string; created: string[]; promptFile?: string }[] = [
  { step: 'resolveWorld', opts: { fail: [{ op: 'info' }] }, code: 'DOCKER_ERROR', created: [] },
  { step: 'probeOrphans', opts: { fail: [{ op: 'listLabelled', times: 1 }] }, code: 'DOCKER_ERROR', created: [] },
  { step: 'stageFiles', opts: {}, promptFile: '/nonexistent/prompt.md', code: 'MANIFEST_INVALID', created: [] },
  { step: 'ensureImages', opts: { imagesFail: true }, code: 'BUILD_FAILED', created: [] },
  {
    step: 'createNetworks',
    opts: { fail: [{ op: 'ensureNetwork', name: 'bottle-coder-egress-net' }] },
    code: 'DOCKER_ERROR',
    created: ['bottle-coder-internal'],
  },
  {
    step: 'startSidecars',
    opts: { fail: [{ op: 'waitReady', name: 'bottle-coder-egress', code: 'SIDECAR_UNHEALTHY' }] },
    code: 'SIDECAR_UNHEALTHY',
    created: ['bottle-coder-internal', 'bottle-coder-egress-net', 'bottle-coder-workspace', 'bottle-coder-egress', 'bottle-coder-netns'],
  },
  {
    step: 'createAgent',
    opts: { fail: [{ op: 'ensureContainer', name: 'bottle-coder' }] },
    code: 'DOCKER_ERROR',
    created: ['bottle-coder-internal', 'bottle-coder-egress-net', 'bottle-coder-workspace', 'bottle-coder-egress', 'bottle-coder-netns'],
  },
  {
    step: 'agentExit',
    opts: { fail: [{ op: 'waitExit', name: 'bottle-coder' }] },
    code: 'DOCKER_ERROR',
    created: ['bottle-coder-internal', 'bottle-coder-egress-net', 'bottle-coder-workspace', 'bottle-coder-egress', 'bottle-coder-netns', 'bottle-coder'],
  },
];

describe('a failure injected into each effect', () => {
  for (const c of cases) {
    it(`${c.step}: ends in failed after tearing down what was created, in reverse`, async () => {
      const ctx = fakeContext();
      const input = testInput(ctx, testManifest(c.promptFile ? { promptFile: c.promptFile } : {}));
      const host = await startFakeRun(ctx, input, c.opts);
      const result = await host.done;
      expect(result.state).toBe('failed');
      expect(result.error?.code).toBe(c.code);
      const world = FakeRuntime.read(worldFile(ctx));
      expect(creates(world.ops).filter((n, i, a) => a.indexOf(n) === i)).toEqual(c.created);
      expect(removals(world.ops)).toEqual([...c.created].reverse());
      expect(world.containers).toEqual({});
      expect(world.networks).toEqual({});
      expect(world.volumes).toEqual({});
      expect(replayFile(eventsFile(ctx.home, input.identity, input.runId)).problem).toBeNull();
    });
  }

  it('teardown: a failing removal ends in failed with its cause', async () => {
    const ctx = fakeContext();
    const input = testInput(ctx, testManifest());
    const fail: FakeFailure[] = [{ op: 'removeContainer', name: 'bottle-coder-egress', code: 'DOCKER_ERROR' }];
    const result = await (await startFakeRun(ctx, input, { fail })).done;
    expect(result.state).toBe('failed');
    expect(result.error?.message).toMatch(/removeContainer bottle-coder-egress/);
    expect(replayFile(eventsFile(ctx.home, input.identity, input.runId)).problem).toBeNull();
  });

  it('an orphan of an earlier run stops the launch with ORPHAN_SIDECAR and is left alone', async () => {
    const ctx = fakeContext();
    const orphan = new FakeRuntime(worldFile(ctx));
    await orphan.ensureNetwork({ name: 'bottle-coder-internal', internal: true, labels: { 'bot-bottle.identity': 'coder', 'bot-bottle.run': 'dead-run' } });
    const input = testInput(ctx, testManifest());
    const result = await (await startFakeRun(ctx, input)).done;
    expect(result.state).toBe('failed');
    expect(result.error?.code).toBe('ORPHAN_SIDECAR');
    expect(result.error?.message).toContain('network bottle-coder-internal');
    expect(result.error?.hint).toContain('bottle cleanup');
    expect(Object.keys(FakeRuntime.read(worldFile(ctx)).networks)).toEqual(['bottle-coder-internal']);
  });
});
