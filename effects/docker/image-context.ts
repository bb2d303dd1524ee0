import { createHash } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { BottleError } from '../../config/errors.js';
import type { ImageSpec } from '../../machines/ports.js';
import { dockerignoreMatcher, type IgnoreMatcher, ignoreMatcher, unionMatcher } from './image-ignore.js';
import { type TarEntry, tarStream } from './tar.js';

/**
 * Build contexts: what goes into the tar sent to the daemon, and the content hash
 * that names the image. Both walk the same entry list, so an image tag always
 * describes exactly the bytes it was built from.
 *
 * Modes are normalised as git does (0755 when any execute bit is set, else 0644;
 * directories 0755) so a tag does not depend on the host's umask. Symlinks are
 * archived as links, never followed: a link in a project that points outside it
 * must not pull host files into an image.
 */

/**
 * One piece of a context: a host directory, one host file, or literal content, placed at `at`.
 * A directory leaves out what `ignore` (gitignore lines, as `.bottleignore`) or `dockerignore`
 * (the text of a `.dockerignore`, Docker's rules) excludes.
 */
export type ContextSource =
  | { dir: string; at?: string; ignore?: readonly string[]; dockerignore?: string }
  | { file: string; at: string; mode?: number }
  | { content: string | Buffer; at: string; mode?: number };

/** The port's two context forms, plus a list of sources (several host folders in one context). */
export type BuildContext = ImageSpec['context'] | { sources: readonly ContextSource[] };

/** ImageSpec with the wider context this adapter accepts. */
export interface BuildSpec extends Omit<ImageSpec, 'context'> {
  context: BuildContext;
}

/** The names the builder itself puts at the root of every context. */
export const CONTEXT_DOCKERFILE = 'Dockerfile.bot-bottle';
export const CONTEXT_DOCKERIGNORE = '.dockerignore';

export type ContextEntry =
  | { type: 'file'; path: string; mode: number; from: { host: string } | { content: Buffer } }
  | { type: 'dir'; path: string; mode: number }
  | { type: 'symlink'; path: string; target: string };

export function contextSources(context: BuildContext): readonly ContextSource[] {
  if ('sources' in context) return context.sources;
  if ('dir' in context) return [context.ignore ? { dir: context.dir, ignore: context.ignore } : { dir: context.dir }];
  return Object.entries(context.files).map(([at, content]) => ({ content, at }));
}

function normaliseMode(mode: number): number {
  return mode & 0o111 ? 0o755 : 0o644;
}

function cleanAt(at: string | undefined): string {
  const p = path.posix.normalize((at ?? '').replace(/\\/g, '/')).replace(/^\/+|\/+$/g, '');
  if (p === '.' || p === '') return '';
  if (p === '..' || p.startsWith('../')) {
    throw new BottleError('BUILD_FAILED', `build context path '${at}' leaves the context`, 'use a path inside the context');
  }
  return p;
}

function join(prefix: string, name: string): string {
  return prefix === '' ? name : `${prefix}/${name}`;
}

function unreadable(what: string, err: unknown): BottleError {
  const reason = err instanceof Error ? err.message : String(err);
  return new BottleError('BUILD_FAILED', `cannot read ${what} for the image build context: ${reason}`, `check that ${what} exists and is readable`);
}

function sourceMatcher(source: { ignore?: readonly string[]; dockerignore?: string }): IgnoreMatcher {
  const matchers = [ignoreMatcher(source.ignore ?? [])];
  if (source.dockerignore !== undefined) matchers.push(dockerignoreMatcher(source.dockerignore));
  return unionMatcher(matchers);
}

async function walkDir(root: string, prefix: string, matcher: IgnoreMatcher, out: ContextEntry[]): Promise<void> {
  const visit = async (hostDir: string, rel: string): Promise<void> => {
    let dirents: Dirent[];
    try {
      dirents = await readdir(hostDir, { withFileTypes: true });
    } catch (err) {
      throw unreadable(hostDir, err);
    }
    for (const d of dirents) {
      const relPath = rel === '' ? d.name : `${rel}/${d.name}`;
      const hostPath = path.join(hostDir, d.name);
      if (d.isDirectory()) {
        // An excluded folder is entered only when a rule could bring back something below it
        // (a .dockerignore `!build/keep.txt`); its own entry then comes from what is kept inside.
        const ignored = matcher.ignores(relPath, true);
        if (ignored && !matcher.mayReinclude(relPath)) continue;
        if (!ignored) out.push({ type: 'dir', path: join(prefix, relPath), mode: 0o755 });
        await visit(hostPath, relPath);
      } else if (d.isFile()) {
        if (matcher.ignores(relPath, false)) continue;
        const st = await lstat(hostPath).catch((err: unknown) => {
          throw unreadable(hostPath, err);
        });
        out.push({ type: 'file', path: join(prefix, relPath), mode: normaliseMode(st.mode), from: { host: hostPath } });
      } else if (d.isSymbolicLink()) {
        if (matcher.ignores(relPath, false)) continue;
        const target = await readlink(hostPath).catch((err: unknown) => {
          throw unreadable(hostPath, err);
        });
        out.push({ type: 'symlink', path: join(prefix, relPath), target });
      }
      // Sockets, FIFOs and devices have no place in an image build; they are skipped.
    }
  };
  const st = await lstat(root).catch((err: unknown) => {
    throw unreadable(root, err);
  });
  if (!st.isDirectory()) throw new BottleError('BUILD_FAILED', `build context ${root} is not a directory`, 'pass a directory');
  await visit(root, '');
}

