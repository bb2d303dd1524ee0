import { z } from 'zod';

/**
 * One zod schema per record kind of a run's log (runs/<runId>/events.jsonl).
 * `seq` is gapless from 1; `at` is the writer's clock in ms since the epoch.
 *
 * - run.started     first record: machine version and the machine's input (no secret values)
 * - event           an event the machine received, written before it is processed
 * - effect.intent / effect.completed / effect.failed
 *                   the effect journal, key = runId:step:attempt
 * - command         a CLI command taken from the mailbox (approve, deny, stop)
 * - state           the machine's state after processing an event (checked by replay)
 * - snapshot        a persisted machine snapshot, so resume folds only the tail
 * - owner           who took the run's lock (pid, host), written on start and takeover
 */
const base = { seq: z.number().int().positive(), at: z.number() };

/** `created`: what a failed step made before failing (teardown needs it after a resume). */
export const ErrorDataSchema = z.object({
  code: z.string(),
  message: z.string(),
  hint: z.string().optional(),
  created: z.array(z.object({ kind: z.string(), name: z.string(), role: z.string().optional() })).optional(),
});

export const RecordSchema = z.discriminatedUnion('kind', [
  z.object({ ...base, kind: z.literal('run.started'), runId: z.string(), identity: z.string(), machineVersion: z.string(), input: z.unknown() }),
  z.object({ ...base, kind: z.literal('event'), event: z.looseObject({ type: z.string() }) }),
  z.object({ ...base, kind: z.literal('effect.intent'), key: z.string(), step: z.string(), attempt: z.number().int().positive() }),
  z.object({ ...base, kind: z.literal('effect.completed'), key: z.string(), output: z.unknown() }),
  z.object({ ...base, kind: z.literal('effect.failed'), key: z.string(), error: ErrorDataSchema }),
  z.object({ ...base, kind: z.literal('command'), id: z.string(), command: z.looseObject({ type: z.string() }) }),
  z.object({ ...base, kind: z.literal('state'), value: z.string(), status: z.string() }),
  z.object({
    ...base,
    kind: z.literal('snapshot'),
    snapshot: z.unknown(),
    eventCount: z.number().int().nonnegative(),
    /** Effect outcomes consumed per step so far: attempt numbers stay unique when resume reads only the tail. */
    outcomes: z.record(z.string(), z.number().int().nonnegative()).optional(),
  }),
  z.object({ ...base, kind: z.literal('owner'), pid: z.number().int(), host: z.string(), takeover: z.boolean() }),
]);

export type LogRecord = z.infer<typeof RecordSchema>;
export type RecordKind = LogRecord['kind'];
/** A record before the log gives it seq and at. */
export type NewRecord = LogRecord extends infer R ? (R extends LogRecord ? Omit<R, 'seq' | 'at'> : never) : never;
