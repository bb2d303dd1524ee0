import { type FSWatcher, readFileSync, watch } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { parseRoutes, type Route } from './routes.js';
import { readToken } from './tokens.js';

/**
 * Keeps a running cred-proxy's routes in step with its routes file. The engine adds a route
 * to a running bottle by writing the route's token file into the container, then a whole new
 * routes file (through Docker's archive API, which removes the old file and writes the new one
 * in place, so a read can catch it missing or half written).
 *
 * The file is watched (fs.watch on its folder, plus a poll every 500 ms, which catches what
 * fs.watch misses on some mounts). When its text differs from the text in force:
 *  - it is parsed with the same rules as at start; it must declare a route; every token file
 *    new to the proxy must hold a usable token; every new CA bundle must load;
 *  - if so, the new routes are put in force in one swap (`proxy.setRoutes`), the token store
 *    follows the new set of token files, and `onReload` is told;
 *  - if not, the routes in force stay, and `onReject` is told why, once per bad version of the
 *    file: only after the same bad text has been read twice `settleMs` apart (a file caught
 *    mid-write is not reported when the finished one is good). A version rejected because of a
 *    token or CA file is tried again at each poll, so a token that lands after the routes file
 *    still brings its route in.
 */

export interface RoutesTarget {
  routes(): readonly Route[];
  /** Puts the routes in force; throws, changing nothing, when one cannot be served. */
  setRoutes(routes: readonly Route[]): void;
}

export interface TokenFiles {
  /** The token files kept fresh now. */
  files(): string[];
  /** Replaces the token files kept fresh. */
  setFiles(files: readonly string[]): void;
}

export interface RoutesReloaderOptions {
  /** The routes file. */
  file: string;
  /** The text of the routes file the proxy started with (a read of the same text changes nothing). */
  initialText: string;
  proxy: RoutesTarget;
  tokens: TokenFiles;
  /** New routes are in force; `added` and `removed` compare route paths with the previous routes. */
  onReload?: (routes: readonly Route[], change: { added: Route[]; removed: Route[] }) => void;
  /** A version of the routes file was refused; the routes in force stay. Never holds a token. */
  onReject?: (error: string) => void;
  /** Watch the file's folder with fs.watch; default true. */
  watch?: boolean;
  /** How often the file is read regardless of fs.watch (ms); default 500, 0 for never. */
  pollMs?: number;
  /** How long a bad version must stay before it is reported (ms); default 100. */
  settleMs?: number;
}

type Outcome = { ok: true } | { ok: false; error: string; retry: boolean };

export class RoutesReloader {
  private readonly file: string;
  /** The text in force. */
  private applied: string;
  /** A bad version seen once, waiting to be seen again before it is reported. */
  private pending: string | undefined;
  /** The bad version last reported, and why. */
  private rejected: { key: string; error: string; retry: boolean } | undefined;
  private watcher: FSWatcher | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();
  private poll: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly opts: RoutesReloaderOptions) {
    this.file = resolve(opts.file);
    this.applied = opts.initialText;
    if (opts.watch !== false) this.watchFolder();
    const pollMs = opts.pollMs ?? 500;
    if (pollMs > 0) {
      this.poll = setInterval(() => this.check(), pollMs);
      this.poll.unref();
    }
  }

  private watchFolder(): void {
    const name = basename(this.file);
    try {
      const w = watch(dirname(this.file), { persistent: false }, (_event, changed) => {
        if (changed !== null && changed !== name) return;
        // A burst of events (remove, create, write) becomes one read shortly after.
        this.later(20);
      });
      w.on('error', () => w.close()); // the poll carries on
      this.watcher = w;
    } catch {
      // No folder to watch: the poll alone.
    }
  }

  private later(ms: number): void {
    if (this.closed) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      this.check();
    }, ms);
    t.unref();
    this.timers.add(t);
  }

  /** Reads the routes file and acts on a change (called by the watcher and the poll; callable directly). */
  check(): void {
    if (this.closed) return;
    let text: string | undefined;
    let readError = '';
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      readError = `cannot read the routes file ${this.file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`;
    }
    if (text === this.applied) {
      this.pending = undefined;
      this.rejected = undefined;
      return;
    }
    const key = text ?? `\0${readError}`;
    if (this.rejected?.key === key && !this.rejected.retry) return;
    const outcome: Outcome = text === undefined ? { ok: false, error: readError, retry: false } : this.apply(text);
    if (outcome.ok) {
      this.applied = text!;
      this.pending = undefined;
      this.rejected = undefined;
      return;
    }
    if (this.rejected?.key === key && this.rejected.error === outcome.error) return; // reported already
    if (this.pending !== key) {
      this.pending = key;
      this.later(this.opts.settleMs ?? 100);
      return;
    }
    this.pending = undefined;
    this.rejected = { key, error: outcome.error, retry: outcome.retry };
    this.opts.onReject?.(outcome.error);
  }

  /** Puts the routes of `text` in force, or says why not (changing nothing). */
  private apply(text: string): Outcome {
    const parsed = parseRoutes(text, dirname(this.file));
    if (!parsed.ok) return { ok: false, error: `invalid routes file ${this.file}: ${parsed.errors.join('; ')}`, retry: false };
    const routes = parsed.routes;
    if (routes.length === 0) return { ok: false, error: `the routes file ${this.file} declares no route`, retry: false };

    const known = new Set(this.opts.tokens.files());
    const problems: string[] = [];
    for (const r of routes) {
      if (known.has(resolve(r.tokenFile))) continue;
      const state = readToken(r.tokenFile);
      if (!state.ok) problems.push(`route ${r.path}: ${state.error}`);
    }
    if (problems.length > 0) return { ok: false, error: `a new route has no usable token: ${problems.join('; ')}`, retry: true };

    const before = this.opts.proxy.routes();
    try {
      this.opts.proxy.setRoutes(routes);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      return { ok: false, error: `cannot load an upstream CA bundle: ${e.code ? `${e.path ?? ''} (${e.code})` : e.message}`, retry: true };
    }
    this.opts.tokens.setFiles(routes.map((r) => r.tokenFile));

    const paths = (list: readonly Route[]) => new Set(list.map((r) => r.path));
    const was = paths(before);
    const now = paths(routes);
    this.opts.onReload?.(routes, { added: routes.filter((r) => !was.has(r.path)), removed: before.filter((r) => !now.has(r.path)) });
    return { ok: true };
  }

  close(): void {
    this.closed = true;
    if (this.poll) clearInterval(this.poll);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.watcher?.close();
  }
}
