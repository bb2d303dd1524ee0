import { createHash } from 'node:crypto';
import { type FSWatcher, readFileSync, watch } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { TOKEN_MIN_LENGTH, tokenProblem } from '../../config/token-rule.js';

/**
 * The routes' secrets, each read from its own file and re-read when the file changes, so a
 * token rotated on the host is used by the next request without a restart.
 *
 * A token file holds one secret; trailing CR/LF are trimmed. What is left must pass the one
 * token rule (config/token-rule.ts), the host's and the egress canary's too: printable ASCII
 * without spaces, 8 to 8192 characters. A token the canary could not recognise (one with a
 * space or a tab inside) is refused here like a missing one: its route answers 503, it is
 * never injected. Nothing here ever prints a token: messages name the file, and a token is
 * shown, at most, as its fingerprint.
 */

export const MIN_TOKEN_LENGTH = TOKEN_MIN_LENGTH;

/** The first 8 hex digits of sha256(token): enough to tell tokens apart in the audit, useless to an attacker. */
export function fingerprint(token: string): string {
  return createHash('sha256').update(token).digest('hex').slice(0, 8);
}

/** The token in a file's text, or why it is not one (never quoting the text). */
export function parseToken(text: string): { ok: true; token: string } | { ok: false; message: string } {
  const token = text.replace(/[\r\n]+$/, '');
  if (token === '') return { ok: false, message: 'the file is empty' };
  const problem = tokenProblem(token);
  return problem === undefined ? { ok: true, token } : { ok: false, message: `the token ${problem}` };
}

/** Why a token file cannot be used: the error's code and a message that names the file, not its content. */
function readProblem(file: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code ? `cannot read ${file} (${code})` : `cannot read ${file}`;
}

export type TokenState = { ok: true; token: string; fp: string } | { ok: false; error: string };

/** Reads a token file once, without keeping or watching it: to vet a file before a route uses it. */
export function readToken(file: string): TokenState {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return { ok: false, error: readProblem(file, err) };
  }
  const parsed = parseToken(text);
  return parsed.ok ? { ok: true, token: parsed.token, fp: fingerprint(parsed.token) } : { ok: false, error: `${file}: ${parsed.message}` };
}

export interface TokenEvents {
  /** A file's token was (re)loaded; `fp` is its fingerprint. Not called for the first load. */
  onChange?: (file: string, fp: string) => void;
  /** A file cannot be read or holds no valid token (once per failure streak). */
  onError?: (file: string, message: string) => void;
}

export interface TokenStoreOptions extends TokenEvents {
  /** Watch the files' folders with fs.watch; default true. */
  watch?: boolean;
  /** How often every file is looked at regardless of fs.watch (ms), which misses changes on some mounts; default 500, 0 for never. */
  pollMs?: number;
}

/** How many earlier tokens are still redacted from responses after a rotation. */
const REMEMBERED = 32;

export class TokenStore {
  private readonly state = new Map<string, TokenState>();
  private readonly lastText = new Map<string, string | undefined>();
  /** Every token loaded so far (bounded), current ones included: all are redacted from responses. */
  private readonly seen: string[] = [];
  private readonly watchers: FSWatcher[] = [];
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private poll: NodeJS.Timeout | undefined;
  private closed = false;

  /**
   * Reads every file once (use `problems()` to fail closed when one is unusable), then keeps
   * them fresh: fs.watch on their folders (a file renamed into place is seen) and a poll.
   */
  constructor(
    files: readonly string[],
    private readonly opts: TokenStoreOptions = {},
  ) {
    for (const f of new Set(files.map((x) => resolve(x)))) this.load(f, true);
    if (opts.watch !== false) this.watchFolders();
    const pollMs = opts.pollMs ?? 500;
    if (pollMs > 0) {
      this.poll = setInterval(() => {
        for (const f of this.state.keys()) this.load(f);
      }, pollMs);
      this.poll.unref();
    }
  }

  /** The token files kept fresh (absolute paths). */
  files(): string[] {
    return [...this.state.keys()];
  }

