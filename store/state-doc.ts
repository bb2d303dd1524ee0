import { mkdirSync, readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { LowSync, type SyncAdapter } from 'lowdb';
import { z } from 'zod';
import { BottleError, type ErrorData } from '../config/errors.js';
import { parseChecked, zodReason } from './checked-json.js';
import { errno, readIfPresent, writeFileAtomicSync } from './fs-util.js';
import { readFirstRecord } from './jsonl-adapter.js';
import { bottlesDir, eventsFile, isSegment, runsDir, stateFile } from './paths.js';
import { ErrorDataSchema, RecordSchema } from './records.js';

/** bottles/<identity>/state.json: where a bottle is now, for `ls`, `status` and cleanup. */
export const StateDocSchema = z.object({
  identity: z.string(),
  runId: z.string(),
  /** The machine's state name (resolving, running, teardown, done, failed, ...). */
  state: z.string(),
  agentContainer: z.string().nullable(),
  containers: z.array(z.string()),
  updatedAt: z.number(),
  exitCode: z.number().int().optional(),
  error: ErrorDataSchema.optional(),
});
export type StateDoc = z.infer<typeof StateDocSchema>;

function corruptDoc(file: string, why: string): BottleError {
  return new BottleError('LOG_CORRUPT', `${file}: ${why}`, `Try: rm '${file}'   (the run's owner writes it again on its next step; the event log is the record)`);
}

/**
 * A lowdb SyncAdapter for one small JSON document, checked against `schema` both ways.
 * Writes go to a temp file, fsync, then rename, so a reader or a crash never sees half a
 * document. Unlike lowdb's own adapters, the temp name is unique, but there must still be a
 * single writer: the run's lock holder.
 */
export class JsonDocAdapter<T> implements SyncAdapter<T> {
  readonly file: string;
  readonly #schema: z.ZodType<T>;

  constructor(file: string, schema: z.ZodType<T>) {
    this.file = file;
    this.#schema = schema;
  }

  read(): T | null {
    const raw = readIfPresent(this.file);
    if (raw === null) return null;
    const parsed = parseChecked(this.#schema, raw.toString('utf8'));
    if (!parsed.ok) throw corruptDoc(this.file, parsed.reason);
    return parsed.value;
  }

  write(data: T): void {
    const result = this.#schema.safeParse(data);
    if (!result.success) {
      throw new BottleError('INTERNAL', `${this.file}: refusing to write an invalid document: ${zodReason(result.error)}`);
    }
    mkdirSync(dirname(this.file), { recursive: true, mode: 0o700 });
    writeFileAtomicSync(this.file, `${JSON.stringify(result.data, null, 2)}\n`);
  }
}

// Constructed explicitly: lowdb's node presets swap in a memory adapter under NODE_ENV=test.
function stateDb(home: string, identity: string): LowSync<StateDoc | null> {
  return new LowSync<StateDoc | null>(new JsonDocAdapter<StateDoc | null>(stateFile(home, identity), StateDocSchema), null);
}

/** Only the run's lock holder calls this. */
export function writeStateDoc(home: string, doc: StateDoc): void {
  const db = stateDb(home, doc.identity);
  db.data = doc;
  db.write();
}

/** The bottle's state document, or null when it has none (yet). */
export function readStateDoc(home: string, identity: string): StateDoc | null {
  const db = stateDb(home, identity);
  db.read();
  return db.data;
}

function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isDirectory() && isSegment(d.name))
      .map((d) => d.name);
  } catch (err) {
    if (errno(err) === 'ENOENT') return [];
    throw err;
  }
}

/**
 * Run ids of a bottle, oldest first, ordered by the time of each log's first record (run ids
 * carry no order of their own). A run without a first record yet is being started, so it
 * counts as the newest.
 */
export function listRuns(home: string, identity: string): string[] {
  const started = subdirs(runsDir(home, identity)).map((runId) => {
    let at = Number.POSITIVE_INFINITY;
    try {
      at = readFirstRecord(eventsFile(home, identity, runId), RecordSchema)?.at ?? at;
    } catch (err) {
      // Listing must not fail on one damaged log: `bottle replay` names the damage.
      if (!(err instanceof BottleError && err.code === 'LOG_CORRUPT')) throw err;
    }
    return { runId, at };
  });
  started.sort((a, b) => a.at - b.at || (a.runId < b.runId ? -1 : a.runId > b.runId ? 1 : 0));
  return started.map((r) => r.runId);
}

export interface BottleListing {
  identity: string;
  /** The current run: the state document's, else the newest run directory; null before any run. */
  runId: string | null;
  runs: string[];
  state: StateDoc | null;
  /** Why the state document could not be read, when it could not. */
  problem?: ErrorData;
}

/** Every bottle under `home` that has a directory, by identity. */
export function listBottles(home: string): BottleListing[] {
  return subdirs(bottlesDir(home))
    .sort()
    .map((identity) => {
      const runs = listRuns(home, identity);
      const listing: BottleListing = { identity, runId: runs[runs.length - 1] ?? null, runs, state: null };
      try {
        listing.state = readStateDoc(home, identity);
      } catch (err) {
        if (!(err instanceof BottleError && err.code === 'LOG_CORRUPT')) throw err;
        listing.problem = err.toData();
      }
      if (listing.state) listing.runId = listing.state.runId;
      return listing;
    });
}
