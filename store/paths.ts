import { join, resolve } from 'node:path';
import { BottleError } from '../config/errors.js';

/**
 * Where bot-bottle keeps its state: $BOTTLE_HOME, else $XDG_STATE_HOME/bot-bottle,
 * else ~/.local/state/bot-bottle. The XDG spec says a relative XDG_STATE_HOME is
 * invalid and must be ignored.
 */
export function bottleHome(env: Record<string, string | undefined>, homeDir: string): string {
  const explicit = env.BOTTLE_HOME;
  if (explicit) return resolve(explicit);
  const xdg = env.XDG_STATE_HOME;
  if (xdg?.startsWith('/')) return join(xdg, 'bot-bottle');
  return join(homeDir, '.local', 'state', 'bot-bottle');
}

/**
 * Identities and run ids become path segments, and `bottle status ID` takes them from the
 * user: refusing separators and dot-segments keeps every path inside the home.
 */
const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/** Whether `value` can name a bottle or a run (for listing directories without throwing). */
export function isSegment(value: string): boolean {
  return SEGMENT.test(value) && !value.includes('..');
}

function segment(kind: 'identity' | 'run id', value: string): string {
  if (!isSegment(value)) {
    throw new BottleError(
      'BOTTLE_NOT_FOUND',
      `not a valid bottle ${kind}: ${JSON.stringify(value)}`,
      'Try: bottle ls   (lists the identities and run ids that exist)',
    );
  }
  return value;
}

export const bottlesDir = (home: string): string => join(home, 'bottles');
export const bottleDir = (home: string, identity: string): string => join(bottlesDir(home), segment('identity', identity));
/** Held only while a run of the identity is being started: one launch at a time. */
export const launchLockFile = (home: string, identity: string): string => join(bottleDir(home, identity), 'launch.lock');
export const stateFile = (home: string, identity: string): string => join(bottleDir(home, identity), 'state.json');
export const perBottleDockerfile = (home: string, identity: string): string => join(bottleDir(home, identity), 'Dockerfile');
export const transcriptDir = (home: string, identity: string): string => join(bottleDir(home, identity), 'transcript');
export const queueDir = (home: string, identity: string): string => join(bottleDir(home, identity), 'queue');
export const auditDir = (home: string, identity: string): string => join(bottleDir(home, identity), 'audit');
export const egressAuditFile = (home: string, identity: string): string => join(auditDir(home, identity), 'egress.jsonl');
export const runsDir = (home: string, identity: string): string => join(bottleDir(home, identity), 'runs');
export const runDir = (home: string, identity: string, runId: string): string => join(runsDir(home, identity), segment('run id', runId));
export const eventsFile = (home: string, identity: string, runId: string): string => join(runDir(home, identity, runId), 'events.jsonl');
export const lockFile = (home: string, identity: string, runId: string): string => join(runDir(home, identity, runId), 'owner.lock');
export const commandsDir = (home: string, identity: string, runId: string): string => join(runDir(home, identity, runId), 'commands');
/** The agent's output of one run. */
export const logsFile = (home: string, identity: string, runId: string): string => join(runDir(home, identity, runId), 'agent.log');