  /**
   * Replaces the set of files kept fresh (when the routes change): a file new to the store is
   * read now (see `problems()`), a file no longer listed is forgotten (its token is still
   * redacted from responses, as a rotated-out one is), and the folders watched follow.
   */
  setFiles(files: readonly string[]): void {
    if (this.closed) return;
    const next = new Set(files.map((x) => resolve(x)));
    for (const f of [...this.state.keys()]) {
      if (next.has(f)) continue;
      this.state.delete(f);
      this.lastText.delete(f);
      clearTimeout(this.timers.get(f));
      this.timers.delete(f);
    }
    for (const f of next) if (!this.state.has(f)) this.load(f, true);
    if (this.opts.watch !== false) {
      for (const w of this.watchers.splice(0)) w.close();
      this.watchFolders();
    }
  }

  /** Adds files to the set kept fresh; see `setFiles`. */
  add(files: readonly string[]): void {
    this.setFiles([...this.state.keys(), ...files]);
  }

  private watchFolders(): void {
    const byDir = new Map<string, Set<string>>();
    for (const f of this.state.keys()) {
      const names = byDir.get(dirname(f)) ?? new Set<string>();
      names.add(basename(f));
      byDir.set(dirname(f), names);
    }
    for (const [dir, names] of byDir) {
      try {
        const w = watch(dir, { persistent: false }, (_event, name) => {
          if (name !== null && !names.has(name)) return;
          // A burst of events (write, rename) becomes one read shortly after.
          for (const n of name === null ? names : [name]) {
            const file = join(dir, n);
            clearTimeout(this.timers.get(file));
            const t = setTimeout(() => {
              this.timers.delete(file);
              this.load(file);
            }, 20);
            t.unref();
            this.timers.set(file, t);
          }
        });
        w.on('error', () => w.close()); // the poll carries on
        this.watchers.push(w);
      } catch {
        // No folder to watch (yet): the poll alone.
      }
    }
  }

  /** The current token of `file`, or why there is none. */
  get(file: string): TokenState {
    return this.state.get(resolve(file)) ?? { ok: false, error: `${file} is not a token file of any route` };
  }

  /** Every token to redact from responses: the current ones and up to 32 earlier ones. */
  secrets(): string[] {
    const out = new Set<string>();
    for (const s of this.state.values()) if (s.ok) out.add(s.token);
    for (const t of this.seen) out.add(t);
    return [...out];
  }

  /** Files that have no usable token right now, with why. */
  problems(): { file: string; error: string }[] {
    const out: { file: string; error: string }[] = [];
    for (const [file, s] of this.state) if (!s.ok) out.push({ file, error: s.error });
    return out;
  }

  close(): void {
    this.closed = true;
    if (this.poll) clearInterval(this.poll);
    for (const t of this.timers.values()) clearTimeout(t);
    for (const w of this.watchers) w.close();
  }

  private load(file: string, first = false): void {
    if (this.closed || (!first && !this.state.has(file))) return;
    const previous = this.state.get(file);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      this.lastText.set(file, undefined);
      this.fail(file, previous, readProblem(file, err));
      return;
    }
    if (!first && text === this.lastText.get(file) && previous?.ok) return;
    this.lastText.set(file, text);
    const parsed = parseToken(text);
    if (!parsed.ok) {
      this.fail(file, previous, `${file}: ${parsed.message}`);
      return;
    }
    if (previous?.ok && previous.token === parsed.token) return;
    const fp = fingerprint(parsed.token);
    this.state.set(file, { ok: true, token: parsed.token, fp });
    if (!this.seen.includes(parsed.token)) {
      this.seen.push(parsed.token);
      if (this.seen.length > REMEMBERED) this.seen.shift();
    }
    if (!first) this.opts.onChange?.(file, fp);
  }

  private fail(file: string, previous: TokenState | undefined, error: string): void {
    // Fail closed: a route whose token file is gone or broken gets no token (its requests
    // are refused), rather than the last one, which may be the very token being revoked.
    this.state.set(file, { ok: false, error });
    if (previous === undefined || previous.ok || previous.error !== error) this.opts.onError?.(file, error);
  }
}
