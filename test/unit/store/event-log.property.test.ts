import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import { EventLog } from '../../../store/event-log.js';
import { type LogRecord, type NewRecord, RecordSchema } from '../../../store/records.js';
import { runs } from '../../support/property.js';
import { useTempDir } from './tmp.js';

/**
 * Damaged event logs (store/event-log.ts over store/jsonl-adapter.ts): torn last lines,
 * duplicated, reordered, dropped and garbage lines, huge records. Every reader names the first
 * bad line with the file, nothing throws anything but LOG_CORRUPT, no reader changes a byte, and
 * an append after reading never rewrites what was recorded (only a torn tail is cut).
 */

const tmp = useTempDir();
let n = 0;
const freshFile = () => join(tmp(), `log-${++n}`, 'events.jsonl');

const text = fc.string({ unit: 'grapheme', maxLength: 40 });
/** Mostly small, sometimes past every buffer the readers use (16 KiB first line, 256 KiB backward chunks). */
const payload = fc.oneof(
  { weight: 8, arbitrary: text },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 16 * 1024, max: 300 * 1024 }), text).map(([size, t]) => `${t}${'x'.repeat(size)}${t}`) },
);

const body: fc.Arbitrary<NewRecord> = fc.oneof(
  fc.record({ kind: fc.constant('event' as const), event: fc.record({ type: text, data: payload }) }),
  fc.record({ kind: fc.constant('effect.intent' as const), key: text, step: text, attempt: fc.integer({ min: 1, max: 9 }) }),
  fc.record({ kind: fc.constant('effect.completed' as const), key: text, output: fc.jsonValue({ maxDepth: 3 }) }),
  fc.record({ kind: fc.constant('effect.failed' as const), key: text, error: fc.record({ code: text, message: payload }) }),
  fc.record({ kind: fc.constant('command' as const), id: text, command: fc.record({ type: text }) }),
  fc.record({ kind: fc.constant('state' as const), value: text, status: text }),
  fc.record({ kind: fc.constant('owner' as const), pid: fc.integer({ min: 1, max: 1 << 22 }), host: text, takeover: fc.boolean() }),
  fc.record({ kind: fc.constant('snapshot' as const), snapshot: fc.record({ value: text, blob: payload }), eventCount: fc.nat() }),
);
const started: NewRecord = { kind: 'run.started', runId: 'r1', identity: 'coder', machineVersion: 'v', input: { agent: 'coder' } };

/** A whole log as the writer lays it out: seq and at first, one record a line. */
const logRecords = fc.array(body, { minLength: 1, maxLength: 12 }).map((bodies): LogRecord[] =>
  // Through JSON once, as every record is on disk (-0 reads back as 0).
  [started, ...bodies].map((b, i) => JSON.parse(JSON.stringify(Object.assign({ seq: 0, at: 0 }, b, { seq: i + 1, at: 1_000 + i }))) as LogRecord),
);
const lineOf = (r: LogRecord) => JSON.stringify(r);
const lastSnapshotIndex = (records: readonly LogRecord[]) => records.map((r) => r.kind).lastIndexOf('snapshot');

/** A line that is not a record: not JSON, blank, or JSON of the wrong shape. */
const garbage = fc
  .oneof(
    fc.string({ maxLength: 30 }),
    fc.string({ unit: 'binary', maxLength: 30 }),
    fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)),
    fc.constantFrom('', ' ', '\r', '{', '{"seq":1}', '{"seq":2,"at":0,"kind":"nope"}', '\u0000', 'null'),
    fc.integer({ min: 64 * 1024, max: 300 * 1024 }).map((size) => `{"seq":1,"kind":"event","x":"${'y'.repeat(size)}`),
  )
  .filter((t) => !t.includes('\n') && !RecordSchema.safeParse(safeJson(t)).success);

function safeJson(t: string): unknown {
  try {
    return JSON.parse(t);
  } catch {
    return undefined;
  }
}

type Damage =
  | { kind: 'insert'; at: number; text: string }
  | { kind: 'replace'; at: number; text: string }
  | { kind: 'duplicate'; at: number }
  | { kind: 'swap'; at: number; with: number }
  | { kind: 'drop'; at: number };

