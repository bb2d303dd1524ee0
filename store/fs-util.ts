import { closeSync, fsyncSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

export function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

/** The file's bytes, or null when it does not exist. */
export function readIfPresent(path: string): Buffer | null {
  try {
    return readFileSync(path);
  } catch (err) {
    if (errno(err) === 'ENOENT') return null;
    throw err;
  }
}

/** The directory's entry names, or none when it does not exist. */
export function readdirIfPresent(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (err) {
    if (errno(err) === 'ENOENT') return [];
    throw err;
  }
}

export function unlinkIfPresent(path: string): void {
  try {
    unlinkSync(path);
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
}

/** Makes a directory's entries (a created or renamed file) durable, not only the files' contents. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** writeSync may write less than asked (a full disk, a signal): loop until all of `buf` is out. */
export function writeAllSync(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

/** Creates `path` (failing if it exists) with `text`, on disk when this returns. */
export function writeNewFileSync(path: string, text: string, mode = 0o600): void {
  const fd = openSync(path, 'wx', mode);
  try {
    writeAllSync(fd, Buffer.from(text, 'utf8'));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A temp name beside `path` that readers skip: dot-prefixed, `.tmp` suffix, unique per call. */
export function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
}

/**
 * Replaces `path` atomically: readers see the old content or the new, never a mix, and after
 * a crash the new content is either entirely there or not at all.
 */
export function writeFileAtomicSync(path: string, text: string, mode = 0o600): void {
  const tmp = tempNameFor(path);
  try {
    writeNewFileSync(tmp, text, mode);
    renameSync(tmp, path);
  } finally {
    unlinkIfPresent(tmp);
  }
  fsyncDir(dirname(path));
}
