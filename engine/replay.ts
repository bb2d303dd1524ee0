import { MACHINE_VERSION, stateName, type BottleInput } from '../machines/bottle.machine.js';
import { EventLog } from '../store/event-log.js';
import type { LogRecord } from '../store/records.js';
import { LogFold, restoreSnapshot } from './fold.js';

/**
 * `bottle replay`: folds a run's history through the machine without running any
 * effect and checks it, reporting the first inconsistency with its line:
 *  - every line parses and has the schema of its kind; seq is gapless and increasing
 *    (a half-written last line is a crash, not an inconsistency);
 *  - the first record is run.started of this machine version;
 *  - every done/error event of an effect arrives while that effect is invoked, and a
 *    done event's output equals the journal's completed output for it;
 *  - every recorded state equals the folded state at that point, and every snapshot
 *    record equals the fold;
 *  - every effect intent has an outcome, or the owner died right after it (a takeover
 *    or the end of the log follows).
 */

export interface ReplayReport {
  ok: boolean;
  records: number;
  events: number;
  finalState: string | null;
  /** The first inconsistency, with its 1-based line in events.jsonl. */
  problem: ReplayProblem | null;
}

export interface ReplayProblem {
  line: number;
  message: string;
  /** MACHINE_VERSION: the log was recorded by another machine and cannot be judged by this one. */
  code?: 'REPLAY_MISMATCH' | 'MACHINE_VERSION';
}

const OUTCOME = /^xstate\.(done|error)\.actor\.(.+)$/;

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function replayFile(file: string): ReplayReport {
  // The one reader of the log: damage stops it at the first bad line, a torn last line is a crash.
  const read = EventLog.check(file);
  const records = read.records.map((rec, i) => ({ rec, line: i + 1 }));
  const report = replayRecords(records);
  if (read.problem && (report.ok || report.problem!.line > read.problem.line)) {
    const { line, notJson, reason } = read.problem;
    const message = notJson ? 'not valid JSON' : /^seq /.test(reason) ? `${reason} (lines swapped, lost or inserted)` : `not a valid record: ${reason}`;
    return { ...report, ok: false, records: records.length, problem: { line, message } };
  }
  return report;
}

export function replayRecords(records: { rec: LogRecord; line: number }[]): ReplayReport {
  let events = 0;
  let live: LogFold | null = null;
  const fail = (line: number, message: string, code: ReplayProblem['code'] = 'REPLAY_MISMATCH'): ReplayReport => ({
    ok: false,
    records: records.length,
    events,
    finalState: live ? stateName(live.snapshot.value) : null,
    problem: { line, message, code },
  });
  const first = records[0];
  if (first?.rec.kind !== 'run.started') return fail(first?.line ?? 1, 'the first record is not run.started');
  if (first.rec.machineVersion !== MACHINE_VERSION) {
    return fail(first.line, `recorded by machine ${first.rec.machineVersion}, this engine is ${MACHINE_VERSION}`, 'MACHINE_VERSION');
  }
  const input = first.rec.input as BottleInput;
  live = new LogFold(input);
  const completed = new Map<string, unknown>();
  const failed = new Set<string>();
  const lastKeyOfStep = new Map<string, string>();
  const openIntents = new Map<string, number>();

  for (const { rec, line } of records.slice(1)) {
    switch (rec.kind) {
      case 'effect.intent':
        if (completed.has(rec.key) || failed.has(rec.key)) return fail(line, `intent ${rec.key} after its outcome was recorded`);
        openIntents.set(rec.key, line);
        lastKeyOfStep.set(rec.step, rec.key);
        break;
      case 'effect.completed':
      case 'effect.failed':
        if (!openIntents.has(rec.key)) return fail(line, `outcome for ${rec.key} without an intent`);
        openIntents.delete(rec.key);
        if (rec.kind === 'effect.completed') completed.set(rec.key, rec.output);
        else failed.add(rec.key);
        break;
      case 'owner':
        // A takeover explains every intent left open by the owner that died.
        if (rec.takeover) openIntents.clear();
        break;
      case 'event': {
        const m = OUTCOME.exec(rec.event.type);
        if (m) {
          const step = m[2]!;
          if (!(step in live.snapshot.children)) {
            return fail(line, `${rec.event.type} arrived while ${step} was not running (state ${stateName(live.snapshot.value)})`);
          }
          const key = lastKeyOfStep.get(step);
          if (m[1] === 'done') {
            if (!key || !completed.has(key)) return fail(line, `${rec.event.type} without a completed effect in the journal`);
            const output = (rec.event as { output?: unknown }).output ?? null;
            if (!same(output, completed.get(key))) return fail(line, `output of ${step} differs from the journal's record of ${key}`);
          } else if (!key || !failed.has(key)) {
            return fail(line, `${rec.event.type} without a failed effect in the journal`);
          }
        }
        live.feed(rec);
        events++;
        break;
      }
      case 'state': {
        const folded = stateName(live.snapshot.value);
        if (folded !== rec.value || live.snapshot.status !== rec.status) {
          return fail(line, `recorded state ${rec.value} (${rec.status}) but the history folds to ${folded} (${live.snapshot.status})`);
        }
        break;
      }
      case 'snapshot': {
        const restored = restoreSnapshot(rec.snapshot, input);
        if (!same(restored.value, live.snapshot.value) || !same(restored.context, live.snapshot.context)) {
          return fail(line, 'snapshot record differs from the folded history');
        }
        if (rec.eventCount !== events) return fail(line, `snapshot says ${rec.eventCount} events, ${events} were folded`);
        break;
      }
      case 'command':
      case 'run.started':
        if (rec.kind === 'run.started') return fail(line, 'a second run.started record');
        break;
    }
  }
  // Open intents at the very end are a crash that nobody has resumed yet; a run that
  // ended cannot have any.
  if (live.snapshot.status === 'done' && openIntents.size > 0) {
    const [key, line] = [...openIntents.entries()][0]!;
    return fail(line, `intent ${key} never got an outcome`);
  }
  return { ok: true, records: records.length, events, finalState: stateName(live.snapshot.value), problem: null };
}
