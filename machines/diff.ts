/**
 * A unified diff of two texts (lines compared whole), as `diff -u` prints it, for showing a
 * proposed Dockerfile against the one in force. Longest common subsequence by dynamic
 * programming; past MAX_CELLS the whole text is shown as replaced, which is still a correct
 * diff, only not the shortest.
 */

const MAX_CELLS = 4_000_000;

type Op = { kind: ' ' | '-' | '+'; line: string };

function splitLines(text: string): string[] {
  if (text === '') return [];
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

function script(a: string[], b: string[]): Op[] {
  const n = a.length;
  const m = b.length;
  if ((n + 1) * (m + 1) > MAX_CELLS) return [...a.map((line) => ({ kind: '-' as const, line })), ...b.map((line) => ({ kind: '+' as const, line }))];
  // lcs[i][j]: length of the LCS of a[i..] and b[j..]
  const w = m + 1;
  const lcs = new Uint32Array((n + 1) * w);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * w + j] = a[i] === b[j] ? lcs[(i + 1) * w + j + 1]! + 1 : Math.max(lcs[(i + 1) * w + j]!, lcs[i * w + j + 1]!);
    }
  }
  const ops: Op[] = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      ops.push({ kind: ' ', line: a[i]! });
      i++;
      j++;
    } else if (lcs[(i + 1) * w + j]! >= lcs[i * w + j + 1]!) {
      ops.push({ kind: '-', line: a[i++]! });
    } else {
      ops.push({ kind: '+', line: b[j++]! });
    }
  }
  while (i < n) ops.push({ kind: '-', line: a[i++]! });
  while (j < m) ops.push({ kind: '+', line: b[j++]! });
  return ops;
}

/** `--- a` / `+++ b` headers and hunks with `context` lines around each change; '' when equal. */
export function unifiedDiff(before: string, after: string, names: { a: string; b: string } = { a: 'current', b: 'proposed' }, context = 3): string {
  const ops = script(splitLines(before), splitLines(after));
  if (ops.every((o) => o.kind === ' ')) return '';
  const out = [`--- ${names.a}`, `+++ ${names.b}`];
  // Positions (in ops) of changes, grouped into hunks whose context windows touch.
  const changed = ops.flatMap((o, k) => (o.kind === ' ' ? [] : [k]));
  let h = 0;
  while (h < changed.length) {
    let end = h;
    while (end + 1 < changed.length && changed[end + 1]! - changed[end]! <= 2 * context + 1) end++;
    const from = Math.max(0, changed[h]! - context);
    const to = Math.min(ops.length, changed[end]! + context + 1);
    // 1-based line numbers of the hunk's start in each text.
    let aLine = 1;
    let bLine = 1;
    for (let k = 0; k < from; k++) {
      if (ops[k]!.kind !== '+') aLine++;
      if (ops[k]!.kind !== '-') bLine++;
    }
    const slice = ops.slice(from, to);
    const aCount = slice.filter((o) => o.kind !== '+').length;
    const bCount = slice.filter((o) => o.kind !== '-').length;
    out.push(`@@ -${aCount === 0 ? aLine - 1 : aLine},${aCount} +${bCount === 0 ? bLine - 1 : bLine},${bCount} @@`);
    for (const o of slice) out.push(`${o.kind}${o.line}`);
    h = end + 1;
  }
  return `${out.join('\n')}\n`;
}
