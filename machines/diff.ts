import { structuredPatch } from 'diff';

/**
 * A unified diff of two texts (lines compared whole), as `diff -u` prints it, for showing a
 * proposed Dockerfile against the one in force. The hunks come from jsdiff (Myers' diff,
 * pure: no timer, no I/O). The proposal is the agent's text, so the search is bounded by
 * MAX_EDITS; past it the whole text is shown as replaced, which is still a correct diff, only
 * not the shortest.
 */

const MAX_EDITS = 2_000;

interface Hunk {
  oldStart: number;
  oldLines: number;
  newStart: number;
  newLines: number;
  lines: string[];
}

function lines(text: string): string[] {
  if (text === '') return [];
  const out = text.split('\n');
  if (out[out.length - 1] === '') out.pop();
  return out;
}

/**
 * A missing final newline is not a difference here (and gets no `\ No newline` marker):
 * both texts are compared as if they ended with one.
 */
function withFinalNewline(text: string): string {
  return text === '' || text.endsWith('\n') ? text : `${text}\n`;
}

function replaceAll(before: string, after: string): Hunk[] {
  const a = lines(before);
  const b = lines(after);
  return [{ oldStart: 1, oldLines: a.length, newStart: 1, newLines: b.length, lines: [...a.map((l) => `-${l}`), ...b.map((l) => `+${l}`)] }];
}

/** `--- a` / `+++ b` headers and hunks with `context` lines around each change; '' when equal. */
export function unifiedDiff(before: string, after: string, names: { a: string; b: string } = { a: 'current', b: 'proposed' }, context = 3): string {
  const a = withFinalNewline(before);
  const b = withFinalNewline(after);
  if (a === b) return '';
  const patch = structuredPatch(names.a, names.b, a, b, undefined, undefined, { context, maxEditLength: MAX_EDITS });
  const hunks: Hunk[] = patch ? patch.hunks : replaceAll(a, b);
  const out = [`--- ${names.a}`, `+++ ${names.b}`];
  for (const h of hunks) {
    // An empty range is numbered by the line before it, as diff -u does (jsdiff's formatPatch too).
    out.push(`@@ -${h.oldLines === 0 ? h.oldStart - 1 : h.oldStart},${h.oldLines} +${h.newLines === 0 ? h.newStart - 1 : h.newStart},${h.newLines} @@`);
    out.push(...h.lines);
  }
  return `${out.join('\n')}\n`;
}
