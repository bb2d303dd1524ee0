import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { foldLog } from '../../engine/fold.js';
import { replayFile } from '../../engine/replay.js';
import { FakeRuntime } from '../../effects/fakes/fake-runtime.js';
import { readCounts } from '../../effects/fakes/fake-images.js';
import { DOCKERFILE_TEMPLATE } from '../../machines/specs.js';
import { EventLog } from '../../store/event-log.js';
import { postCommand } from '../../store/mailbox.js';
import { commandsDir, eventsFile } from '../../store/paths.js';
import { listRuns, readStateDoc } from '../../store/state-doc.js';
import { bottle, ensureBuilt, project } from '../support/cli.js';

/**
 * An approved Dockerfile is applied by a step that builds an image and replaces the agent's
 * container. The engine is killed right after that step's intent and right after its
 * completion; `bottle resume` finishes the run with the proposal applied exactly once: one
 * build, one replacement container, and the agent's own exit code at the end.
 */

const MANIFEST = `version: 1
bottles:
  box:
    egress: { allow: [allowed.test] }
    supervise: true
agents:
  coder:
    bottle: box
    prompt: do the thing
    command: [fake-agent, --exit, "3", --ms, "4000"]
`;

beforeAll(() => ensureBuilt());

describe('SIGKILL around applying an approved Dockerfile, then resume', () => {
  for (const when of ['intent', 'completed'] as const) {
    it(`killed right after applyProposal ${when}`, async () => {
      const p = project(MANIFEST);
      const env = { BOTTLE_BACKEND: 'fake', BOTTLE_HOME: p.home };
      const running = bottle(['run', 'coder'], { cwd: p.dir, env: { ...env, BOTTLE_FAULT: `${when}:applyProposal` } });
      for (let i = 0; readStateDoc(p.home, 'coder')?.state !== 'running'; i++) {
        if (i > 600) throw new Error('the bottle did not reach running');
        await delay(20);
      }
      const [runId] = listRuns(p.home, 'coder');
      const dir = commandsDir(p.home, 'coder', runId!);
      const dockerfile = `${DOCKERFILE_TEMPLATE}RUN true\n`;
      postCommand(dir, { id: 'propose-pdock00001', type: 'propose', proposal: { id: 'pdock00001', kind: 'dockerfile', reason: 'jq', change: { dockerfile } } });
      postCommand(dir, { id: 'a1', type: 'approve', proposal: 'pdock00001', by: 'tester' });
      const crashed = await running;
      expect(crashed.signal, crashed.stderr).toBe('SIGKILL');

      const resumed = await bottle(['resume', 'coder'], { cwd: p.dir, env });
      expect(resumed.code, resumed.stderr).toBe(3);
      const file = eventsFile(p.home, 'coder', runId!);
      const snap = foldLog(EventLog.read(file), file, { fromSnapshot: false }).snapshot;
      expect(snap.context.proposals.map((x) => [x.id, x.status])).toEqual([['pdock00001', 'approved']]);
      const world = FakeRuntime.read(join(p.home, 'fake-world.json'));
      expect(world.creates['container:bottle-coder']).toBe(2);
      for (const [key, count] of Object.entries(world.creates)) if (key !== 'container:bottle-coder') expect(count, key).toBe(1);
      const builds = Object.entries(readCounts(join(p.home, 'fake-world.json.counts'))).filter(([k]) => k.startsWith('build:'));
      expect(builds.map(([, n]) => n)).toEqual([1]);
      expect(world.containers).toEqual({});
      expect(EventLog.read(file).filter((r) => r.kind === 'effect.completed' && r.key.includes(':applyProposal:'))).toHaveLength(1);
      expect(replayFile(file).problem).toBeNull();
    });
  }
});
