import { readFileSync, writeFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { replayFile } from '../../../engine/replay.js';
import { eventsFile } from '../../../store/paths.js';
import { fakeContext, startFakeRun, testInput, testManifest } from '../../support/engine.js';

/** Replay succeeds on a real history and names the first inconsistency of a corrupted one. */

let pristine = '';
let file = '';

beforeAll(async () => {
  const ctx = fakeContext();
  const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--exit', '0', '--ms', '10'] }));
  await (await startFakeRun(ctx, input)).done;
  file = eventsFile(ctx.home, input.identity, input.runId);
  pristine = readFileSync(file, 'utf8');
});

const lines = () => pristine.trimEnd().split('\n');
function withLines(ls: string[], trailing = '\n') {
  writeFileSync(file, ls.join('\n') + trailing);
  return replayFile(file);
}

describe('bottle replay', () => {
  it('accepts the history of a real run', () => {
    const report = withLines(lines());
    expect(report).toMatchObject({ ok: true, finalState: 'done', problem: null });
  });

  it('tolerates a half-written last line (a crash mid-append)', () => {
    const ls = lines();
    const torn = [...ls, ls[ls.length - 1]!.slice(0, 20)];
    expect(withLines(torn, '').ok).toBe(true);
  });

  it('names two swapped lines', () => {
    const ls = lines();
    [ls[6], ls[7]] = [ls[7]!, ls[6]!];
    const report = withLines(ls);
    expect(report.ok).toBe(false);
    expect(report.problem?.line).toBe(7);
    expect(report.problem?.message).toMatch(/seq 8 where 7 was expected/);
  });

  it('names a gap in seq', () => {
    const ls = lines();
    ls.splice(9, 1);
    const report = withLines(ls);
    expect(report.problem?.line).toBe(10);
    expect(report.problem?.message).toMatch(/seq 11 where 10 was expected/);
  });

  it('names an effect output that was changed', () => {
    const ls = lines();
    const i = ls.findIndex((l) => l.includes('xstate.done.actor.resolveWorld'));
    const rec = JSON.parse(ls[i]!);
    rec.event.output.runtimes = ['runsc'];
    ls[i] = JSON.stringify(rec);
    const report = withLines(ls);
    expect(report.problem?.line).toBe(i + 1);
    expect(report.problem?.message).toMatch(/output of resolveWorld differs/);
  });

  it('names a recorded state that the history does not fold to', () => {
    const ls = lines();
    const i = ls.findIndex((l) => l.includes('"kind":"state"') && l.includes('"running"'));
    ls[i] = ls[i]!.replace('"running"', '"capabilityReview"');
    const report = withLines(ls);
    expect(report.problem?.line).toBe(i + 1);
    expect(report.problem?.message).toMatch(/recorded state capabilityReview .* folds to running/);
  });

  it('names a line that is not JSON', () => {
    const ls = lines();
    ls[3] = '{not json';
    expect(withLines(ls).problem).toMatchObject({ line: 4, message: 'not valid JSON' });
  });
});
