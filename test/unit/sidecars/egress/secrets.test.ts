import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createSecretScanner, parseCanary, parseSecretHashes, type SecretScanner } from '../../../../sidecars/egress/secrets.js';

const CANARY = 'bottle-placeholder-run0001';
const TOKEN = 'ghp_Tk9sX2FfcmVhbF90b2tlbl9mb3JfdGVzdHM'; // made up for the test: 40 printable ASCII, no spaces
const hashOf = (t: string) => ({ length: Buffer.byteLength(t), sha256: createHash('sha256').update(t).digest('hex') });
/** The token with one character changed. */
const nearMiss = (t: string) => `${t.slice(0, 10)}${t[10] === 'x' ? 'y' : 'x'}${t.slice(11)}`;

describe('parseCanary', () => {
  it('reads nothing from unset or empty, and the placeholder when it is 8+ printable ASCII', () => {
    expect(parseCanary(undefined)).toEqual({ ok: true, value: undefined });
    expect(parseCanary('')).toEqual({ ok: true, value: undefined });
    expect(parseCanary(CANARY)).toEqual({ ok: true, value: CANARY });
  });
  it.each(['short', 'tab\there-x', 'caf\u00e9-placeholder'])('refuses %j without quoting it', (text) => {
    const r = parseCanary(text);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.message).not.toContain(text);
  });
});

describe('parseSecretHashes', () => {
  it('reads <length>:<sha256 hex> entries, skipping blanks and merging duplicates', () => {
    const h = hashOf(TOKEN);
    const r = parseSecretHashes(` ${h.length}:${h.sha256.toUpperCase()} ,,${h.length}:${h.sha256}`);
    expect(r).toEqual({ hashes: [h], errors: [] });
    expect(parseSecretHashes(undefined)).toEqual({ hashes: [], errors: [] });
  });
  it('names a bad entry by position and never quotes it (it might be a token put there by mistake)', () => {
    const h = hashOf(TOKEN);
    const r = parseSecretHashes([`${h.length}:${h.sha256}`, TOKEN, `7:${h.sha256}`, `40:${h.sha256.slice(1)}`, `9000:${h.sha256}`].join(','));
    expect(r.hashes).toHaveLength(1);
    expect(r.errors).toEqual([
      'entry 2 is not <length>:<sha256 hex>',
      'entry 3: a token length must be from 8 to 8192',
      'entry 4 is not <length>:<sha256 hex>',
      'entry 5: a token length must be from 8 to 8192',
    ]);
    expect(r.errors.join(' ')).not.toContain(TOKEN);
    expect(r.errors.join(' ')).not.toContain(h.sha256);
  });
});

describe('scan', () => {
  const s = createSecretScanner({ canary: CANARY, hashes: [hashOf(TOKEN), hashOf('another-token-of-other-length')] });

  it('finds the placeholder as a substring, and a real token known only by its hash anywhere in a run', () => {
    expect(s.scan(`?key=${CANARY}&x=1`)).toEqual({ alarm: 'canary' });
    for (const around of [['', ''], ['Bearer ', ''], ['x=', '&y=2'], ['glued', 'glued'], ['"', '"}']]) {
      expect(s.scan(`${around[0]}${TOKEN}${around[1]}`), around.join('|')).toEqual({ alarm: 'token', fingerprint: hashOf(TOKEN).sha256.slice(0, 8) });
    }
    expect(s.scan('another-token-of-other-length')?.alarm).toBe('token');
    expect(s.scan(Buffer.from(`\x00\xff${TOKEN}\x01`, 'latin1'))?.alarm).toBe('token');
  });

  it('passes a near miss: one character different, or cut short', () => {
    expect(s.scan(`?key=${nearMiss(CANARY)}`)).toBeUndefined();
    expect(s.scan(`Bearer ${nearMiss(TOKEN)}`)).toBeUndefined();
    expect(s.scan(TOKEN.slice(0, -1))).toBeUndefined();
    expect(s.scan(`${TOKEN.slice(0, 20)} ${TOKEN.slice(20)}`)).toBeUndefined(); // broken by a space: not the token
  });

  it('reads the target percent-decoded, every header name and value, and Basic credentials decoded', () => {
    const enc = [...CANARY].map((c) => `%${c.charCodeAt(0).toString(16)}`).join('');
    expect(s.scanHead(`http://a.test/?q=${enc}`, [])).toMatchObject({ alarm: 'canary', where: 'the request target' });
    expect(s.scanHead('http://a.test/', ['Host', 'a.test', 'X-Api-Key', TOKEN])).toMatchObject({ alarm: 'token', where: 'the X-Api-Key header' });
    expect(s.scanHead('http://a.test/', ['Host', 'a.test', `x-${CANARY}`, '1'])).toMatchObject({ alarm: 'canary', where: 'a header name' });
    const basic = Buffer.from(`git:${TOKEN}`).toString('base64');
    expect(s.scanHead('http://a.test/', ['Authorization', `Basic ${basic}`])).toMatchObject({ alarm: 'token', where: 'the Authorization header (Basic credentials)' });
    expect(s.scanHead('http://a.test/', ['Host', 'a.test', 'Authorization', `Bearer ${nearMiss(TOKEN)}`])).toBeUndefined();
  });

  it('looks for nothing when given nothing', () => {
    const none = createSecretScanner();
    expect(none.active).toBe(false);
    expect(none.scan(TOKEN)).toBeUndefined();
    expect(none.body().push(Buffer.from(CANARY))).toEqual({ forward: Buffer.from(CANARY) });
  });
});

