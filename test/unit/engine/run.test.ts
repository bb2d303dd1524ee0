import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { replayFile } from '../../../engine/replay.js';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { eventsFile } from '../../../store/paths.js';
import { fakeContext, startFakeRun, testInput, testManifest } from '../../support/engine.js';

describe('bottle machine on the fake backend', () => {
  it('passes every state to done and leaves nothing behind', async () => {
    const ctx = fakeContext();
    const states: string[] = [];
    const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--exit', '3', '--ms', '30'] }));
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s) });
    const result = await host.done;
    expect(result.state).toBe('done');
    expect(result.exitCode).toBe(3);
    expect(states).toEqual(['resolving', 'probingOrphans', 'preparingSidecars', 'running', 'teardown', 'done']);
    const world = FakeRuntime.read(join(ctx.home, 'fake-world.json'));
    expect(world.containers).toEqual({});
    expect(world.networks).toEqual({});
    expect(world.volumes).toEqual({});
    expect(Object.values(world.creates).every((n) => n === 1)).toBe(true);
    const report = replayFile(eventsFile(ctx.home, input.identity, input.runId));
    expect(report.problem).toBeNull();
    expect(report.finalState).toBe('done');
  });
});