/** The damaged lines, and the first line (1-based) every reader must name. */
function damage(lines: string[], d: Damage): { lines: string[]; line: number } {
  const out = [...lines];
  switch (d.kind) {
    case 'insert':
      out.splice(d.at, 0, d.text);
      return { lines: out, line: d.at + 1 };
    case 'replace':
      out[d.at] = d.text;
      return { lines: out, line: d.at + 1 };
    case 'duplicate':
      out.splice(d.at + 1, 0, out[d.at]!);
      return { lines: out, line: d.at + 2 };
    case 'swap':
      [out[d.at], out[d.with]] = [out[d.with]!, out[d.at]!];
      return { lines: out, line: d.at + 1 };
    case 'drop':
      out.splice(d.at, 1);
      return { lines: out, line: d.at + 1 };
  }
}

/** A damage that leaves a bad line somewhere (dropping the last line leaves a valid, shorter log). */
const damaged = logRecords.chain((records) => {
  const N = records.length;
  const at = fc.nat({ max: N - 1 });
  const kinds: fc.Arbitrary<Damage>[] = [
    fc.record({ kind: fc.constant('insert' as const), at, text: garbage }),
    fc.record({ kind: fc.constant('replace' as const), at, text: garbage }),
    fc.record({ kind: fc.constant('duplicate' as const), at }),
    fc.record({ kind: fc.constant('drop' as const), at: fc.nat({ max: N - 2 }) }),
    fc
      .tuple(fc.nat({ max: N - 1 }), fc.nat({ max: N - 1 }))
      .filter(([a, b]) => a !== b)
      .map(([a, b]) => ({ kind: 'swap' as const, at: Math.min(a, b), with: Math.max(a, b) })),
  ];
  return fc.tuple(fc.constant(records), N >= 2 ? fc.oneof(...kinds) : fc.oneof(...kinds.slice(0, 3)));
});

function corruptLine(fn: () => unknown): { line: number; message: string } {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BottleError);
    expect((err as BottleError).code).toBe('LOG_CORRUPT');
    const m = /^(.*):(\d+): (.+)$/s.exec((err as BottleError).message);
    expect(m, (err as BottleError).message).not.toBeNull();
    return { line: Number(m![2]), message: `${m![1]}` };
  }
  throw new Error('expected LOG_CORRUPT, nothing was thrown');
}

const clock = () => {
  let t = 5_000;
  return { now: () => t++ };
};

describe('event log: damaged files', () => {
  it('every reader names the first bad line (and the file), and none changes a byte', () => {
    fc.assert(
      fc.property(damaged, ([records, d]) => {
        const file = freshFile();
        EventLog.open(file, { clock: clock() }); // creates the folder; writes nothing
        const bad = damage(records.map(lineOf), d);
        writeFileSync(file, `${bad.lines.join('\n')}\n`);
        const before = readFileSync(file);

        for (const read of [() => EventLog.read(file), () => EventLog.open(file, { clock: clock() }), () => EventLog.follow(file).next()]) {
          const named = corruptLine(read);
          expect(named).toEqual({ line: bad.line, message: file });
        }
        const checked = EventLog.check(file);
        expect(checked.problem?.line).toBe(bad.line);
        expect(checked.records).toEqual(records.slice(0, bad.line - 1));
        // Without a snapshot record openTail reads the whole log, as open does.
        if (!bad.lines.some((l) => l.includes('"kind":"snapshot"'))) expect(corruptLine(() => EventLog.openTail(file, { clock: clock() })).line).toBe(bad.line);
        expect(readFileSync(file).equals(before)).toBe(true);
      }),
      runs(150),
    );
  });

  it('a torn last line is ignored, and the next append cuts only it: every whole record keeps its bytes', () => {
    const torn = fc.oneof(
      // A record cut anywhere before its end (a crash mid-append).
      fc.tuple(body, fc.double({ min: 0, max: 1, noNaN: true })).map(([b, f]) => {
        const whole = JSON.stringify({ seq: 99, at: 1, ...b });
        return whole.slice(0, 1 + Math.floor(f * (whole.length - 2)));
      }),
      // Bytes that are not JSON at all, without a newline.
      fc.string({ minLength: 1, maxLength: 30 }).filter((t) => !t.includes('\n') && safeJson(t) === undefined),
    );
    fc.assert(
      fc.property(logRecords, torn, fc.boolean(), (records, tail, withNewline) => {
        const file = freshFile();
        EventLog.open(file, { clock: clock() });
        const whole = records.map((r) => `${lineOf(r)}\n`).join('');
        // The last whole record may also have lost its newline; then nothing is torn.
        const content = withNewline ? `${whole}${tail}` : whole.slice(0, -1);
        writeFileSync(file, content);
        expect(EventLog.read(file)).toEqual(records);
        expect(EventLog.check(file).problem).toBeNull();
        expect(readFileSync(file, 'utf8')).toBe(content);

        const log = EventLog.open(file, { clock: clock() });
        expect(log.lastSeq).toBe(records.length);
        const added = log.append({ kind: 'state', value: 'after', status: 'active' });
        const after = readFileSync(file, 'utf8');
        expect(after).toBe(`${whole}${lineOf(added)}\n`);
        expect(EventLog.read(file)).toEqual([...records, added]);
      }),
      runs(100),
    );
  });
});

