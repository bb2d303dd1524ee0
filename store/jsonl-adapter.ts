import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync } from 'node:fs';
import { dirname } from 'node:path';
import type { SyncAdapter } from 'lowdb';
import type { z } from 'zod';
import { BottleError } from '../config/errors.js';
import { parseChecked, zodReason } from './checked-json.js';
import { errno, fsyncDir, readIfPresent, writeAllSync } from './fs-util.js';

const NEWLINE = 0x0a;

export function logCorrupt(file: string, line: number, reason: string): BottleError {
  return new BottleError(
    'LOG_CORRUPT',
    `${file}:${line}: ${reason}`,
    `Try: sed -n '${line}p' '${file}'   (bottle only ever appends whole lines; a bad line that is not the last one was written by something else)`,
  );
}

/** The first line that is not a record: where it is and why (a torn last line is not one). */
export interface ReadProblem {
  line: number;
  notJson: boolean;
  reason: string;
}

interface Scan<T> {
  records: T[];
  exists: boolean;
  /** Length of the prefix made of whole, valid records. */
  goodBytes: number;
  /** Bytes past goodBytes: a record torn by a crash mid-append. */
  torn: boolean;
  /** The last valid record was written without its newline. */
  missingNewline: boolean;
  /** Set when a line other than a torn last one fails: reading stopped there. */
  problem: ReadProblem | null;
}

/** Where reading starts: byte offset of a line start, and how many records precede it. */
export interface TailStart {
  offset: number;
  records: number;
}

/**
 * The one reader of JSONL files: every record a line, checked against `schema`. Every record
 * is one object written with its newline in one go, so a crash can only leave an unfinished
 * object at the very end (torn, ignored); a bad line anywhere else is damage, and reading
 * stops there with the problem. With `wholeLines`, a last line without its newline is left
 * for the next read (a reader following a file its writer is still appending to).
 */
function scan<T>(file: string, schema: z.ZodType<T>, from: TailStart = { offset: 0, records: 0 }, opts: { wholeLines?: boolean } = {}): Scan<T> {
  let buf = from.offset === 0 ? readIfPresent(file) : readTail(file, from.offset);
  if (buf === null) return { records: [], exists: false, goodBytes: 0, torn: false, missingNewline: false, problem: null };
  if (opts.wholeLines) buf = buf.subarray(0, buf.lastIndexOf(NEWLINE) + 1);
  const records: T[] = [];
  let pos = 0;
  let line = from.records + 1;
  let torn = false;
  let missingNewline = false;
  let problem: ReadProblem | null = null;
  while (pos < buf.length) {
    const nl = buf.indexOf(NEWLINE, pos);
    const last = nl === -1;
    const end = last ? buf.length : nl;
    const parsed = parseChecked(schema, buf.toString('utf8', pos, end));
    if (!parsed.ok) {
      if (last && parsed.notJson) torn = true;
      else problem = { line, notJson: parsed.notJson, reason: parsed.reason };
      break;
    }
    records.push(parsed.value);
    pos = last ? buf.length : nl + 1;
    missingNewline = last;
    line++;
  }
  return { records, exists: true, goodBytes: from.offset + pos, torn, missingNewline, problem };
}

/** scan, where a damaged line is an error naming the file and line. */
function scanOrThrow<T>(file: string, schema: z.ZodType<T>, from?: TailStart): Scan<T> {
  const s = scan(file, schema, from);
  if (s.problem) throw logCorrupt(file, s.problem.line, s.problem.reason);
  return s;
}

/** Every record of `file` up to the first damaged line, and that line's problem; nothing is thrown for damage. */
export function readJsonl<T>(file: string, schema: z.ZodType<T>): { records: T[]; exists: boolean; problem: ReadProblem | null } {
  const s = scan(file, schema);
  return { records: s.records, exists: s.exists, problem: s.problem };
}

/**
 * The whole records written to `file` since `from` (none when it does not exist yet), and
 * where the next read starts: a follower reads each byte once, not the file each time.
 */
