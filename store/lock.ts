import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, renameSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { z } from 'zod';
import { BottleError } from '../config/errors.js';
import { parseChecked } from './checked-json.js';
import { errno, readIfPresent, unlinkIfPresent, writeNewFileSync } from './fs-util.js';

/**
 * One owner per run: runs/<runId>/owner.lock names the process that drives the run.
 *
 * The lock file only ever appears with its full content: it is written under a temp name,
 * fsynced, and then hard-linked to its real name (link fails if the name exists, like
 * O_EXCL, but without the moment where the lock exists and is still empty).
 *
 * A lock whose owner died on this host is taken over. Takeover is the racy part: two
 * successors may both see the same stale lock. Each lock carries a random token; replacing
 * the lock with token T first requires creating `owner.lock.takeover-T-1` (link, exclusive),
 * so only one successor replaces a given stale lock. If that successor itself dies midway,
 * the next one creates `-2`, and so on: a higher number is only tried when the holder of the
 * lower one is dead, so at most one live process ever acts on a given stale lock.
 */

const LockOwnerSchema = z.object({
  pid: z.number().int().positive(),
  host: z.string(),
  /** /proc/<pid>/stat field 22: tells a reused pid from the original process. */
  startTime: z.string().nullable(),
  acquiredAt: z.number(),
  token: z.string(),
  /** Written by handOver(): the named process adopts this lock when it acquires. */
  handedOver: z.boolean().optional(),
});
export type LockOwner = z.infer<typeof LockOwnerSchema>;

export interface RunLock {
  readonly owner: LockOwner;
  /** The previous owner had died and this process took its lock over. */
  readonly takeover: boolean;
  /** Removes the lock if it is still ours; safe to call twice. */
  release(): void;
  /**
   * Makes another live process of this host the owner, with no moment where the run has
   * none: the lock is rewritten (temp + rename) to name `pid`, which then adopts it when it
   * acquires. Afterwards release() does nothing.
   */
  handOver(pid: number): void;
}

export interface LockClaimant {
  pid: number;
  host: string;
  /** ms since the epoch, recorded as acquiredAt; defaults to the system clock. */
  now?: number;
}

const MAX_ROUNDS = 8;

interface ProcStat {
  state: string;
  startTime: string;
}

/** Linux only; null where /proc does not exist or the process is gone. */
function procStat(pid: number): ProcStat | null {
  let raw: Buffer | null;
  try {
    raw = readIfPresent(`/proc/${pid}/stat`);
  } catch (err) {
    // The process exited between open and read.
    if (errno(err) === 'ESRCH') return null;
    throw err;
  }
  if (raw === null) return null;
  const text = raw.toString('utf8');
  // Field 2 is the command name in parentheses and may itself contain spaces and ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  const startTime = fields[22 - 3];
  return state !== undefined && startTime !== undefined ? { state, startTime } : null;
}

function isAlive(owner: LockOwner, host: string): boolean {
  // A process on another host cannot be probed from here: assume it lives.
  if (owner.host !== host) return true;
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if (errno(err) === 'ESRCH') return false;
    if (errno(err) !== 'EPERM') throw err;
  }
  const stat = procStat(owner.pid);
  if (stat === null) return true;
  if (stat.state === 'Z' || stat.state === 'X') return false;
  return owner.startTime === null || stat.startTime === owner.startTime;
}

function readOwnerFile(file: string): LockOwner | null {
  const raw = readIfPresent(file);
  if (raw === null) return null;
  const parsed = parseChecked(LockOwnerSchema, raw.toString('utf8'));
  if (!parsed.ok) throw unreadableLock(file, parsed.reason);
  return parsed.value;
}

function unreadableLock(file: string, why: string): BottleError {
  return new BottleError('RUN_LOCKED', `the run's lock ${file} is not one bottle wrote (${why})`, `Try: rm '${file}'   (only if no bottle process is driving this run)`);
}

function locked(file: string, owner: LockOwner): BottleError {
  return new BottleError(
    'RUN_LOCKED',
    `the run is driven by pid ${owner.pid} on ${owner.host} (lock ${file})`,
    `Try: bottle stop BOTTLE, or wait for pid ${owner.pid} to finish; once it is gone, bottle resume BOTTLE takes over`,
  );
}

