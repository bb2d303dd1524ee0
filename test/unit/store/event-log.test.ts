import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EventLog, effectKey } from '../../../store/event-log.js';
import { JsonlAppendAdapter } from '../../../store/jsonl-adapter.js';
import { type LogRecord, type NewRecord, RecordSchema } from '../../../store/records.js';
import { useTempDir } from './tmp.js';

const tmp = useTempDir();

function fixedClock(start = 1_000): { now(): number } {
  let t = start;
  return { now: () => t++ };
}

const started: NewRecord = { kind: 'run.started', runId: 'r1', identity: 'coder', machineVersion: '1', input: { agent: 'coder' } };
const ev = (type: string): NewRecord => ({ kind: 'event', event: { type } });

function lines(file: string): string[] {
  return readFileSync(file, 'utf8').split('\n');
}

function writeLines(file: string, records: object[], tail = ''): void {
  writeFileSync(file, records.map((r) => `${JSON.stringify(r)}\n`).join('') + tail);
}

describe('EventLog', () => {
  it('appends records with gapless seq and the clock time, durable and readable by others', () => {
    const file = join(tmp(), 'runs', 'r1', 'events.jsonl');
    const log = EventLog.open(file, { clock: fixedClock() });
    expect(log.lastSeq).toBe(0);
    const a = log.append(started);
    const b = log.append(ev('go'));
    expect([a.seq, a.at, b.seq, b.at]).toEqual([1, 1000, 2, 1001]);
    expect(log.records()).toEqual([a, b]);
    // Real disk, even under vitest's NODE_ENV=test (lowdb's presets would go to memory).
    expect(lines(file)).toEqual([JSON.stringify(a), JSON.stringify(b), '']);
    expect(EventLog.read(file)).toEqual([a, b]);

    const reopened = EventLog.open(file, { clock: fixedClock(5_000) });
    expect(reopened.lastSeq).toBe(2);
    expect(reopened.append(ev('again'))).toMatchObject({ seq: 3, at: 5000 });
    expect(EventLog.read(file).map((r) => r.seq)).toEqual([1, 2, 3]);
  });

  it('writes seq and at itself, whatever the caller passes', () => {
    const log = EventLog.open(join(tmp(), 'events.jsonl'), { clock: fixedClock() });
    const rec = log.append({ ...ev('x'), seq: 99, at: -1 } as unknown as NewRecord);
    expect(rec).toMatchObject({ seq: 1, at: 1000 });
    expect(Object.keys(rec).slice(0, 2)).toEqual(['seq', 'at']);
  });

  it('reads a missing log as empty', () => {
    expect(EventLog.read(join(tmp(), 'none.jsonl'))).toEqual([]);
  });

  it('ignores a torn last line and cuts it away before the next append', () => {
    const file = join(tmp(), 'events.jsonl');
    const log = EventLog.open(file, { clock: fixedClock() });
    log.append(started);
    log.append(ev('a'));
    appendFileSync(file, '{"seq":3,"at":1002,"kind":"ev');

    expect(EventLog.read(file).map((r) => r.seq)).toEqual([1, 2]);
    const reopened = EventLog.open(file, { clock: fixedClock(2_000) });
    expect(reopened.lastSeq).toBe(2);
    reopened.append(ev('b'));
    reopened.append(ev('c'));

    const text = lines(file);
    expect(text).toHaveLength(5);
    expect(text.at(-1)).toBe('');
    for (const line of text.slice(0, -1)) expect(() => RecordSchema.parse(JSON.parse(line))).not.toThrow();
    expect(EventLog.read(file).map((r) => r.seq)).toEqual([1, 2, 3, 4]);
  });

  it('keeps a complete last record that lost only its newline', () => {
    const file = join(tmp(), 'events.jsonl');
    writeLines(file, [{ seq: 1, at: 1, ...started }], JSON.stringify({ seq: 2, at: 2, ...ev('a') }));
    const log = EventLog.open(file, { clock: fixedClock() });
    expect(log.lastSeq).toBe(2);
    log.append(ev('b'));
    expect(EventLog.read(file).map((r) => r.seq)).toEqual([1, 2, 3]);
    expect(lines(file)).toHaveLength(4);
  });

  it('rejects a damaged line that is not the last, naming file and line', () => {
    const file = join(tmp(), 'events.jsonl');
    writeLines(file, [{ seq: 1, at: 1, ...started }], '{"seq":2,"at"\n{"seq":3,"at":3,"kind":"event","event":{"type":"x"}}\n');
    expect(() => EventLog.read(file)).toThrow(expect.objectContaining({ code: 'LOG_CORRUPT', message: expect.stringContaining(`${file}:2:`) }));
    expect(() => EventLog.open(file, { clock: fixedClock() })).toThrow(expect.objectContaining({ code: 'LOG_CORRUPT' }));
  });

  it('rejects a line that is JSON but not a record, even the last one', () => {
    const file = join(tmp(), 'events.jsonl');
    writeLines(file, [{ seq: 1, at: 1, ...started }, { seq: 2, at: 2, kind: 'event', event: { no: 'type' } }]);
    expect(() => EventLog.read(file)).toThrow(expect.objectContaining({ code: 'LOG_CORRUPT', message: expect.stringContaining(`${file}:2:`) }));
    writeLines(file, [{ seq: 1, at: 1, ...started }], '{"seq":2,"at":2,"kind":"nonsense"}');
    expect(() => EventLog.read(file)).toThrow(expect.objectContaining({ code: 'LOG_CORRUPT', message: expect.stringContaining(`${file}:2:`) }));
  });

  it('rejects a blank line in the middle', () => {
    const file = join(tmp(), 'events.jsonl');
    writeLines(file, [{ seq: 1, at: 1, ...started }], `\n${JSON.stringify({ seq: 2, at: 2, ...ev('a') })}\n`);
    expect(() => EventLog.read(file)).toThrow(expect.objectContaining({ code: 'LOG_CORRUPT', message: expect.stringContaining(':2:') }));
  });

  it('detects a gap or a restart in seq, naming the line and the expected seq', () => {
    const file = join(tmp(), 'events.jsonl');
    writeLines(file, [
      { seq: 1, at: 1, ...started },
      { seq: 2, at: 2, ...ev('a') },
      { seq: 4, at: 4, ...ev('b') },
    ]);
    expect(() => EventLog.read(file)).toThrow(
      expect.objectContaining({ code: 'LOG_CORRUPT', message: `${file}:3: seq 4 where 3 was expected` }),
    );
    writeLines(file, [{ seq: 2, at: 1, ...started }]);
    expect(() => EventLog.open(file, { clock: fixedClock() })).toThrow(expect.objectContaining({ message: expect.stringContaining(':1: seq 2 where 1') }));
  });

  it('refuses a record that would not read back, and reuses its seq for the next append', () => {
    const file = join(tmp(), 'events.jsonl');
    const log = EventLog.open(file, { clock: fixedClock() });
    log.append(started);
    expect(() => log.append({ kind: 'effect.intent', key: 'k', step: 's', attempt: 0 })).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
    expect(log.lastSeq).toBe(1);
    expect(log.append(ev('ok')).seq).toBe(2);
    expect(EventLog.read(file).map((r) => r.seq)).toEqual([1, 2]);
  });
});