export function readJsonlFrom<T>(file: string, schema: z.ZodType<T>, from: TailStart): { records: T[]; next: TailStart } {
  const s = scan(file, schema, from, { wholeLines: true });
  if (s.problem) throw logCorrupt(file, s.problem.line, s.problem.reason);
  return { records: s.records, next: { offset: s.goodBytes, records: from.records + s.records.length } };
}

/** Runs `fn` on `file` opened for reading; null when the file does not exist. */
function withFile<T>(file: string, fn: (fd: number) => T): T | null {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    if (errno(err) === 'ENOENT') return null;
    throw err;
  }
  try {
    return fn(fd);
  } finally {
    closeSync(fd);
  }
}

/** The bytes of `file` from `offset` to its end, without reading what comes before. */
function readTail(file: string, offset: number): Buffer | null {
  return withFile(file, (fd) => {
    const buf = Buffer.alloc(Math.max(0, fstatSync(fd).size - offset));
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  });
}

/**
 * Byte offset of the start of the last line that contains `marker` and satisfies `accept`,
 * found by reading backwards from the end in chunks: O(size of the tail), not of the file.
 */
export function findLastLine(file: string, marker: string, accept: (line: string) => boolean): number | null {
  return withFile(file, (fd): number | null => {
    const size = fstatSync(fd).size;
    const CHUNK = 256 * 1024;
    let end = size;
    let carry = Buffer.alloc(0);
    while (end > 0) {
      const start = Math.max(0, end - CHUNK);
      const chunk = Buffer.alloc(end - start);
      readSync(fd, chunk, 0, chunk.length, start);
      const buf = Buffer.concat([chunk, carry]);
      // Whole lines of buf start after a newline (or at 0 when start is 0).
      let lineEnd = buf.length;
      // At lineEnd 0 nothing is left of buf (and lastIndexOf from -1 would search it all again).
      const newlineBefore = (end: number) => (end === 0 ? -1 : buf.lastIndexOf(NEWLINE, end - 1));
      for (let nl = newlineBefore(lineEnd); ; nl = newlineBefore(lineEnd)) {
        if (nl === -1 && start > 0) break;
        const lineStart = nl + 1;
        const text = buf.toString('utf8', lineStart, lineEnd);
        if (text.includes(marker) && accept(text)) return start + lineStart;
        if (nl === -1) break;
        lineEnd = nl;
      }
      carry = buf.subarray(0, lineEnd);
      end = start;
    }
    return null;
  });
}

/**
 * A lowdb SyncAdapter over an append-only JSONL file: one record a line, each line checked
 * against `schema` on read. `write(data)` appends only the records past those already on
 * disk (fsync after each), so an append costs the same at 10 events as at 100,000, where
 * lowdb's own file adapters rewrite the whole file.
 *
 * One writer per file (the run's lock holder); any number of readers, which see at worst a
 * torn last line and ignore it.
 */
export class JsonlAppendAdapter<T> implements SyncAdapter<T[]> {
  readonly file: string;
  readonly #schema: z.ZodType<T>;
  #loaded = false;
  #exists = false;
  #persisted = 0;
  #goodBytes = 0;
  /** Bytes past #goodBytes are garbage (a torn line, or our own failed append) to cut before appending. */
  #dirtyTail = false;
  #missingNewline = false;

  readonly #from: TailStart;

  /**
   * With `from`, the adapter reads and holds only the records from that line on (a resume
   * from a snapshot record); appends still go to the end of the whole file.
   */
  constructor(file: string, schema: z.ZodType<T>, from: TailStart = { offset: 0, records: 0 }) {
    this.file = file;
    this.#schema = schema;
    this.#from = from;
  }