/** Runs `chunks` through a body scan: what was forwarded before a detection, and the detection. */
function stream(s: SecretScanner, chunks: readonly Buffer[]) {
  const b = s.body();
  const out: Buffer[] = [];
  for (const c of chunks) {
    const r = b.push(c);
    if (r.detection) return { forwarded: Buffer.concat(out).toString('latin1'), detection: r.detection };
    out.push(r.forward);
  }
  out.push(b.end());
  return { forwarded: Buffer.concat(out).toString('latin1'), detection: undefined };
}

const split = (text: string, at: readonly number[]) => {
  const cuts = [0, ...at, text.length];
  return cuts.slice(1).map((c, i) => Buffer.from(text.slice(cuts[i], c), 'latin1'));
};

describe('body scan', () => {
  const s = createSecretScanner({ canary: CANARY, hashes: [hashOf(TOKEN)] });

  it.each([
    ['the placeholder', CANARY],
    ['a real token', TOKEN],
  ])('finds %s split at any point, and forwards no byte of it', (_, secret) => {
    const body = `{"note":"hello world","key":"${secret}","more":"x"}`;
    const start = body.indexOf(secret);
    for (let a = 1; a < body.length; a++) {
      for (const chunks of [split(body, [a]), split(body, [a, Math.min(body.length - 1, a + 7)].filter((v, i, all) => all.indexOf(v) === i))]) {
        const r = stream(s, chunks);
        expect(r.detection, `split at ${a}`).toBeDefined();
        expect(r.forwarded.length, `split at ${a}`).toBeLessThanOrEqual(start);
        expect(body.startsWith(r.forwarded)).toBe(true);
      }
    }
  });

  it('forwards a body without a credential whole, however it is cut, and holds back only what could start one', () => {
    const body = `{"note":"hello world","key":"${nearMiss(TOKEN)}","p":"${nearMiss(CANARY)}"}\n`;
    for (let a = 1; a < body.length; a++) expect(stream(s, split(body, [a]))).toEqual({ forwarded: body, detection: undefined });
    const b = s.body();
    expect(b.push(Buffer.from('line one\n'))).toEqual({ forward: Buffer.from('line one\n') });
    expect(b.push(Buffer.from('word ab'))).toEqual({ forward: Buffer.from('word ') }); // "ab" could start a token
  });

  it('agrees with a search of the whole text for any body and any cuts (property)', () => {
    const alphabet = fc.constantFrom(...'ab -"\n'.split(''), CANARY.slice(0, 7), CANARY, TOKEN.slice(0, 13), TOKEN, TOKEN.slice(13), nearMiss(TOKEN));
    fc.assert(
      fc.property(fc.array(alphabet, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 4 }), (parts, rawCuts) => {
        const body = parts.join('');
        const cuts = [...new Set(rawCuts.map((c) => (body.length === 0 ? 0 : c % body.length)).filter((c) => c > 0))].sort((x, y) => x - y);
        const r = stream(s, split(body, cuts));
        const firstCanary = body.indexOf(CANARY);
        const firstToken = body.indexOf(TOKEN);
        const hit = [firstCanary, firstToken].filter((i) => i !== -1);
        if (hit.length === 0) {
          expect(r).toEqual({ forwarded: body, detection: undefined });
        } else {
          expect(r.detection).toBeDefined();
          expect(r.forwarded.length).toBeLessThanOrEqual(Math.min(...hit));
          expect(body.startsWith(r.forwarded)).toBe(true);
        }
      }),
      { numRuns: 500 },
    );
  });
});
