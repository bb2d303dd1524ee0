import { type FSWatcher, readFileSync, watch } from 'node:fs';
import { basename, dirname } from 'node:path';
import { allowlistLines } from './policy.js';

/** Reads the allowlist file: its entries, one a line (blank lines and # comments dropped). Throws when unreadable. */
export function readAllowlistFile(path: string): string[] {
  return allowlistLines(readFileSync(path, 'utf8'));
}

export interface AllowlistWatcher {
  close(): void;
}

export interface WatchOptions {
  /** How often to look at the file regardless of fs.watch (ms); default 500. */
  pollMs?: number;
  /** Called when the file cannot be read (once per failure streak); the last good entries stay in force. */
  onError?: (err: Error) => void;
  /** Called when the file can be read again after a failure (its content may be unchanged). */
  onRecover?: () => void;
  /** The text the caller already applied, so an unchanged file is not reported again. */
  initialText?: string;
}

/**
 * Calls `onChange(entries)` whenever the content of `path` changes. Watches the folder (so a
 * new file renamed into place, the atomic way to replace it, is seen) and also polls every
 * `pollMs`, because fs.watch misses changes on some mounts. Only a changed content is
 * reported; a read failure is reported through `onError` and keeps the previous entries.
 */
export function watchAllowlistFile(path: string, onChange: (entries: string[]) => void, opts: WatchOptions = {}): AllowlistWatcher {
  let last = opts.initialText;
  let failing = false;
  let closed = false;
  const check = () => {
    if (closed) return;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if (!failing) opts.onError?.(err as Error);
      failing = true;
      return;
    }
    if (failing) {
      failing = false;
      opts.onRecover?.();
    }
    if (text === last) return;
    last = text;
    onChange(allowlistLines(text));
  };
  if (last === undefined) check();

  let watcher: FSWatcher | undefined;
  let pending: NodeJS.Timeout | undefined;
  try {
    const name = basename(path);
    watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
      if (file !== null && file !== name) return;
      // A burst of events (write, rename) becomes one read shortly after.
      clearTimeout(pending);
      pending = setTimeout(check, 20);
      pending.unref();
    });
    watcher.on('error', () => {
      watcher?.close(); // the poll below carries on
    });
  } catch {
    // No folder to watch (yet): polling alone.
  }
  const timer = setInterval(check, opts.pollMs ?? 500);
  timer.unref();
  return {
    close() {
      closed = true;
      clearInterval(timer);
      clearTimeout(pending);
      watcher?.close();
    },
  };
}