  /** Records on disk, or null when the file does not exist yet (lowdb then keeps its default). */
  read(): T[] | null {
    const s = scanOrThrow(this.file, this.#schema, this.#from);
    this.#loaded = true;
    this.#exists = s.exists;
    this.#persisted = s.records.length;
    this.#goodBytes = s.goodBytes;
    this.#dirtyTail = s.torn;
    this.#missingNewline = s.missingNewline;
    return s.exists ? s.records : null;
  }

  /** Number of records known to be durable on disk. */
  get persisted(): number {
    return this.#persisted;
  }

  write(data: T[]): void {
    if (!this.#loaded) this.read();
    if (data.length < this.#persisted) {
      throw new BottleError('INTERNAL', `${this.file}: the log is append-only, but was asked to go from ${this.#persisted} to ${data.length} records`);
    }
    if (data.length === this.#persisted) return;
    const fd = openSync(this.file, 'a', 0o600);
    try {
      if (this.#dirtyTail) {
        ftruncateSync(fd, this.#goodBytes);
        this.#dirtyTail = false;
      }
      for (let i = this.#persisted; i < data.length; i++) {
        const text = `${this.#missingNewline ? '\n' : ''}${this.#serialize(data[i] as T, this.#from.records + i + 1)}\n`;
        const buf = Buffer.from(text, 'utf8');
        // Until fsync returns, what reached the file may be a partial line: cut it next time.
        this.#dirtyTail = true;
        writeAllSync(fd, buf);
        fsyncSync(fd);
        this.#dirtyTail = false;
        this.#missingNewline = false;
        this.#goodBytes += buf.length;
        this.#persisted = i + 1;
      }
    } finally {
      closeSync(fd);
    }
    // Until then the file's name may not survive a crash even though its lines were fsynced.
    if (!this.#exists) fsyncDir(dirname(this.file));
    this.#exists = true;
  }

  /** Refuses to write what read() would reject, so a bad record fails its append instead of the next resume. */
  #serialize(record: T, line: number): string {
    const text = JSON.stringify(record);
    const result = text === undefined ? undefined : this.#schema.safeParse(JSON.parse(text));
    if (!result?.success) {
      const why = result ? zodReason(result.error) : 'not serializable';
      throw new BottleError('INTERNAL', `${this.file}: refusing to append record ${line}, it would not read back: ${why}`);
    }
    return text as string;
  }
}

/**
 * The first record of a JSONL file without reading the rest; null when the file is missing
 * or its first line is not complete yet.
 */
export function readFirstRecord<T>(file: string, schema: z.ZodType<T>): T | null {
  const line = withFile(file, (fd) => {
    const chunks: Buffer[] = [];
    const chunk = Buffer.alloc(16 * 1024);
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) return null;
      const nl = chunk.subarray(0, n).indexOf(NEWLINE);
      chunks.push(Buffer.from(chunk.subarray(0, nl === -1 ? n : nl)));
      if (nl !== -1) return Buffer.concat(chunks).toString('utf8');
    }
  });
  if (line === null) return null;
  const parsed = parseChecked(schema, line);
  if (!parsed.ok) throw logCorrupt(file, 1, parsed.reason);
  return parsed.value;
}

/** Where the line before the one starting at `offset` starts (read backwards); null at the first line. */
export function previousLineStart(file: string, offset: number): number | null {
  if (offset <= 0) return null;
  return withFile(file, (fd): number => {
    const CHUNK = 64 * 1024;
    // offset - 1 is the newline that ends the previous line.
    let end = offset - 1;
    while (end > 0) {
      const start = Math.max(0, end - CHUNK);
      const chunk = Buffer.alloc(end - start);
      readSync(fd, chunk, 0, chunk.length, start);
      const nl = chunk.lastIndexOf(NEWLINE);
      if (nl !== -1) return start + nl + 1;
      end = start;
    }
    return 0;
  });
}

/** The first bytes of the line starting at `offset` (enough to read its seq). */
export function readLinePrefix(file: string, offset: number, length = 64): string {
  return (
    withFile(file, (fd) => {
      const buf = Buffer.alloc(length);
      const n = readSync(fd, buf, 0, length, offset);
      return buf.toString('utf8', 0, n);
    }) ?? ''
  );
}
