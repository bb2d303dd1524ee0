import path from 'node:path';
import dockerignore from '@balena/dockerignore';
import gitignore from 'ignore';

/**
 * Ignore rules for build contexts, in two syntaxes:
 *
 * - `.bottleignore` (the --cwd copy) is gitignore syntax, matched by `ignore` (node-ignore):
 *   a bare name matches at any depth, `dir/` matches directories only, a leading or inner
 *   slash anchors at the root, `**` spans directories, `!` re-includes. As in git, nothing
 *   below an excluded directory can be re-included, so the walk never enters one.
 * - `.dockerignore` (an agent Dockerfile's folder) is Docker's syntax, matched by
 *   `@balena/dockerignore` (a port of moby's matcher): every pattern is anchored at the
 *   root, a pattern matching a folder matches everything below it, and a later `!` line can
 *   re-include a file inside an excluded folder.
 */
export interface IgnoreMatcher {
  /** `path` is relative to the context root, with `/` separators and no leading `./`. */
  ignores(path: string, isDir: boolean): boolean;
  /**
   * For a directory that `ignores`: whether something below it could still be re-included,
   * so the walk must enter it. False lets the walk skip the whole folder (node_modules).
   */
  mayReinclude(dir: string): boolean;
}

/** Builds a matcher from gitignore-style lines (each element one line or several). */
export function ignoreMatcher(lines: readonly string[]): IgnoreMatcher {
  const ig = gitignore().add(lines.flatMap((l) => l.split('\n')));
  return {
    ignores: (p, isDir) => ig.ignores(isDir ? `${p}/` : p),
    mayReinclude: () => false,
  };
}

/**
 * The `!` patterns of a .dockerignore as Docker cleans them (dockerignore.ReadAll, then
 * patternmatcher.New): comment lines start with `#`, the rest is trimmed, the `!` dropped,
 * the path cleaned and one leading slash removed.
 */
function exceptions(text: string): string[] {
  const out: string[] = [];
  for (const raw of text.split(/\r?\n/)) {
    if (raw.startsWith('#')) continue;
    const line = raw.trim();
    if (!line.startsWith('!')) continue;
    let p = line.slice(1).trim();
    if (p === '') continue;
    p = path.posix.normalize(p).replace(/(?<=.)\/$/, '');
    if (p.length > 1 && p.startsWith('/')) p = p.slice(1);
    out.push(p);
  }
  return out;
}

/** Builds a matcher from the text of a `.dockerignore`. */
export function dockerignoreMatcher(text: string): IgnoreMatcher {
  // Docker on Linux compares names case-sensitively; the library defaults to ignoring case.
  // The package is CommonJS typed as `export default`; its factory is also its own `.default`.
  const ig = dockerignore.default({ ignorecase: false }).add(text);
  const except = exceptions(text);
  return {
    ignores: (p) => ig.ignores(p),
    // Docker's context walk (moby pkg/archive TarWithOptions, and BuildKit's fsutil) enters an
    // excluded folder only when an exception's text starts with that folder's path: `!build/keep.txt`
    // opens `build`, `!*/keep.txt` does not. Taking the same rule keeps our context equal to Docker's.
    mayReinclude: (dir) => except.some((p) => `${p}/`.startsWith(`${dir}/`)),
  };
}

/** What any of `matchers` ignores; an ignored folder is entered only if every matcher that ignores it may re-include. */
export function unionMatcher(matchers: readonly IgnoreMatcher[]): IgnoreMatcher {
  return {
    ignores: (p, isDir) => matchers.some((m) => m.ignores(p, isDir)),
    mayReinclude: (dir) => matchers.every((m) => !m.ignores(dir, true) || m.mayReinclude(dir)),
  };
}
