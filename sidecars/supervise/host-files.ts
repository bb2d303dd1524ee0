/**
 * The files the host puts into this container (through the Docker archive API, so they may
 * appear, be replaced, be half written or vanish at any time):
 *
 *   current.json    {"dockerfile": string|null, "allowlist": string[], "routes": [{"path",
 *                   "upstream", "inject": {"header", "format"}, "roles": []}]}
 *   decisions.json  {"decisions": [{"id", "status": "approved"|"denied"|"failed", "reason"?,
 *                   "error"?, "at"?}]}
 *
 * Each is re-read when its stat signature (inode, size, mtime, ctime) changes, checked on each
 * use; a file that cannot be read or does not parse leaves the last good content in force.
 */
import { readFileSync, statSync } from 'node:fs';
import { z } from 'zod';

/** Larger files are refused (a Dockerfile is at most 256 KiB; 100 decisions are small). */
const MAX_FILE_BYTES = 4 * 1024 * 1024;

export type Parsed<T> = { ok: true; value: T } | { ok: false; message: string };

export interface WatchedFileHooks<T> {
  /** A new good content is in force. */
  onLoad?: (value: T) => void;
  /** The file changed but cannot be used; the last good content stays. Called once per change. */
  onError?: (message: string) => void;
}

/** A JSON file read again whenever it changes, keeping its last good content. */
export class WatchedJsonFile<T> {
  private signature: string | undefined;
  private good: T | undefined;
  private problem: string | undefined;

  constructor(
    readonly file: string,
    private readonly parse: (doc: unknown) => Parsed<T>,
    private readonly hooks: WatchedFileHooks<T> = {},
  ) {}

  /** The last good content (after looking for a change), or undefined when there never was one. */
  value(): T | undefined {
    this.refresh();
    return this.good;
  }

  /** The last good content, without looking at the file. */
  last(): T | undefined {
    return this.good;
  }

  /** Why the file on disk is not the content in force; undefined when it is. */
  error(): string | undefined {
    this.refresh();
    return this.problem;
  }

  refresh(): void {
    const result = this.read();
    if (result === 'unchanged') return;
    if (result.ok) {
      this.good = result.value;
      this.problem = undefined;
      this.hooks.onLoad?.(result.value);
    } else {
      this.problem = result.message;
      this.hooks.onError?.(result.message);
    }
  }

  /** The file's content when its signature changed since the last look. */
  private read(): Parsed<T> | 'unchanged' {
    const fail = (message: string): Parsed<T> => ({ ok: false, message });
    try {
      const st = statSync(this.file);
      const signature = `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
      if (signature === this.signature) return 'unchanged';
      this.signature = signature;
      if (!st.isFile()) return fail('is not a regular file');
      if (st.size > MAX_FILE_BYTES) return fail(`is ${st.size} bytes; at most ${MAX_FILE_BYTES}`);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      if (this.signature === code) return 'unchanged';
      this.signature = code;
      return fail(code === 'ENOENT' ? 'does not exist' : `cannot be read (${code})`);
    }
    let doc: unknown;
    try {
      doc = JSON.parse(readFileSync(this.file, 'utf8'));
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      return fail(e.code ? `cannot be read (${e.code})` : `is not valid JSON (${e.message})`);
    }
    return this.parse(doc);
  }
}

// ---- current.json -----------------------------------------------------------------------

const CurrentRouteSchema = z.looseObject({
  path: z.string(),
  upstream: z.string(),
  inject: z.looseObject({ header: z.string(), format: z.string() }),
  roles: z.array(z.string()).optional(),
});

const CurrentSchema = z.looseObject({
  dockerfile: z.string().nullable(),
  allowlist: z.array(z.string()),
  routes: z.array(CurrentRouteSchema),
});

/** The bottle's current Dockerfile, allowlist and routes, as the host wrote them (no secrets). */
export type CurrentState = z.output<typeof CurrentSchema>;

export function parseCurrent(doc: unknown): Parsed<CurrentState> {
  const parsed = CurrentSchema.safeParse(doc);
  if (parsed.success) return { ok: true, value: parsed.data };
  return { ok: false, message: `does not hold the expected fields: ${describeIssues(parsed.error.issues)}` };
}

// ---- decisions.json ---------------------------------------------------------------------

export const DECISION_STATUSES = ['approved', 'denied', 'failed'] as const;
export type DecisionStatus = (typeof DECISION_STATUSES)[number];

export interface Decision {
  id: string;
  status: DecisionStatus;
  /** The human's reason (a denial's, say). */
  reason?: string;
  /** Why applying an approved change failed. */
  error?: string;
  at?: string;
}

const DecisionSchema = z.looseObject({
  id: z.string().min(1),
  status: z.enum(DECISION_STATUSES),
  reason: z.string().nullish(),
  // A plain message; an {code, message} error is accepted too.
  error: z.union([z.string(), z.looseObject({ code: z.string().optional(), message: z.string() })]).nullish(),
  at: z.union([z.string(), z.number()]).nullish(),
});

export interface Decisions {
  /** The last decision for each proposal id. */
  byId: Map<string, Decision>;
  /** Entries that were not understood (an unknown status, say) and were left out. */
  skipped: number;
}

/**
 * The file must be `{"decisions": [...]}`; an entry that is not understood is left out (that
 * proposal stays pending) instead of making the whole file unusable. A later entry for the
 * same id replaces an earlier one.
 */
export function parseDecisions(doc: unknown): Parsed<Decisions> {
  const outer = z.looseObject({ decisions: z.array(z.unknown()) }).safeParse(doc);
  if (!outer.success) return { ok: false, message: `does not hold the expected fields: ${describeIssues(outer.error.issues)}` };
  const byId = new Map<string, Decision>();
  let skipped = 0;
  for (const entry of outer.data.decisions) {
    const d = DecisionSchema.safeParse(entry);
    if (!d.success) {
      skipped += 1;
      continue;
    }
    const { id, status, reason, error, at } = d.data;
    const decision: Decision = { id, status };
    if (typeof reason === 'string') decision.reason = reason;
    if (typeof error === 'string') decision.error = error;
    else if (error) decision.error = error.code ? `${error.code}: ${error.message}` : error.message;
    if (typeof at === 'string') decision.at = at;
    else if (typeof at === 'number' && Math.abs(at) <= 8.64e15) decision.at = new Date(at).toISOString();
    byId.set(id, decision);
  }
  return { ok: true, value: { byId, skipped } };
}

function describeIssues(issues: readonly z.core.$ZodIssue[]): string {
  return issues
    .slice(0, 5)
    .map((i) => `${i.path.length > 0 ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}
