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

  it('names the two texts in the headers as given (the capability review prints these)', () => {
    const d = unifiedDiff('FROM x\n', 'FROM y\n', { a: 'Dockerfile (current)', b: 'Dockerfile (proposal p1)' });
    expect(d).toBe('--- Dockerfile (current)\n+++ Dockerfile (proposal p1)\n@@ -1,1 +1,1 @@\n-FROM x\n+FROM y\n');
  });

  it('numbers an empty side by the line before it, and ignores a missing final newline', () => {
    expect(unifiedDiff('', 'a\nb\n')).toBe('--- current\n+++ proposed\n@@ -0,0 +1,2 @@\n+a\n+b\n');
    expect(unifiedDiff('a\nb\n', '')).toBe('--- current\n+++ proposed\n@@ -1,2 +0,0 @@\n-a\n-b\n');
    expect(unifiedDiff('a\nb', 'a\nb\n')).toBe('');
    expect(unifiedDiff('a\nb', 'a\nc')).toBe('--- current\n+++ proposed\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n');
  });

  it('stays correct (whole text replaced) for two long texts with nothing in common', () => {
    const a = `${Array.from({ length: 3000 }, (_, i) => `a${i}`).join('\n')}\n`;
    const b = `${Array.from({ length: 3000 }, (_, i) => `b${i}`).join('\n')}\n`;
    const d = unifiedDiff(a, b);
    expect(d.split('\n')[2]).toBe('@@ -1,3000 +1,3000 @@');
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
