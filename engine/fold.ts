import { createActor, initialTransition, transition } from 'xstate';
import { BottleError } from '../config/errors.js';
import { bottleMachine, MACHINE_VERSION, type BottleInput } from '../machines/bottle.machine.js';
import type { LogRecord } from '../store/records.js';

/**
 * Folding a run's log through the machine with xstate's pure transition(): the state
 * every recorded event leads to, computed without running a single effect. Resume
 * starts from the last snapshot record; replay folds from the start and checks.
 */

export type Snapshot = ReturnType<typeof initialTransition<typeof bottleMachine>>[0];

export function runStarted(records: readonly LogRecord[], file: string) {
  const first = records[0];
  if (!first || first.kind !== 'run.started') {
    throw new BottleError('LOG_CORRUPT', `${file}: the first record is not run.started`, 'the run cannot be resumed; inspect the file or start a new run');
  }
  if (first.machineVersion !== MACHINE_VERSION) {
    throw new BottleError(
      'MACHINE_VERSION',
      `${file}: run was recorded by machine ${first.machineVersion}, this engine is ${MACHINE_VERSION}`,
      'finish or stop it with the bot-bottle version that started it',
    );
  }
  return first;
}

/** A persisted snapshot turned back into a snapshot transition() accepts; starts nothing. */
export function restoreSnapshot(persisted: unknown, input: BottleInput): Snapshot {
  return createActor(bottleMachine, { snapshot: persisted as never, input }).getSnapshot() as Snapshot;
}

export interface Folded {
  snapshot: Snapshot;
  input: BottleInput;
  /** Number of `event` records folded in. */
  eventCount: number;
}

/** Folds from the last snapshot record (or the start) through every later event. */
export function foldLog(records: readonly LogRecord[], file: string, opts: { fromSnapshot: boolean }): Folded {
  const started = runStarted(records, file);
  const input = started.input as BottleInput;
  let startIndex = 1;
  let snapshot: Snapshot | null = null;
  let eventCount = 0;
  if (opts.fromSnapshot) {
    for (let i = records.length - 1; i > 0; i--) {
      const r = records[i]!;
      if (r.kind === 'snapshot') {
        snapshot = restoreSnapshot(r.snapshot, input);
        eventCount = r.eventCount;
        startIndex = i + 1;
        break;
      }
    }
  }
  if (!snapshot) snapshot = initialTransition(bottleMachine, input)[0];
  for (let i = startIndex; i < records.length; i++) {
    const r = records[i]!;
    if (r.kind !== 'event') continue;
    snapshot = transition(bottleMachine, snapshot, r.event as never)[0];
    eventCount++;
  }
  return { snapshot, input, eventCount };
}