/** Links `from` to `to`; false when `to` exists already. */
function linkExclusive(from: string, to: string): boolean {
  try {
    linkSync(from, to);
    return true;
  } catch (err) {
    if (errno(err) === 'EEXIST') return false;
    throw err;
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Replaces `stale` (the lock we saw at `file`) by the lock prepared at `mine`. False when
 * another successor is doing it or `file` no longer holds `stale`: the caller looks again.
 */
function takeOver(file: string, stale: LockOwner, mine: string, host: string): boolean {
  const tokens: string[] = [];
  for (let k = 1; ; k++) {
    const token = `${file}.takeover-${stale.token}-${k}`;
    tokens.push(token);
    if (linkExclusive(mine, token)) break;
    // A token that vanished was cleaned up after its holder replaced `stale` (or found it
    // gone): the check below sees that. One whose holder died is stepped over.
    const holder = readOwnerFile(token);
    if (holder !== null && isAlive(holder, host)) return false;
  }
  const ours = tokens[tokens.length - 1] as string;
  if (readOwnerFile(file)?.token !== stale.token) {
    unlinkIfPresent(ours);
    return false;
  }
  // We alone may act on `stale` now, and it is still in place: replace it without a gap.
  renameSync(mine, file);
  // The file never holds `stale` again, so a late successor that recreates one of these
  // tokens finds the check above false and backs off.
  for (const t of tokens) unlinkIfPresent(t);
  return true;
}

/**
 * Makes the caller the run's single owner. Throws RUN_LOCKED when a live process owns it;
 * takes the lock over (takeover: true) when its owner died on this host.
 */
export function acquireRunLock(file: string, claimant: LockClaimant): RunLock {
  const owner: LockOwner = {
    pid: claimant.pid,
    host: claimant.host,
    startTime: procStat(claimant.pid)?.startTime ?? null,
    acquiredAt: claimant.now ?? Date.now(),
    token: randomBytes(12).toString('base64url'),
  };
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const mine = `${file}.${owner.token}.tmp`;
  writeNewFileSync(mine, JSON.stringify(owner));
  try {
    for (let round = 0; round < MAX_ROUNDS; round++) {
      // Another successor is mid-takeover (microseconds of work): give it time to finish.
      if (round > 0) sleepSync(5 * round);
      if (linkExclusive(mine, file)) return heldLock(file, owner, false);
      const current = readOwnerFile(file);
      if (current === null) continue;
      // Handed over to this very process (same pid, same start): it is ours already. Only a
      // handed-over lock is adopted; a second acquire by the owner itself is still refused.
      if (current.handedOver === true && current.pid === owner.pid && current.host === owner.host && current.startTime !== null && current.startTime === owner.startTime) {
        return heldLock(file, current, false);
      }
      if (isAlive(current, claimant.host)) throw locked(file, current);
      if (takeOver(file, current, mine, claimant.host)) return heldLock(file, owner, true);
    }
    throw new BottleError('RUN_LOCKED', `could not take the run's lock ${file}: another process is taking it over`, 'Try: bottle status BOTTLE');
  } finally {
    unlinkIfPresent(mine);
  }
}

function heldLock(file: string, owner: LockOwner, takeover: boolean): RunLock {
  return {
    owner,
    takeover,
    release() {
      // Only ours: after a takeover (we were wrongly judged dead) the file is someone else's.
      if (readOwnerFile(file)?.token === owner.token) unlinkIfPresent(file);
    },
    handOver(pid: number) {
      if (readOwnerFile(file)?.token !== owner.token) {
        throw new BottleError('RUN_LOCKED', `cannot hand over ${file}: this process no longer owns it`);
      }
      const next: LockOwner = {
        pid,
        host: owner.host,
        startTime: procStat(pid)?.startTime ?? null,
        acquiredAt: Date.now(),
        token: randomBytes(12).toString('base64url'),
        handedOver: true,
      };
      const tmp = `${file}.${next.token}.tmp`;
      writeNewFileSync(tmp, JSON.stringify(next));
      renameSync(tmp, file);
    },
  };
}

/** Who owns the run, for `ls` and `status`; null when nobody holds the lock. */
export function readLockOwner(file: string, opts: { host?: string } = {}): { pid: number; host: string; alive: boolean } | null {
  const owner = readOwnerFile(file);
  if (owner === null) return null;
  return { pid: owner.pid, host: owner.host, alive: isAlive(owner, opts.host ?? hostname()) };
}
