import { type FSWatcher, lstatSync, mkdirSync, readFileSync, renameSync, watch } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { BottleError } from '../config/errors.js';
import { parseChecked, zodReason } from './checked-json.js';
import { errno, readdirIfPresent, unlinkIfPresent, writeFileAtomicSync } from './fs-util.js';

/**
 * A run's mailbox (runs/<runId>/commands/): how `bottle approve|deny|stop` reach the process
 * that owns the run. One file per command, `<time>-<id>.json`, published by rename so the
 * owner never reads half a command. The owner appends a command to the log and only then
 * acks (deletes) it; a crash in between shows the command again, so the owner skips ids the
 * log already holds.
 */

const ID = /^[A-Za-z0-9_-]{1,64}$/;
/** Zero-padded so that name order is time order. */
const NAME = /^(\d{15})-([A-Za-z0-9_-]{1,64})\.json$/;
const QUARANTINED = '.malformed';

/**
 * What every command file is at the least; the owner passes its own, stricter schema (the
 * engine's one command type) to pendingCommands, so a file that fails it is reported as
 * malformed and never handed on.
 */
export const MailboxCommandSchema = z.looseObject({ id: z.string().regex(ID), type: z.string().min(1) });
export type MailboxCommand = z.infer<typeof MailboxCommandSchema>;
type Envelope = { id: string; type: string };

export interface MalformedCommand {
  /** File name inside the mailbox, for quarantineCommand. */
  name: string;
  reason: string;
}

export interface PendingCommands<C extends Envelope = MailboxCommand> {
  commands: C[];
  /** Files that are not commands: reported so the owner can log and quarantine them. */
  malformed: MalformedCommand[];
}

/** Publishes `cmd` in the mailbox `dir` and returns its path. */
export function postCommand(dir: string, cmd: MailboxCommand, opts: { now?: number } = {}): string {
  // Never post what pendingCommands would report as malformed; the id becomes part of a file name.
  const checked = MailboxCommandSchema.safeParse(cmd);
  if (!checked.success) throw new BottleError('INTERNAL', `not a mailbox command: ${zodReason(checked.error)}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const time = String(opts.now ?? Date.now()).padStart(15, '0');
  const path = join(dir, `${time}-${cmd.id}.json`);
  writeFileAtomicSync(path, `${JSON.stringify(cmd)}\n`);
  return path;
}

/** Temp files (dot-prefixed) are someone's post in progress; quarantined files were reported already. */
function entries(dir: string): string[] {
  return readdirIfPresent(dir).filter((n) => !n.startsWith('.') && !n.endsWith(QUARANTINED)).sort();
}

function parseCommand<C extends Envelope>(dir: string, name: string, id: string, schema: z.ZodType<C>): C | string {
  const path = join(dir, name);
  // Only a regular file can be a command: reading a folder throws (out of the owner's drain,
  // which runs from a timer), and reading a FIFO would block the owner.
  if (!lstatSync(path).isFile()) return 'not a regular file';
  const text = readFileSync(path, 'utf8');
  const envelope = parseChecked(MailboxCommandSchema, text);
  if (!envelope.ok) return envelope.reason;
  if (envelope.value.id !== id) return `its id ${JSON.stringify(envelope.value.id)} does not match the file name`;
  const parsed = parseChecked(schema, text);
  return parsed.ok ? parsed.value : parsed.reason;
}

/** Commands waiting in `dir`, oldest first, each checked against `schema` (by default only the envelope). */
export function pendingCommands(dir: string): PendingCommands;
export function pendingCommands<C extends Envelope>(dir: string, schema: z.ZodType<C>): PendingCommands<C>;
export function pendingCommands(dir: string, schema: z.ZodType<Envelope> = MailboxCommandSchema): PendingCommands<Envelope> {
  const out: PendingCommands<Envelope> = { commands: [], malformed: [] };
  for (const name of entries(dir)) {
    const m = NAME.exec(name);
    if (!m) {
      out.malformed.push({ name, reason: 'not a command file name (<time>-<id>.json)' });
      continue;
    }
    let parsed: Envelope | string;
    try {
      parsed = parseCommand(dir, name, m[2] as string, schema);
    } catch (err) {
      // Acked by a concurrent drain between listing and reading: nothing pending there any more.
      if (errno(err) === 'ENOENT') continue;
      throw err;
    }
    if (typeof parsed === 'string') out.malformed.push({ name, reason: parsed });
    else out.commands.push(parsed);
  }
  return out;
}

/** Removes command `id` once the owner has recorded it; acking twice is harmless. */
export function ackCommand(dir: string, id: string): void {
  for (const name of entries(dir)) {
    if (NAME.exec(name)?.[2] === id) unlinkIfPresent(join(dir, name));
  }
}

/** Moves a malformed file aside (kept for inspection, no longer reported); returns its new path. */
export function quarantineCommand(dir: string, name: string): string {
  // Never onto an entry quarantined earlier under the same name: rename would replace that
  // file (it is kept too), or throw out of the owner's drain for a folder.
  let to = join(dir, `${name}${QUARANTINED}`);
  for (let i = 2; present(to); i++) to = join(dir, `${name}.${i}${QUARANTINED}`);
  renameSync(join(dir, name), to);
  return to;
}

function present(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch (err) {
    if (errno(err) === 'ENOENT') return false;
    throw err;
  }
}

/**
 * Calls `onChange` whenever the set of files waiting in `dir` changes and is not empty,
 * including once at start when commands are already waiting. fs.watch gives the latency;
 * the poll covers what it misses (network filesystems, inotify limits, a watcher error).
 * Returns stop(). Timers are unref'd: watching alone does not keep the process alive.
 */
export function watchMailbox(dir: string, onChange: () => void, opts: { pollMs?: number } = {}): () => void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  let stopped = false;
  let seen = '';
  const check = (): void => {
    if (stopped) return;
    const names = entries(dir);
    const key = names.join('\n');
    if (key === seen) return;
    seen = key;
    if (names.length > 0) onChange();
  };

  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, { persistent: false }, check);
    watcher.on('error', () => {
      // The poll below keeps the mailbox served.
      watcher?.close();
      watcher = undefined;
    });
  } catch (err) {
    // inotify watch limit reached: poll only.
    if (errno(err) !== 'ENOSPC' && errno(err) !== 'EMFILE') throw err;
    watcher = undefined;
  }
  const timer = setInterval(check, opts.pollMs ?? 250);
  timer.unref();
  setImmediate(check);

  return () => {
    stopped = true;
    clearInterval(timer);
    watcher?.close();
  };
}