describe('JsonlAppendAdapter', () => {
  it('only appends: asked to shrink, it throws and leaves the file alone', () => {
    const file = join(tmp(), 'events.jsonl');
    const adapter = new JsonlAppendAdapter(file, RecordSchema);
    const recs = [
      { seq: 1, at: 1, ...started },
      { seq: 2, at: 2, ...ev('a') },
    ] as LogRecord[];
    adapter.write(recs);
    const before = readFileSync(file, 'utf8');
    expect(() => adapter.write(recs.slice(0, 1))).toThrow(/append-only/);
    expect(readFileSync(file, 'utf8')).toBe(before);
    expect(adapter.persisted).toBe(2);
  });

  it('learns what is on disk before a first write without a read', () => {
    const file = join(tmp(), 'events.jsonl');
    writeLines(file, [{ seq: 1, at: 1, ...started }]);
    const adapter = new JsonlAppendAdapter(file, RecordSchema);
    adapter.write([{ seq: 1, at: 1, ...started }, { seq: 2, at: 2, ...ev('a') }] as LogRecord[]);
    expect(lines(file)).toHaveLength(3);
  });
});

describe('effect journal', () => {
  it('keys effects by run, step and attempt', () => {
    expect(effectKey('r1', 'createNetwork', 2)).toBe('r1:createNetwork:2');
  });
});

describe('reading the tail backwards', () => {
  // findLastLine reads 256 KiB at a time from the end; a chunk that began with a newline made
  // it search the same chunk again forever.
  const CHUNK = 256 * 1024;

  it('finds the last snapshot wherever a chunk boundary falls, a newline included', () => {
    const file = join(tmp(), 'events.jsonl');
    const head = [
      { seq: 1, at: 1, ...started },
      { seq: 2, at: 2, kind: 'snapshot', snapshot: {}, eventCount: 0 },
    ];
    const bare = JSON.stringify({ seq: 3, at: 3, kind: 'event', event: { type: 'x', pad: '' } }).length + 1;
    // Tail lengths around CHUNK - 1: for one of them the boundary is the snapshot line's newline.
    for (let tail = CHUNK - 4; tail <= CHUNK + 2; tail++) {
      writeLines(file, [...head, { seq: 3, at: 3, kind: 'event', event: { type: 'x', pad: 'x'.repeat(tail - bare) } }]);
      const log = EventLog.openTail(file, { clock: fixedClock() });
      expect(log.records().map((r) => r.seq)).toEqual([2, 3]);
      expect(EventLog.follow(file, { fromLastSnapshot: true }).next().map((r) => r.seq)).toEqual([2, 3]);
    }
  });

  it('names a blank first line instead of searching forever', () => {
    const file = join(tmp(), 'events.jsonl');
    writeLines(file, [{ seq: 1, at: 1, ...started }]);
    writeFileSync(file, `\n${readFileSync(file, 'utf8')}`);
    expect(() => EventLog.openTail(file, { clock: fixedClock() })).toThrow(expect.objectContaining({ code: 'LOG_CORRUPT', message: expect.stringMatching(/:1: /) }));
  });
});
