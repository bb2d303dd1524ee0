import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { REDACTED, Redactor, redactText } from '../../../../sidecars/cred-proxy/redact.js';

const TOKEN = 'sk-ant-0123456789abcdef';

/** Runs `chunks` through a Redactor; returns what came out of each push, then of end(). */
function stream(secrets: string[], chunks: string[]): string[] {
  const r = new Redactor(secrets);
  return [...chunks.map((c) => r.push(Buffer.from(c)).toString()), r.end().toString()];
}

/** Cuts `text` at the given positions. */
function cut(text: string, at: number[]): string[] {
  const points = [...new Set(at.map((p) => Math.min(p, text.length)))].sort((a, b) => a - b);
  const out: string[] = [];
  let last = 0;
  for (const p of points) {
    out.push(text.slice(last, p));
    last = p;
  }
  out.push(text.slice(last));
  return out;
}

describe('Redactor', () => {
  it('redacts a token wherever the stream is split', () => {
    const text = `before ${TOKEN} middle ${TOKEN}${TOKEN} after`;
    const want = `before ${REDACTED} middle ${REDACTED}${REDACTED} after`;
    for (let i = 0; i <= text.length; i += 1) {
      for (const j of [i, i + 3, i + TOKEN.length - 1]) {
        const out = stream([TOKEN], cut(text, [i, j]));
        expect(out.join(''), `split at ${i}, ${j}`).toBe(want);
      }
    }
  });

  it('holds back only a possible start of a token, and releases it when it turns out not to be one', () => {
    const r = new Redactor([TOKEN]);
    expect(r.push(Buffer.from('data: 1\n\n')).toString()).toBe('data: 1\n\n');
    expect(r.push(Buffer.from('data: sk-an')).toString()).toBe('data: ');
    expect(r.push(Buffer.from('chor\n\n')).toString()).toBe('sk-anchor\n\n');
    expect(r.push(Buffer.from('x sk')).toString()).toBe('x ');
    expect(r.end().toString()).toBe('sk');
    expect(r.count).toBe(0);
  });

  it('handles several secrets, the longest first at one position', () => {
    const out = stream(['abcdefgh1', 'abcdefgh12345'], ['x abcdefgh12', '345 abcdefgh1 y']);
    expect(out.join('')).toBe(`x ${REDACTED} ${REDACTED} y`);
  });

  it('works on bytes: a multi-byte character split across chunks survives', () => {
    const text = Buffer.from(`é ${TOKEN} ü`);
    const r = new Redactor([TOKEN]);
    const parts = [r.push(text.subarray(0, 1)), r.push(text.subarray(1, 12)), r.push(text.subarray(12)), r.end()];
    expect(Buffer.concat(parts).toString()).toBe(`é ${REDACTED} ü`);
  });

  it('property: any chunking gives the same output as redacting the whole text, and never lets a secret through', () => {
    // Small alphabets, so that secrets overlap, share prefixes and contain one another.
    const secretArb = fc.string({ unit: fc.constantFrom(...'ab01'.split('')), minLength: 8, maxLength: 14 });
    const filler = fc.string({ unit: fc.constantFrom(...'ab01x '.split('')), maxLength: 12 });
    fc.assert(
      fc.property(
        fc.uniqueArray(secretArb, { minLength: 1, maxLength: 3 }),
        fc.array(fc.oneof(filler, fc.nat(2)), { maxLength: 12 }),
        fc.array(fc.nat(200), { maxLength: 8 }),
        (secrets, pieces, cuts) => {
          const text = pieces.map((p) => (typeof p === 'number' ? secrets[p % secrets.length]! : p)).join('');
          const out = stream(secrets, cut(text, cuts)).join('');
          expect(out).toBe(redactText(text, secrets));
          for (const s of secrets) expect(out).not.toContain(s);
          if (!secrets.some((s) => text.includes(s))) expect(out).toBe(text);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('property: what is released never holds a secret, even read chunk by chunk', () => {
    const secret = 'ab01ab01a';
    fc.assert(
      fc.property(fc.array(fc.string({ unit: fc.constantFrom('a', 'b', '0', '1'), maxLength: 10 }), { maxLength: 10 }), (chunks) => {
        const released = stream([secret], chunks);
        // Not in any piece, and not across the pieces either.
        expect(released.join('')).not.toContain(secret);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('redactText', () => {
  it('replaces every occurrence of every secret, the longest where they overlap', () => {
    expect(redactText(`a ${TOKEN} b ${TOKEN} c other-secret-1`, [TOKEN, 'other-secret-1'])).toBe(`a ${REDACTED} b ${REDACTED} c ${REDACTED}`);
    expect(redactText('x abcdefgh12345 y', ['abcdefgh1', 'abcdefgh12345'])).toBe(`x ${REDACTED} y`);
    expect(redactText('nothing here', [TOKEN])).toBe('nothing here');
    expect(redactText('é ü', [TOKEN])).toBe('é ü');
  });
});
