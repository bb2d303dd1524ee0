/**
 * Ignore lists for build contexts, in gitignore syntax (the syntax of `.bottleignore`):
 *
 *   # comment            blank lines and lines starting with # are skipped
 *   secret.txt           a name matches a file or directory of that name at any depth
 *   *.log                globs: * and ? stay within one path segment, [abc] classes
 *   build/               a trailing slash matches directories only
 *   /dist                a leading slash (or any inner slash) anchors at the context root
 *   docs/**\/*.pdf        ** spans any number of directories
 *   !keep.log            re-includes what an earlier line excluded (the last match wins)
 *
 * An excluded directory is not descended into, so as in git a file inside it cannot be
 * re-included by a later `!` line.
 */

interface Rule {
  regex: RegExp;
  negate: boolean;
  dirOnly: boolean;
}

export interface IgnoreMatcher {
  /** `path` is relative to the context root, with `/` separators and no leading `./`. */
  ignores(path: string, isDir: boolean): boolean;
}

function globToRegex(glob: string): string {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        const atStart = i === 0 || glob[i - 1] === '/';
        const next = glob[i + 2];
        if (atStart && next === '/') {
          out += '(?:.*/)?';
          i += 2;
          continue;
        }
        if (atStart && next === undefined) {
          out += '.*';
          i += 1;
          continue;
        }
        out += '[^/]*';
        i += 1;
        continue;
      }
      out += '[^/]*';
    } else if (c === '?') {
      out += '[^/]';
    } else if (c === '[') {
      const close = glob.indexOf(']', i + 2);
      if (close === -1) {
        out += '\\[';
        continue;
      }
      let body = glob.slice(i + 1, close);
      if (body.startsWith('!')) body = `^${body.slice(1)}`;
      out += `[${body.replace(/\\/g, '\\\\')}]`;
      i = close;
    } else if (c === '\\' && i + 1 < glob.length) {
      i += 1;
      out += glob[i]!.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    } else {
      out += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    }
  }
  return out;
}

function parseLine(raw: string): Rule | null {
  let line = raw.replace(/\r$/, '');
  // Trailing spaces are insignificant unless escaped (gitignore).
  line = line.replace(/(?<!\\)\s+$/, '');
  if (line === '' || line.startsWith('#')) return null;
  let negate = false;
  if (line.startsWith('!')) {
    negate = true;
    line = line.slice(1);
  } else if (line.startsWith('\\!') || line.startsWith('\\#')) {
    line = line.slice(1);
  }
  let dirOnly = false;
  if (line.endsWith('/')) {
    dirOnly = true;
    line = line.replace(/\/+$/, '');
  }
  if (line === '') return null;
  const anchored = line.includes('/');
  line = line.replace(/^\/+/, '');
  const body = globToRegex(line);
  // A name without a slash matches at any depth; an anchored pattern only from the root.
  const regex = new RegExp(anchored ? `^${body}$` : `^(?:.*/)?${body}$`);
  return { regex, negate, dirOnly };
}

/** Builds a matcher from gitignore-style lines (each element one line). */
export function ignoreMatcher(lines: readonly string[]): IgnoreMatcher {
  const rules = lines.flatMap((l) => l.split('\n')).map(parseLine).filter((r): r is Rule => r !== null);
  return {
    ignores(path, isDir) {
      let ignored = false;
      for (const rule of rules) {
        if (rule.dirOnly && !isDir) continue;
        if (rule.regex.test(path)) ignored = !rule.negate;
      }
      return ignored;
    },
  };
}

/**
 * Turns `.dockerignore` lines into the gitignore-style lines above. Docker anchors every
 * pattern at the context root and has no directory-only form, so each pattern gets a
 * leading slash and loses a trailing one.
 */
export function dockerignoreLines(text: string): string[] {
  const out: string[] = [];
  for (const raw of text.split('\n')) {
    let line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    let prefix = '';
    if (line.startsWith('!')) {
      prefix = '!';
      line = line.slice(1).trim();
    }
    line = line.replace(/^(\.\/|\/)+/, '').replace(/\/+$/, '');
    if (line === '' || line === '.') continue;
    out.push(`${prefix}/${line}`);
  }
  return out;
}
