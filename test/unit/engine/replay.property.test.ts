import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { replayFile } from '../../../engine/replay.js';
import { RecordSchema } from '../../../store/records.js';
import { eventsFile } from '../../../store/paths.js';
import { fakeContext, startFakeRun, testInput, testManifest } from '../../support/engine.js';
import { runs } from '../../support/property.js';

/**
 * `bottle replay` (engine/replay.ts replayFile) on a real run's log damaged at random: a torn
 * last line is a crash and passes; any line dropped, duplicated, swapped or replaced by garbage
 * is named, with the first bad line; replay never throws and never changes a byte of the file.
 */

let pristine: string[] = [];
let dir = '';

beforeAll(async () => {
  const ctx = fakeContext();
  const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--exit', '0', '--ms', '10'] }));
  await (await startFakeRun(ctx, input)).done;
  pristine = readFileSync(eventsFile(ctx.home, input.identity, input.runId), 'utf8').trimEnd().split('\n');
  dir = ctx.home;
});

let n = 0;
/** Writes the lines, replays them, and checks that replay left the file as it was. */
function replay(text: string) {
  const file = join(dir, `replay-${++n}.jsonl`);
  writeFileSync(file, text);
  const before = readFileSync(file);
  const report = replayFile(file);
  expect(readFileSync(file).equals(before)).toBe(true);
  return report;
}

const garbage = fc
  .oneof(fc.string({ maxLength: 30 }), fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)), fc.constantFrom('', '{', '{"seq":1}', 'null'))
  .filter((t) => !t.includes('\n') && !isRecord(t));

function isRecord(t: string): boolean {
  try {
    return RecordSchema.safeParse(JSON.parse(t)).success;
  } catch {
    return false;
  }
}

describe('bottle replay on damaged logs', () => {
  it('a log cut anywhere inside its last line is a crash, and replays', () => {
    fc.assert(
      fc.property(fc.double({ min: 0, max: 1, noNaN: true }), (f) => {
        const last = pristine[pristine.length - 1]!;
        const cut = last.slice(0, 1 + Math.floor(f * (last.length - 2)));
        const report = replay(`${pristine.slice(0, -1).join('\n')}\n${cut}`);
        expect(report.problem).toBeNull();
        expect(report.ok).toBe(true);
      }),
      runs(30),
    );
  });

  it('a dropped, duplicated, swapped or garbage line is named at the first bad line', () => {
    const N = () => pristine.length;
    const damage = fc.oneof(
      fc.record({ kind: fc.constant('drop' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('swap' as const), at: fc.nat(), with: fc.nat() }),
      fc.record({ kind: fc.constant('garbage' as const), at: fc.nat(), text: garbage }),
      fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), text: garbage }),
    );
    fc.assert(
      fc.property(damage, (d) => {
        const lines = [...pristine];
        let line: number;
        const at = d.at % N();
        switch (d.kind) {
          case 'drop':
            fc.pre(at < N() - 1); // dropping the last line leaves a shorter, valid history
            lines.splice(at, 1);
            line = at + 1;
            break;
          case 'duplicate':
            lines.splice(at + 1, 0, lines[at]!);
            line = at + 2;
            break;
          case 'swap': {
            const other = d.with % N();
            fc.pre(other !== at);
            const [i, j] = [Math.min(at, other), Math.max(at, other)];
            [lines[i], lines[j]] = [lines[j]!, lines[i]!];
            line = i + 1;
            break;
          }
          case 'garbage':
            lines[at] = d.text;
            line = at + 1;
            break;
          case 'insert':
            lines.splice(at, 0, d.text);
            line = at + 1;
            break;
        }
        const report = replay(`${lines.join('\n')}\n`);
        expect(report.ok).toBe(false);
        expect(report.problem?.line, report.problem?.message).toBe(line);
        expect(report.problem?.message).not.toBe('');
      }),
      runs(200),
    );
  });

  it('a well-formed record whose recorded state differs from the fold is named as a mismatch', () => {
    const states = pristine.map((l, i) => ({ i, rec: JSON.parse(l) as { kind: string; value?: string } })).filter((x) => x.rec.kind === 'state');
    fc.assert(
      fc.property(fc.nat(), fc.string({ minLength: 1, maxLength: 20 }), (k, value) => {
        const { i, rec } = states[k % states.length]!;
        fc.pre(value !== rec.value);
        const lines = [...pristine];
        lines[i] = JSON.stringify({ ...rec, value });
        const report = replay(`${lines.join('\n')}\n`);
        expect(report.ok).toBe(false);
        expect(report.problem).toMatchObject({ line: i + 1, code: 'REPLAY_MISMATCH' });
      }),
      runs(50),
    );
  });
});
