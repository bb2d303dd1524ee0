import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkRouteToken } from '../../../config/secrets.js';
import { BottleError } from '../../../config/errors.js';
import { TOKEN_MAX_LENGTH, TOKEN_MIN_LENGTH, tokenProblem } from '../../../config/token-rule.js';
import { secretHash } from '../../../machines/specs.js';
import { parseToken } from '../../../sidecars/cred-proxy/tokens.js';
import { createSecretScanner, parseSecretHashes } from '../../../sidecars/egress/secrets.js';

/**
 * One token rule (config/token-rule.ts): the host (at load, rotation and approval), the
 * cred-proxy loading a token file and the egress canary give the same answer for every token.
 * For the canary, "accepts" means it can hold the token's hash and finds the token in a
 * request; a token the rule refuses is exactly one it could not see.
 */

const hostAccepts = (t: string) => tokenProblem(t) === undefined;
// The cred-proxy trims trailing line breaks of a file first; the cases here end in none.
const proxyAccepts = (t: string) => parseToken(t).ok;
function canaryAccepts(t: string): boolean {
  if (t === '') return false;
  const parsed = parseSecretHashes(secretHash(t));
  if (parsed.errors.length > 0) return false;
  const scanner = createSecretScanner({ hashes: parsed.hashes });
  return scanner.scan(Buffer.from(`GET /?key=${t}&x=1 HTTP/1.1`, 'utf8'))?.alarm === 'token';
}

const GOOD = 'sk-test-0123456789abcdef';
const CASES: [string, string, boolean][] = [
  ['a plain token', GOOD, true],
  ['exactly the minimum length', 'x'.repeat(TOKEN_MIN_LENGTH), true],
  ['exactly the maximum length', 'y'.repeat(TOKEN_MAX_LENGTH), true],
  ['every printable character but space', Array.from({ length: 94 }, (_, i) => String.fromCharCode(0x21 + i)).join(''), true],
  ['a space inside', 'sk-test 0123456789', false],
  ['a leading space', ' sk-test-0123456789', false],
  ['a tab inside', 'sk-test\t0123456789', false],
  ['a newline inside', 'sk-test\n0123456789', false],
  ['a carriage return inside', 'sk-test\r0123456789', false],
  ['a NUL', 'sk-test\u00000123456789', false],
  ['an escape', 'sk-test\u001b0123456789', false],
  ['DEL', 'sk-test\u007f0123456789', false],
  ['a non-ASCII letter', 'sk-tést-0123456789', false],
  ['a non-breaking space', 'sk-test\u00a00123456789', false],
  ['empty', '', false],
  ['one short of the minimum', 'x'.repeat(TOKEN_MIN_LENGTH - 1), false],
  ['one over the maximum', 'y'.repeat(TOKEN_MAX_LENGTH + 1), false],
];

describe('the token rule', () => {
  it.each(CASES)('%s: config, the cred-proxy and the canary agree', (_what, token, ok) => {
    expect(hostAccepts(token)).toBe(ok);
    expect(proxyAccepts(token)).toBe(ok);
    expect(canaryAccepts(token)).toBe(ok);
  });

  it('says what is wrong in words, never quoting the token', () => {
    expect(tokenProblem('sk-test 0123456789')).toMatch(/whitespace/);
    expect(tokenProblem('sk-test\t0123456789')).toMatch(/whitespace/);
    expect(tokenProblem('sk-test\n0123456789')).toMatch(/whitespace/);
    expect(tokenProblem('sk-test\u00000123456789')).toMatch(/control character/);
    expect(tokenProblem('sk-tést-0123456789')).toMatch(/non-ASCII/);
    expect(tokenProblem('')).toMatch(/empty/);
    expect(tokenProblem('short')).toMatch(/shorter than 8/);
    for (const [, token] of CASES) {
      const problem = tokenProblem(token) ?? '';
      if (token.trim().length >= 4) expect(problem).not.toContain(token.trim());
    }
  });

  it('agrees on arbitrary strings of token bytes, whitespace and control characters', () => {
    const char = fc.oneof(
      fc.constantFrom(' ', '\t', '\n', '\r', '\u0000', '\u001f', '\u007f', 'é'),
      fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)),
      fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)),
    );
    fc.assert(
      fc.property(fc.array(char, { minLength: 0, maxLength: 40 }), (chars) => {
        const token = chars.join('');
        const ok = hostAccepts(token);
        // The cred-proxy trims trailing line breaks of a file's text before the rule.
        if (!/[\r\n]$/.test(token)) expect(proxyAccepts(token)).toBe(ok);
        expect(canaryAccepts(token)).toBe(ok);
      }),
      { numRuns: 300 },
    );
  });

  it('checkRouteToken throws SECRET_INVALID (exit 2) naming the ref, never the value', () => {
    expect(() => checkRouteToken(GOOD, { env: 'API' }, 'for proposal p1', 'fix it')).not.toThrow();
    let err: unknown;
    try {
      checkRouteToken('bad token value', { env: 'API_TOKEN' }, 'for proposal p1', 'fix it');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BottleError);
    const e = err as BottleError;
    expect(e.code).toBe('SECRET_INVALID');
    expect(e.exitCode).toBe(2);
    expect(e.message).toContain('env:API_TOKEN');
    expect(e.message).toContain('whitespace');
    expect(e.message).not.toContain('bad token value');
  });
});
