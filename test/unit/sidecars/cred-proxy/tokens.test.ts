import { createHash } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { fingerprint, parseToken, readToken, TokenStore } from '../../../../sidecars/cred-proxy/tokens.js';
import { replaceFile, tempDir, until } from './harness.js';

const stores: TokenStore[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
});

describe('parseToken', () => {
  it('trims the trailing newline and nothing else', () => {
    expect(parseToken('sk-ant-0123456789\n')).toEqual({ ok: true, token: 'sk-ant-0123456789' });
    expect(parseToken('sk-ant-0123456789\r\n')).toEqual({ ok: true, token: 'sk-ant-0123456789' });
  });

  it('refuses a token with whitespace inside: the egress canary could not see it in a request', () => {
    for (const text of [' padded token 123 ', 'sk-ant-0123\t456789', 'sk-ant-01234\n56789\n']) {
      const r = parseToken(text);
      expect(r.ok, JSON.stringify(text)).toBe(false);
      if (!r.ok) expect(r.message).toContain('whitespace');
    }
  });

  it('refuses what cannot go into a header, or is too short to redact safely, without quoting it', () => {
    for (const [text, why] of [
      ['', 'empty'],
      ['\n', 'empty'],
      ['abc\ndefghijk', 'line break'],
      ['abcdefghijk\u0000', 'control'],
      ['tökenvalue123', 'non-ASCII'],
      ['tiny12', 'shorter than 8'],
    ] as const) {
      const r = parseToken(text);
      expect(r.ok, JSON.stringify(text)).toBe(false);
      if (!r.ok) {
        expect(r.message).toContain(why);
        if (text.trim() !== '') expect(r.message).not.toContain(text.trim());
      }
    }
  });

  it('fingerprints with the first 8 hex digits of sha256', () => {
    expect(fingerprint('sk-ant-0123456789')).toBe(createHash('sha256').update('sk-ant-0123456789').digest('hex').slice(0, 8));
    expect(fingerprint('sk-ant-0123456789')).toMatch(/^[0-9a-f]{8}$/);
  });
});

describe('TokenStore', () => {
  it('reads every file, reports the unreadable ones, and re-reads a file replaced by rename', async () => {
    const dir = tempDir();
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    writeFileSync(a, 'token-a-0123456789\n');
    const events: string[] = [];
    const store = new TokenStore([a, b, a], { onChange: (f, fp) => events.push(`change ${f} ${fp}`), onError: (f, m) => events.push(`error ${f} ${m}`) });
    stores.push(store);
    expect(store.get(a)).toEqual({ ok: true, token: 'token-a-0123456789', fp: fingerprint('token-a-0123456789') });
    expect(store.problems()).toEqual([{ file: b, error: `cannot read ${b} (ENOENT)` }]);

    writeFileSync(b, 'token-b-0123456789');
    replaceFile(a, 'token-a-rotated-0123');
    await until(() => store.problems().length === 0 && store.get(a).ok && (store.get(a) as { token: string }).token === 'token-a-rotated-0123', 'the reload');
    expect(store.secrets()).toEqual(expect.arrayContaining(['token-a-0123456789', 'token-a-rotated-0123', 'token-b-0123456789']));
    expect(events).toContain(`change ${a} ${fingerprint('token-a-rotated-0123')}`);
    expect(events.join('\n')).not.toMatch(/token-[ab]-/);
  });

  it('fails closed when a file disappears or goes bad, and recovers (seen through fs.watch alone)', async () => {
    const dir = tempDir();
    const a = join(dir, 'a');
    writeFileSync(a, 'token-a-0123456789\n');
    const store = new TokenStore([a], { pollMs: 0 });
    stores.push(store);
    rmSync(a);
    await until(() => !store.get(a).ok, 'the failure');
    expect(store.get(a)).toEqual({ ok: false, error: `cannot read ${a} (ENOENT)` });
    writeFileSync(a, 'bad\n');
    await until(() => !store.get(a).ok && (store.get(a) as { error: string }).error.includes('shorter'), 'the bad token');
    writeFileSync(a, 'token-a-back-0123456\n');
    await until(() => store.get(a).ok, 'the recovery');
    // The first token is still redacted from responses after it was replaced.
    expect(store.secrets()).toEqual(expect.arrayContaining(['token-a-0123456789', 'token-a-back-0123456']));
  });

  it('notices a change through polling alone', async () => {
    const dir = tempDir();
    const a = join(dir, 'a');
    writeFileSync(a, 'token-a-0123456789');
    const store = new TokenStore([a], { pollMs: 50, watch: false });
    stores.push(store);
    writeFileSync(a, 'token-a-changed-01234');
    await until(() => (store.get(a) as { token?: string }).token === 'token-a-changed-01234', 'the change');
  });

  it('replaces its file set: a new file is read at once and watched, a dropped one forgotten (its token still redacted)', async () => {
    const dir = tempDir();
    const a = join(dir, 'a');
    const sub = join(dir, 'more');
    const b = join(sub, 'b');
    writeFileSync(a, 'token-a-0123456789\n');
    const store = new TokenStore([a], { pollMs: 0 });
    stores.push(store);
    mkdirSync(sub);
    writeFileSync(b, 'token-b-0123456789\n');
    store.add([b]);
    expect(store.files()).toEqual([a, b]);
    expect(store.get(b)).toMatchObject({ ok: true, token: 'token-b-0123456789' });
    // Watched in its own folder (no poll here): a rotation is seen.
    replaceFile(b, 'token-b-rotated-0123\n');
    await until(() => (store.get(b) as { token?: string }).token === 'token-b-rotated-0123', 'the rotation of the added file');

    store.setFiles([b, join(dir, 'missing')]);
    expect(store.files()).toEqual([b, join(dir, 'missing')]);
    expect(store.get(a).ok).toBe(false);
    expect(store.problems()).toEqual([{ file: join(dir, 'missing'), error: `cannot read ${join(dir, 'missing')} (ENOENT)` }]);
    expect(store.secrets()).toEqual(expect.arrayContaining(['token-a-0123456789', 'token-b-rotated-0123']));
    rmSync(a); // no longer watched: nothing to report
    writeFileSync(join(dir, 'missing'), 'token-late-0123456789');
    await until(() => store.problems().length === 0, 'the late file');
  });

  it('readToken vets a file once without keeping it', () => {
    const dir = tempDir();
    const f = join(dir, 't');
    expect(readToken(f)).toEqual({ ok: false, error: `cannot read ${f} (ENOENT)` });
    writeFileSync(f, 'short');
    expect(readToken(f)).toMatchObject({ ok: false, error: expect.stringContaining('shorter') });
    writeFileSync(f, 'token-t-0123456789\n');
    expect(readToken(f)).toEqual({ ok: true, token: 'token-t-0123456789', fp: fingerprint('token-t-0123456789') });
  });
});
