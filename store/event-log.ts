import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { LowSync } from 'lowdb';
import { findLastLine, JsonlAppendAdapter, logCorrupt, type ReadProblem, previousLineStart, readFirstRecord, readJsonl, readJsonlFrom, readLinePrefix, type TailStart } from './jsonl-adapter.js';
import { type LogRecord, type NewRecord, RecordSchema } from './records.js';

export interface EventLogOptions {
  clock: { now(): number };
}

/** Every line is a record (the reader rejects anything else), so record i sits on line i + 1. */
function seqProblem(records: readonly LogRecord[], before = 0): ReadProblem | null {
  for (let i = 0; i < records.length; i++) {
    const want = before + i + 1;
    const seq = records[i]!.seq;
    if (seq !== want) return { line: want, notJson: false, reason: `seq ${seq} where ${want} was expected` };
  }
  return null;
}

function checkGapless(file: string, records: readonly LogRecord[], before = 0): void {
  const problem = seqProblem(records, before);
  if (problem) throw logCorrupt(file, problem.line, problem.reason);
}

/** A reader that follows a log its owner is still writing: each call returns only what is new. */
export interface LogFollower {
  /** The run.started record (read even when following starts at the last snapshot). */
  readonly first: LogRecord | null;
  next(): LogRecord[];
}

/**
 * Where the last snapshot record's line starts (found by reading backwards from the end), with
 * the log's first record: what reading only the tail needs. Null without a snapshot record.
 */
function lastSnapshotStart(file: string): { from: TailStart; first: LogRecord } | null {
  const offset = findLastLine(file, '"kind":"snapshot"', (line) => {
    try {
      return (JSON.parse(line) as { kind?: unknown }).kind === 'snapshot';
    } catch {
      // A torn last line cannot be the snapshot we want.
      return false;
    }
  });
  if (offset === null || offset === 0) return null;
  const first = readFirstRecord(file, RecordSchema);
  const seqOf = (at: number | null) => (at === null ? undefined : /"seq":(\d+)/.exec(readLinePrefix(file, at))?.[1]);
  const seqText = seqOf(offset);
  if (!first || !seqText) return null;
  // The tail's seq stands for its line number. The line before it must be the record before
  // it: otherwise (a duplicated snapshot line, say) the log is damaged, and the whole read
  // that callers fall back to names where.
  if (Number(seqOf(previousLineStart(file, offset))) !== Number(seqText) - 1) return null;
  return { from: { offset, records: Number(seqText) - 1 }, first };
}

/**
 * A run's append-only log (runs/<runId>/events.jsonl). Only the run's lock holder opens it
 * for writing; everyone else uses EventLog.read. Appends are synchronous and durable when
 * they return, because the engine appends from inside xstate's synchronous inspection
 * callback, before the event is processed.
 */
export class EventLog {
  readonly file: string;
  readonly #db: LowSync<LogRecord[]>;
  readonly #clock: { now(): number };
  /** Records before the first one held in memory (non-zero after openTail). */
  readonly #before: number;
  /** The run.started record; held even when only the tail is. */
  readonly first: LogRecord | null;

  private constructor(file: string, db: LowSync<LogRecord[]>, clock: { now(): number }, before = 0, first?: LogRecord | null) {
    this.file = file;
    this.#db = db;
    this.#clock = clock;
    this.#before = before;
    this.first = first !== undefined ? first : (db.data[0] ?? null);
  }

  /**
   * Opens for appending but reads only from the last snapshot record on (plus the first
   * record), so taking over a long run costs the size of its tail, not of its history.
   * Without a snapshot record it reads everything, as open() does.
   */
  static openTail(file: string, opts: EventLogOptions): EventLog {
    const tail = lastSnapshotStart(file);
    if (!tail) return EventLog.open(file, opts);
    const db = new LowSync<LogRecord[]>(new JsonlAppendAdapter(file, RecordSchema, tail.from), []);
    db.read();
    checkGapless(file, db.data, tail.from.records);
    return new EventLog(file, db, opts.clock, tail.from.records, tail.first);
  }

  /** Opens (creating the run directory if needed) and reads the whole log. */
  static open(file: string, opts: EventLogOptions): EventLog {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    // Constructed explicitly: lowdb's node presets swap in a memory adapter under NODE_ENV=test.
    const db = new LowSync<LogRecord[]>(new JsonlAppendAdapter(file, RecordSchema), []);
    db.read();
    checkGapless(file, db.data);
    return new EventLog(file, db, opts.clock);
  }

  /** Every record of the log at `file` (none when it does not exist), for readers that never write. */
  static read(file: string): readonly LogRecord[] {
    const records = new JsonlAppendAdapter(file, RecordSchema).read() ?? [];
    checkGapless(file, records);
    return records;
  }

  /**
   * The records of `file` as far as they are whole and in order, and the first line that is
   * not (a torn last line is not a problem): for `bottle replay`, which reports instead of throwing.
   */
  static check(file: string): { records: LogRecord[]; problem: ReadProblem | null } {
    const read = readJsonl(file, RecordSchema);
    const seq = seqProblem(read.records);
    if (seq) return { records: read.records.slice(0, seq.line - 1), problem: seq };
    return { records: read.records, problem: read.problem };
  }

  /**
   * Follows the log at `file`, reading each byte once: from its start, or from its last
   * snapshot record (the first `next()` then begins with that record).
   */
  static follow(file: string, opts: { fromLastSnapshot?: boolean } = {}): LogFollower {
    const tail = opts.fromLastSnapshot ? lastSnapshotStart(file) : null;
    let at: TailStart = tail?.from ?? { offset: 0, records: 0 };
    return {
      first: tail?.first ?? null,
      next() {
        const { records, next } = readJsonlFrom(file, RecordSchema, at);
        checkGapless(file, records, at.records);
        at = next;
        return records;
      },
    };
  }

  /** The records held: all of them, or after openTail the tail from the last snapshot on. */
  records(): readonly LogRecord[] {
    return this.#db.data;
  }

  get lastSeq(): number {
    return this.#before + this.#db.data.length;
  }

  /** Gives the record the next seq and the clock's time, and returns once it is on disk. */
  append(rec: NewRecord): LogRecord {
    // seq and at first for people reading the file, and last so nothing in rec can override them.
    const full = Object.assign({ seq: 0, at: 0 }, rec, { seq: this.lastSeq + 1, at: this.#clock.now() }) as LogRecord;
    this.#db.data.push(full);
    try {
      this.#db.write();
    } catch (err) {
      // Not on disk: keep memory equal to the file so the next append reuses this seq.
      this.#db.data.pop();
      throw err;
    }
    return full;
  }
}

/** The effect journal key: stable across restarts, never a position. */
export function effectKey(runId: string, step: string, attempt: number): string {
  return `${runId}:${step}:${attempt}`;
}
