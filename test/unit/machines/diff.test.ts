import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { unifiedDiff } from '../../../machines/diff.js';

/** Applies a unified diff to `before` (hunks in order, context checked): the test's own patch. */
function patch(before: string, diff: string): string {
  const lines = before === '' ? [] : before.replace(/\n$/, '').split('\n');
  if (diff === '') return before;
  const out: string[] = [];
  let at = 0;
  const body = diff.replace(/\n$/, '').split('\n').slice(2);
  for (const line of body) {
    const h = /^@@ -(\d+),(\d+) \+\d+,\d+ @@$/.exec(line);
    if (h) {
      const start = Number(h[2]) === 0 ? Number(h[1]) : Number(h[1]) - 1;
      while (at < start) out.push(lines[at++]!);
      continue;
    }
    const kind = line[0];
    const text = line.slice(1);
    if (kind === ' ') {
      expect(lines[at]).toBe(text);
      out.push(lines[at++]!);
    } else if (kind === '-') {
      expect(lines[at]).toBe(text);
      at++;
    } else out.push(text);
  }
  while (at < lines.length) out.push(lines[at++]!);
  return out.length === 0 ? '' : `${out.join('\n')}\n`;
}

const text = fc.array(fc.constantFrom('FROM a', 'RUN b', 'USER root', 'USER agent', 'ENV X=1', ''), { maxLength: 30 }).map((ls) => (ls.length ? `${ls.join('\n')}\n` : ''));

describe('unifiedDiff', () => {
  it('shows an added line with its context, as diff -u does', () => {
    const d = unifiedDiff('ARG AGENT_IMAGE\nFROM x\n', 'ARG AGENT_IMAGE\nFROM x\nRUN apt-get install -y jq\n');
    expect(d).toBe('--- current\n+++ proposed\n@@ -1,2 +1,3 @@\n ARG AGENT_IMAGE\n FROM x\n+RUN apt-get install -y jq\n');
  });

  it('is empty for equal texts', () => {
    expect(unifiedDiff('a\nb\n', 'a\nb\n')).toBe('');
  });

  it('splits far-apart changes into hunks', () => {
    const a = `${Array.from({ length: 20 }, (_, i) => `l${i}`).join('\n')}\n`;
    const b = a.replace('l1\n', 'L1\n').replace('l18\n', 'L18\n');
    const d = unifiedDiff(a, b);
    expect(d.match(/^@@/gm)).toHaveLength(2);
    expect(patch(a, d)).toBe(b);
  });

  it('patching the first text with the diff gives the second (any texts)', () => {
    fc.assert(
      fc.property(text, text, (a, b) => {
        expect(patch(a, unifiedDiff(a, b))).toBe(b);
      }),
      { numRuns: 300 },
    );
  });
});
