/**
 * The git gate's ref policy, as pure functions: which ref updates an agent's push may make.
 *
 * A remote's `push` patterns name what the agent may push:
 *   - a pattern without a `refs/` prefix is a branch name: `agent/*` allows
 *     `refs/heads/agent/<name>`;
 *   - a pattern with a `refs/` prefix is matched against the full ref name, so tags (or any
 *     other namespace) are pushable only when a pattern names them, as in `refs/tags/v*`;
 *   - `*` matches any characters except `/` (one path segment, possibly empty); every other
 *     character matches itself.
 *
 * Every accepted update is a creation or a fast-forward; deletions are never allowed, tags
 * are never moved once they exist (creation only), and `push: []` makes the remote read-only.
 */

export const ZERO = /^0{40}(0{24})?$/;

export interface RefUpdate {
  ref: string;
  /** The ref's value before the push (all zeros: the ref does not exist). */
  old: string;
  /** The ref's value after the push (all zeros: a deletion). */
  new: string;
}

export type Decision = { decision: 'allow'; reason: string } | { decision: 'deny'; reason: string };

/** A glob pattern as a RegExp anchored at both ends. */
export function patternRegExp(pattern: string): RegExp {
  const body = pattern
    .split('*')
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('[^/]*');
  return new RegExp(`^${body}$`);
}

/** The full ref names a pattern applies to (`agent/*` → `refs/heads/agent/*`). */
export function fullPattern(pattern: string): string {
  return pattern.startsWith('refs/') ? pattern : `refs/heads/${pattern}`;
}

/** The first pattern that allows pushing `ref`, or undefined. */
export function matchingPattern(ref: string, patterns: readonly string[]): string | undefined {
  return patterns.find((p) => patternRegExp(fullPattern(p)).test(ref));
}

/** A ref name git itself would accept for a push (enough to refuse odd names before anything else). */
export function refNameProblem(ref: string): string | undefined {
  if (!ref.startsWith('refs/')) return 'not a full ref name';
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is refused
  if (/[\u0000-\u0020\u007f~^:?*[\\]/.test(ref) || ref.includes('..') || ref.includes('@{') || ref.includes('//') || ref.endsWith('/') || ref.endsWith('.lock') || ref.endsWith('.')) {
    return 'not a valid ref name';
  }
  return undefined;
}

/**
 * Decides one ref update. `isAncestor(old, new)` answers whether `old` is an ancestor of
 * `new` (a fast-forward); it is asked only for an update of an existing branch.
 */
export function decideUpdate(update: RefUpdate, patterns: readonly string[], isAncestor: (old: string, next: string) => boolean): Decision {
  const { ref } = update;
  const bad = refNameProblem(ref);
  if (bad) return { decision: 'deny', reason: `${ref}: ${bad}` };
  if (patterns.length === 0) return { decision: 'deny', reason: 'this remote is read-only (push: [])' };
  if (ZERO.test(update.new)) return { decision: 'deny', reason: `deleting ${ref} is not allowed` };
  const pattern = matchingPattern(ref, patterns);
  if (pattern === undefined) {
    const what = ref.startsWith('refs/tags/') ? 'tag pushes are allowed only where a push pattern names refs/tags/...; ' : '';
    return { decision: 'deny', reason: `${what}${ref} matches none of the push patterns (${patterns.join(', ')})` };
  }
  if (ZERO.test(update.old)) return { decision: 'allow', reason: `creates ${ref} (pattern ${pattern})` };
  if (ref.startsWith('refs/tags/')) return { decision: 'deny', reason: `${ref} exists: tags are never moved` };
  if (!isAncestor(update.old, update.new)) return { decision: 'deny', reason: `${ref}: not a fast-forward (force pushes are not allowed)` };
  return { decision: 'allow', reason: `fast-forwards ${ref} (pattern ${pattern})` };
}

/**
 * Decides a whole push: every update is decided, and the push is accepted only when every
 * one of them is (nothing is forwarded in part).
 */
export function decidePush(updates: readonly RefUpdate[], patterns: readonly string[], isAncestor: (old: string, next: string) => boolean): {
  accepted: boolean;
  decisions: (RefUpdate & Decision)[];
} {
  const decisions = updates.map((u) => ({ ...u, ...decideUpdate(u, patterns, isAncestor) }));
  return { accepted: decisions.length > 0 && decisions.every((d) => d.decision === 'allow'), decisions };
}

/** `old new ref` lines as git gives them to a pre-receive hook. */
export function parseHookInput(text: string): RefUpdate[] {
  const out: RefUpdate[] = [];
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (t === '') continue;
    const [old, next, ref] = t.split(' ');
    if (!old || !next || !ref) throw new Error(`unexpected pre-receive line: ${t}`);
    out.push({ old, new: next, ref });
  }
  return out;
}
