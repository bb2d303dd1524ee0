import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { replayFile } from '../../engine/replay.js';
import { FakeRuntime } from '../../effects/fakes/fake-runtime.js';
import { STEP_IDS } from '../../machines/bottle.machine.js';
import { EventLog } from '../../store/event-log.js';
import { eventsFile } from '../../store/paths.js';
import { listRuns } from '../../store/state-doc.js';
import { bottle, ensureBuilt, project } from '../support/cli.js';

/**
 * For every effect boundary, the engine (a child process) is killed with SIGKILL right
 * after the intent and right after the completion; `bottle resume` must reach the same
 * final state as an uninterrupted run, and the fake runtime shows nothing created twice.
 */

const MANIFEST = `version: 1
bottles:
  box:
    egress: { allow: [allowed.test] }
    env: { LEVEL: { value: debug } }
agents:
  coder:
    bottle: box
    prompt: do the thing
    command: [fake-agent, --exit, "3", --ms, "300"]
`;

const STEPS = STEP_IDS.filter((s) => s !== 'applyProposal');

function finalOf(home: string) {
  const [runId] = listRuns(home, 'coder');
  const file = eventsFile(home, 'coder', runId!);
  const states = EventLog.read(file).filter((r) => r.kind === 'state');
  return { file, last: states[states.length - 1] };
}

beforeAll(() => ensureBuilt());

describe('SIGKILL at every effect boundary, then resume', () => {
  it('baseline: an uninterrupted run ends done with the agent code', async () => {
    const p = project(MANIFEST);
    const env = { BOTTLE_BACKEND: 'fake', BOTTLE_HOME: p.home };
    const r = await bottle(['run', 'coder'], { cwd: p.dir, env });
    expect(r.code, r.stderr).toBe(3);
    expect(finalOf(p.home).last).toMatchObject({ value: 'done' });
  });

  for (const step of STEPS) {
    for (const when of ['intent', 'completed'] as const) {
      it(`killed right after ${step} ${when}`, async () => {
        const p = project(MANIFEST);
        const env = { BOTTLE_BACKEND: 'fake', BOTTLE_HOME: p.home };
        const crashed = await bottle(['run', 'coder'], { cwd: p.dir, env: { ...env, BOTTLE_FAULT: `${when}:${step}` } });
        expect(crashed.signal, crashed.stderr).toBe('SIGKILL');

        const status = await bottle(['status', 'coder', '--json'], { cwd: p.dir, env });
        expect(JSON.parse(status.stdout).owner_alive).toBe(false);

        const resumed = await bottle(['resume', 'coder'], { cwd: p.dir, env });
        expect(resumed.code, resumed.stderr).toBe(3);
        const { file, last } = finalOf(p.home);
        expect(last).toMatchObject({ value: 'done', status: 'done' });

        const world = FakeRuntime.read(join(p.home, 'fake-world.json'));
        for (const [key, count] of Object.entries(world.creates)) expect(count, key).toBe(1);
        // networks x2, egress, netns holder, route fixer, volume, agent
        expect(Object.keys(world.creates)).toHaveLength(7);
        expect(world.containers).toEqual({});
        expect(world.networks).toEqual({});
        expect(world.volumes).toEqual({});

        const report = replayFile(file);
        expect(report.problem).toBeNull();
        const replay = await bottle(['replay', 'coder'], { cwd: p.dir, env });
        expect(replay.code, replay.stderr).toBe(0);
      });
    }
  }
});
