import { readFileSync, writeFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { MACHINE_VERSION } from '../../../machines/bottle.machine.js';
import { eventsFile } from '../../../store/paths.js';
import { bottle, ensureBuilt } from '../../support/cli.js';
import { fakeContext, startFakeRun, testInput, testManifest, until } from '../../support/engine.js';

/**
 * A log recorded by another version of the machine cannot be folded by this one: the same
 * events could lead elsewhere. `bottle replay` and `bottle resume` refuse it with exit 1 and
 * MACHINE_VERSION, and say what to do, instead of judging or driving it.
 */

beforeAll(() => ensureBuilt());

function recordedBy(file: string, version: string) {
  const lines = readFileSync(file, 'utf8').split('\n');
  const first = JSON.parse(lines[0]!);
  expect(first.kind).toBe('run.started');
  expect(first.machineVersion).toBe(MACHINE_VERSION);
  first.machineVersion = version;
  lines[0] = JSON.stringify(first);
  writeFileSync(file, lines.join('\n'));
}

describe('a log of another machine version', () => {
  it('makes replay and resume exit 1 with MACHINE_VERSION and a hint', async () => {
    const ctx = fakeContext();
    const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'] }));
    const states: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s) });
    await until(() => states.includes('running'), 'running');
    // The owner goes away without a word, as after a crash: the run stays resumable.
    host.detach();
    const file = eventsFile(ctx.home, input.identity, input.runId);
    const env = { BOTTLE_BACKEND: 'fake', BOTTLE_HOME: ctx.home };
    const cli = (...args: string[]) => bottle(args, { cwd: ctx.home, env });

    // Unchanged, the run is consistent and resumable: the refusal below is the version's doing.
    expect((await cli('replay', input.identity)).code).toBe(0);

    recordedBy(file, 'bottle@0000older00');
    const replay = await cli('replay', input.identity);
    expect(replay.code, replay.stderr).toBe(1);
    expect(replay.stderr).toMatch(/error MACHINE_VERSION: .*bottle@0000older00.*this engine is bottle@/);
    expect(replay.stderr).toMatch(/Try: .*version that started it/);
    const json = await cli('replay', input.identity, '--json');
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout).error.code).toBe('MACHINE_VERSION');

    const resume = await cli('resume', input.identity);
    expect(resume.code, resume.stderr).toBe(1);
    expect(resume.stderr).toMatch(/error MACHINE_VERSION: /);
    expect(resume.stderr).toMatch(/Try: /);
    // Refused before anything was written: the log is as it was.
    expect(readFileSync(file, 'utf8')).toContain('bottle@0000older00');
    expect(readFileSync(file, 'utf8').split('\n').filter((l) => l.includes('"takeover":true'))).toHaveLength(0);
  });
});
