import type { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import tar from 'tar-stream';

/**
 * The one tar writer: build contexts and imports (streamed) and `putArchive` payloads
 * (one buffer), both over tar-stream, which writes ustar headers and falls back to a pax
 * header for names, link targets or sizes that do not fit.
 *
 * Owner, group and mtime default to 0, so the same entries always give the same bytes: a
 * build context carries exactly what the content hash covered and nothing of the host
 * (no user names, no timestamps). `putArchive` callers set them when the file in the
 * container needs an owner or a time.
 */

export type TarEntry = (
  | { type: 'file'; path: string; mode: number; body: Buffer }
  | { type: 'dir'; path: string; mode: number }
  | { type: 'symlink'; path: string; target: string }
) & { uid?: number; gid?: number; /** Seconds since the epoch. */ mtime?: number };

function header(entry: TarEntry): tar.Headers {
  const owner = { uid: entry.uid ?? 0, gid: entry.gid ?? 0, mtime: new Date(Math.max(0, Math.floor(entry.mtime ?? 0)) * 1000) };
  if (entry.type === 'file') return { name: entry.path, type: 'file', mode: entry.mode & 0o7777, size: entry.body.length, ...owner };
  // A trailing slash marks a directory for readers that look at the name only (as GNU tar writes it).
  if (entry.type === 'dir') return { name: entry.path.endsWith('/') ? entry.path : `${entry.path}/`, type: 'directory', mode: entry.mode & 0o7777, ...owner };
  return { name: entry.path, type: 'symlink', mode: 0o777, linkname: entry.target, ...owner };
}

function add(pack: tar.Pack, entry: TarEntry): Promise<void> {
  return new Promise((resolve, reject) => {
    // The callback fires once the entry is queued and the reader has room again (backpressure).
    pack.entry(header(entry), entry.type === 'file' ? entry.body : undefined, (err) => (err ? reject(err) : resolve()));
  });
}

/** Streams an archive of `entries`; bodies are produced lazily, one entry at a time. */
export function tarStream(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): Readable {
  const pack = tar.pack();
  (async () => {
    for await (const entry of entries) await add(pack, entry);
    pack.finalize();
  })().catch((err: unknown) => pack.destroy(err instanceof Error ? err : new Error(String(err))));
  return pack;
}

/** The whole archive of `entries` in memory. */
export function tarBuffer(entries: Iterable<TarEntry>): Promise<Buffer> {
  return buffer(tarStream(entries));
}

/** A regular file to put into a container, at an absolute path inside it. */
export interface TarFile {
  path: string;
  mode: number;
  body: Buffer;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch. */
  mtime?: number;
}

/**
 * The archive `putArchive` needs for `files`. The daemon extracts it at "/", so entry names
 * are container paths without the leading slash; missing parent directories are created by
 * the daemon. A path that is not a plain absolute file path is refused before anything is sent.
 */
export async function tarFiles(files: readonly TarFile[]): Promise<Buffer> {
  return tarBuffer(files.map((f) => ({ ...f, type: 'file' as const, path: containerFilePath(f.path) })));
}

function containerFilePath(path: string): string {
  if (!path.startsWith('/')) throw new RangeError(`container path must be absolute: ${path}`);
  const relative = path.replace(/^\/+/, '');
  if (relative === '' || relative.endsWith('/') || relative.split('/').some((part) => part === '..' || part === '.')) {
    throw new RangeError(`not a file path: ${path}`);
  }
  return relative;
}
