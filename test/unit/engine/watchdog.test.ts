import { describe, expect, it } from 'vitest';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { replayFile } from '../../../engine/replay.js';
import { eventsFile } from '../../../store/paths.js';
import { EventLog } from '../../../store/event-log.js';
import { fakeContext, startFakeRun, testInput, testManifest, until, worldFile } from '../../support/engine.js';

/**
 * Fail closed: a sidecar (or the holder of the agent's network namespace) that stops while the
 * agent runs stops the agent and tears the bottle down with SIDECAR_DIED in the log.
 */
describe('a sidecar that dies while the agent runs', () => {
  for (const victim of ['bottle-coder-egress', 'bottle-coder-supervise', 'bottle-coder-netns']) {
    it(`${victim}: the agent is stopped, the bottle torn down, the reason recorded`, async () => {
      const ctx = fakeContext();
      const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true }));
      const states: string[] = [];
      const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s) });
      await until(() => states.includes('running'), 'running');
      await new FakeRuntime(worldFile(ctx)).stopContainer(victim);
      const result = await host.done;
      expect(result.state).toBe('failed');
      expect(result.error?.code).toBe('SIDECAR_DIED');
      expect(result.error?.message).toContain(victim);
      const ops = FakeRuntime.read(worldFile(ctx)).ops;
      // The agent was stopped before anything was taken down, and then everything went.
      const killed = ops.indexOf(`stopContainer ${victim}`);
      const agentStop = ops.indexOf('stopContainer bottle-coder', killed);
      expect(agentStop).toBeGreaterThan(killed);
      expect(agentStop).toBeLessThan(ops.findIndex((o, i) => i > killed && o.startsWith('removeContainer')));
      expect(FakeRuntime.read(worldFile(ctx)).containers).toEqual({});
      const file = eventsFile(ctx.home, input.identity, input.runId);
      const failed = EventLog.read(file).find((r) => r.kind === 'effect.failed' && r.key.includes(':agentExit:'));
      expect(failed?.kind === 'effect.failed' && failed.error.code).toBe('SIDECAR_DIED');
      expect(replayFile(file).problem).toBeNull();
    });
  }
});