describe('event log: tails and followers', () => {
  const withSnapshots = logRecords.filter((rs) => rs.some((r, i) => i > 0 && r.kind === 'snapshot'));

  it('openTail and follow from the last snapshot hold exactly the tail that read returns', () => {
    fc.assert(
      fc.property(withSnapshots, (records) => {
        const file = freshFile();
        EventLog.open(file, { clock: clock() });
        writeFileSync(file, records.map((r) => `${lineOf(r)}\n`).join(''));
        const last = lastSnapshotIndex(records);
        const tail = EventLog.openTail(file, { clock: clock() });
        expect(tail.records()).toEqual(records.slice(last));
        expect(tail.first).toEqual(records[0]);
        expect(tail.lastSeq).toBe(records.length);
        const follower = EventLog.follow(file, { fromLastSnapshot: true });
        expect(follower.first).toEqual(records[0]);
        expect(follower.next()).toEqual(records.slice(last));
        expect(follower.next()).toEqual([]);
        // An append after openTail goes to the end of the whole file, after every recorded byte.
        const before = readFileSync(file, 'utf8');
        const added = tail.append({ kind: 'state', value: 'after', status: 'active' });
        expect(readFileSync(file, 'utf8')).toBe(`${before}${lineOf(added)}\n`);
        expect(EventLog.read(file)).toEqual([...records, added]);
      }),
      runs(100),
    );
  });

  it('damage after the last snapshot is named by openTail and follow as by read, and changes nothing', () => {
    const tailDamage = withSnapshots.chain((records) => {
      const last = lastSnapshotIndex(records);
      const N = records.length;
      const at = fc.integer({ min: last, max: N - 1 });
      const kinds: fc.Arbitrary<Damage>[] = [
        // Also after the last line: garbage with its newline is damage, not a torn write.
        fc.record({ kind: fc.constant('insert' as const), at: fc.integer({ min: last + 1, max: N }), text: garbage }),
        fc.record({ kind: fc.constant('duplicate' as const), at }),
      ];
      if (last + 1 <= N - 1) kinds.push(fc.record({ kind: fc.constant('replace' as const), at: fc.integer({ min: last + 1, max: N - 1 }), text: garbage }));
      return fc.tuple(fc.constant(records), fc.oneof(...kinds));
    });
    fc.assert(
      fc.property(tailDamage, ([records, d]) => {
        const file = freshFile();
        EventLog.open(file, { clock: clock() });
        const bad = damage(records.map(lineOf), d);
        writeFileSync(file, `${bad.lines.join('\n')}\n`);
        const before = readFileSync(file);
        const line = corruptLine(() => EventLog.read(file)).line;
        expect(line).toBe(bad.line);
        expect(corruptLine(() => EventLog.openTail(file, { clock: clock() })).line).toBe(line);
        expect(corruptLine(() => EventLog.follow(file, { fromLastSnapshot: true }).next()).line).toBe(line);
        expect(readFileSync(file).equals(before)).toBe(true);
      }),
      runs(150),
    );
  });

  it('a follower of a log written in arbitrary pieces sees each record once, in order, and never a partial one', () => {
    fc.assert(
      fc.property(logRecords, fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 12 }), (records, cuts) => {
        const file = freshFile();
        EventLog.open(file, { clock: clock() });
        const bytes = Buffer.from(records.map((r) => `${lineOf(r)}\n`).join(''), 'utf8');
        const points = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
        const follower = EventLog.follow(file);
        const seen: LogRecord[] = [];
        seen.push(...follower.next()); // before the file exists
        let from = 0;
        for (const p of [...points, bytes.length]) {
          appendFileSync(file, bytes.subarray(from, p));
          from = p;
          seen.push(...follower.next());
        }
        expect(seen).toEqual(records);
      }),
      runs(100),
    );
  });
});
