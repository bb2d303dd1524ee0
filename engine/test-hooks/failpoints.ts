/**
 * TEST HOOK, not a feature. BOTTLE_FAULT=intent:STEP[:ATTEMPT] or completed:STEP[:ATTEMPT]
 * makes the run's owner kill itself with SIGKILL right after that journal record: the fault
 * tests (test/fault) crash the CLI at every effect boundary this way and then `bottle resume`.
 * BOTTLE_FAULT=event:TYPE[:N] kills it right after the Nth event of that type was written to
 * the log (e.g. event:canary.learned:2, the first token rotation after the launch's).
 * Unset, nothing here runs; the production path only asks `shouldCrash` when a point is set.
 */
import { BottleError } from '../../config/errors.js';

export interface FaultPoint {
  when: 'intent' | 'completed' | 'event';
  step: string;
  attempt?: number;
}

export function faultFromEnv(env: Record<string, string | undefined>): FaultPoint | undefined {
  const spec = env.BOTTLE_FAULT;
  if (!spec) return undefined;
  const [when, step, attempt] = spec.split(':');
  if ((when !== 'intent' && when !== 'completed' && when !== 'event') || !step) {
    throw new BottleError('USAGE', `BOTTLE_FAULT must be intent:STEP[:ATTEMPT], completed:STEP[:ATTEMPT] or event:TYPE[:N], got '${spec}'`);
  }
  return { when, step, ...(attempt ? { attempt: Number(attempt) } : {}) };
}

/** Kills this process when `point` names this journal record. */
export function crashIfAsked(point: FaultPoint | undefined, when: FaultPoint['when'], step: string, attempt: number): void {
  if (point && point.when === when && point.step === step && (point.attempt === undefined || point.attempt === attempt)) {
    process.kill(process.pid, 'SIGKILL');
  }
}
