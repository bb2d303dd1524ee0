import { createActor, initialTransition, transition } from 'xstate';
import { BottleError } from '../config/errors.js';
import { type BottleEvent, bottleMachine, type BottleInput, MACHINE_VERSION } from '../machines/bottle.machine.js';
import type { LogRecord } from '../store/records.js';

/**
 * Folding a run's log through the machine with xstate's pure transition(): the state every
 * recorded event leads to, computed without running a single effect. One fold serves every
 * reader: resume starts it from the last snapshot record, replay from the start with its
 * checks around each record, status and audit from the snapshot, and a CLI waiting on a run
 * feeds it only the records that are new since it last looked.
 */

export type Snapshot = ReturnType<typeof initialTransition<typeof bottleMachine>>[0];
type RunStarted = Extract<LogRecord, { kind: 'run.started' }>;

/** Why a log recorded by another machine cannot be folded by this one, and what to do. */
export function machineVersionError(file: string, recorded: string): BottleError {
  return new BottleError(
    'MACHINE_VERSION',
    `${file}: run was recorded by machine ${recorded}, this engine is ${MACHINE_VERSION}`,
    `finish, replay or stop it with the bot-bottle version that started it (the machine version is in its first line: head -1 '${file}')`,
  );
}

/** The run.started record at the head of a log, of this machine version. */
export function runStarted(records: readonly LogRecord[], file: string): RunStarted {
  const first = records[0];
  if (first?.kind !== 'run.started') {
    throw new BottleError('LOG_CORRUPT', `${file}: the first record is not run.started`, 'the run cannot be resumed; inspect the file or start a new run');
  }
  if (first.machineVersion !== MACHINE_VERSION) throw machineVersionError(file, first.machineVersion);
  return first;
}

/** A persisted snapshot turned back into a snapshot transition() accepts; starts nothing. */
export function restoreSnapshot(persisted: unknown, input: BottleInput): Snapshot {
  return createActor(bottleMachine, { snapshot: persisted as never, input }).getSnapshot() as Snapshot;
}

/** The machine's state after the records fed so far. */
export class LogFold {
  snapshot: Snapshot;
  /** Number of `event` records folded in (a snapshot record's count included). */
  eventCount: number;

  constructor(
    readonly input: BottleInput,
    from?: { snapshot: unknown; eventCount: number },
  ) {
    this.snapshot = from ? restoreSnapshot(from.snapshot, input) : initialTransition(bottleMachine, input)[0];
    this.eventCount = from?.eventCount ?? 0;
  }

  /** Folds one record: an `event` moves the machine; every other kind leaves it as it is. */
  feed(rec: LogRecord): Snapshot {
    if (rec.kind === 'event') {
      this.snapshot = transition(bottleMachine, this.snapshot, rec.event as BottleEvent)[0];
      this.eventCount++;
    }
    return this.snapshot;
  }
}

export interface Folded {
  snapshot: Snapshot;
  input: BottleInput;
  /** Number of `event` records folded in. */
  eventCount: number;
}

/** Folds from the last snapshot record (or the start) through every later event. */
export function foldLog(records: readonly LogRecord[], file: string, opts: { fromSnapshot: boolean }): Folded {
  const input = runStarted(records, file).input as BottleInput;
  let startIndex = 1;
  let fold: LogFold | null = null;
  if (opts.fromSnapshot) {
    for (let i = records.length - 1; i > 0; i--) {
      const r = records[i]!;
      if (r.kind === 'snapshot') {
        fold = new LogFold(input, r);
        startIndex = i + 1;
        break;
      }
    }
  }
  fold ??= new LogFold(input);
  for (let i = startIndex; i < records.length; i++) fold.feed(records[i]!);
  return { snapshot: fold.snapshot, input, eventCount: fold.eventCount };
}