function addParents(entries: ContextEntry[], p: string, seen: Set<string>): void {
  const parts = p.split('/');
  for (let i = 1; i < parts.length; i++) {
    const dir = parts.slice(0, i).join('/');
    if (!seen.has(dir)) {
      seen.add(dir);
      entries.push({ type: 'dir', path: dir, mode: 0o755 });
    }
  }
}

/**
 * Lists every entry of a context, sorted by path, with the builder's Dockerfile and
 * .dockerignore at the root. A `.dockerignore` coming from a source is dropped (ignore
 * rules are applied here, through `ignore` lists); two sources claiming one path is an error.
 */
export async function collectContext(context: BuildContext, dockerfile: string): Promise<ContextEntry[]> {
  const raw: ContextEntry[] = [];
  for (const source of contextSources(context)) {
    const at = cleanAt(source.at);
    if ('dir' in source) {
      if (at !== '') raw.push({ type: 'dir', path: at, mode: 0o755 });
      await walkDir(source.dir, at, sourceMatcher(source), raw);
    } else if ('file' in source) {
      const st = await lstat(source.file).catch((err: unknown) => {
        throw unreadable(source.file, err);
      });
      if (!st.isFile()) throw new BottleError('BUILD_FAILED', `build context file ${source.file} is not a regular file`, 'pass a regular file');
      raw.push({ type: 'file', path: at, mode: normaliseMode(source.mode ?? st.mode), from: { host: source.file } });
    } else {
      const content = typeof source.content === 'string' ? Buffer.from(source.content, 'utf8') : source.content;
      raw.push({ type: 'file', path: at, mode: normaliseMode(source.mode ?? 0o644), from: { content } });
    }
  }

  const entries: ContextEntry[] = [];
  const byPath = new Map<string, ContextEntry>();
  const dirs = new Set<string>();
  for (const entry of raw) {
    if (entry.path === CONTEXT_DOCKERIGNORE) continue;
    if (entry.path === '' || entry.path === CONTEXT_DOCKERFILE) {
      throw new BottleError('BUILD_FAILED', `build context entry '${entry.path}' clashes with a name the builder reserves`, 'rename the file');
    }
    const prior = byPath.get(entry.path);
    if (prior) {
      if (prior.type === 'dir' && entry.type === 'dir') continue;
      throw new BottleError('BUILD_FAILED', `two build context sources both provide '${entry.path}'`, 'give each source its own place in the context');
    }
    byPath.set(entry.path, entry);
    if (entry.type === 'dir') dirs.add(entry.path);
    addParents(entries, entry.path, dirs);
    entries.push(entry);
  }
  entries.push(
    { type: 'file', path: CONTEXT_DOCKERFILE, mode: 0o644, from: { content: Buffer.from(dockerfile, 'utf8') } },
    // The daemon removes the files listed here from what COPY/ADD can see (it still reads the Dockerfile).
    { type: 'file', path: CONTEXT_DOCKERIGNORE, mode: 0o644, from: { content: Buffer.from(`${CONTEXT_DOCKERFILE}\n${CONTEXT_DOCKERIGNORE}\n`) } },
  );
  entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return entries;
}

async function body(entry: ContextEntry & { type: 'file' }): Promise<Buffer> {
  if ('content' in entry.from) return entry.from.content;
  const host = entry.from.host;
  return readFile(host).catch((err: unknown) => {
    throw unreadable(host, err);
  });
}

export interface ContentInputs {
  dockerfile: string;
  buildArgs?: Record<string, string>;
  /** Anything else the image depends on that is not in the context (e.g. a parent image id). */
  extra?: readonly string[];
}

/** Digest of the Dockerfile, the build args, `extra` and every entry (path, type, mode, content). */
export async function contextDigest(entries: readonly ContextEntry[], inputs: ContentInputs): Promise<string> {
  const hash = createHash('sha256');
  const field = (s: string | Buffer) => {
    const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    hash.update(`${b.length}:`);
    hash.update(b);
  };
  field('bot-bottle-image-v1');
  field(inputs.dockerfile);
  for (const [k, v] of Object.entries(inputs.buildArgs ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    field(`arg:${k}`);
    field(v);
  }
  for (const e of inputs.extra ?? []) field(`extra:${e}`);
  for (const entry of entries) {
    if (entry.type === 'file') {
      field(`file:${entry.mode.toString(8)}:${entry.path}`);
      field(await body(entry));
    } else if (entry.type === 'dir') {
      field(`dir:${entry.mode.toString(8)}:${entry.path}`);
    } else {
      field(`symlink:${entry.path}`);
      field(entry.target);
    }
  }
  return hash.digest('hex');
}

/** `repo:` + the first 16 hex digits of the context digest. */
export async function contentTag(repo: string, inputs: ContentInputs & { context: BuildContext }): Promise<string> {
  const entries = await collectContext(inputs.context, inputs.dockerfile);
  return `${repo}:${(await contextDigest(entries, inputs)).slice(0, 16)}`;
}

/** The context as a tar stream; file bodies are read one at a time as the daemon consumes them. */
export function contextTar(entries: readonly ContextEntry[]): Readable {
  async function* tarEntries(): AsyncGenerator<TarEntry> {
    for (const entry of entries) {
      if (entry.type === 'file') yield { type: 'file', path: entry.path, mode: entry.mode, body: await body(entry) };
      else yield entry;
    }
  }
  return tarStream(tarEntries());
}
