import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseRemotes } from '../../../../sidecars/git-gate/config.js';
import { runs } from '../../../support/property.js';

/**
 * The git gate's remotes.json (sidecars/git-gate/config.ts): any text gives remotes or errors
 * naming the remote, never a throw; what it accepts is safe to use as a mirror folder name and
 * an upstream the gate can dial; one broken remote is named by its index.
 */

const name = fc.stringMatching(/^[A-Za-z0-9._-]{1,20}$/).filter((n) => n !== '.' && n !== '..');
const upstream = fc.oneof(
  fc.domain().map((h) => `https://${h}/org/repo.git`),
  fc.domain().map((h) => `http://${h}:8080/repo`),
  fc.domain().map((h) => `ssh://git@${h}/repo.git`),
);
const remote = fc
  .record(
    {
      name,
      upstream,
      push: fc.array(fc.stringMatching(/^[a-z*/]{1,12}$/), { maxLength: 3 }),
      key_file: fc.constant('/run/bottle/git-gate/keys/0'),
      known_hosts_file: fc.constant('/run/bottle/git-gate/known_hosts/0'),
      token_file: fc.constant('/run/bottle/git-gate/tokens/0'),
      ca_file: fc.constant('/run/bottle/git-gate/ca/0.pem'),
    },
    { requiredKeys: ['name', 'upstream', 'push'] },
  )
  .map((r) => (r.upstream.startsWith('ssh:') ? { ...r, key_file: '/run/bottle/git-gate/keys/0' } : r));
const remotes = fc.uniqueArray(remote, { minLength: 1, maxLength: 4, selector: (r) => r.name });

const breakage = fc.constantFrom(
  [(r: Record<string, unknown>) => ({ ...r, name: '..' }), '.name:'],
  [(r: Record<string, unknown>) => ({ ...r, name: 'a/b' }), '.name:'],
  [(r: Record<string, unknown>) => ({ ...r, name: 7 }), '.name:'],
  [(r: Record<string, unknown>) => ({ ...r, upstream: 'not a url' }), '.upstream: not a URL'],
  [(r: Record<string, unknown>) => ({ ...r, upstream: 'file:///srv/repo.git' }), '.upstream: scheme file:'],
  [(r: Record<string, unknown>) => ({ ...r, upstream: 'ext::sh -c evil' }), '.upstream:'],
  [(r: Record<string, unknown>) => ({ ...r, push: 'main' }), '.push:'],
  [(r: Record<string, unknown>) => ({ ...r, push: [''] }), '.push:'],
  [(r: Record<string, unknown>) => ({ ...r, key_file: 'relative/key' }), '.key_file: expected an absolute path'],
  [(r: Record<string, unknown>) => ({ ...r, upstream: 'ssh://git@h.test/r.git', key_file: undefined }), '.key_file: required'],
  [() => null, '.name:'],
) as fc.Arbitrary<[(r: Record<string, unknown>) => unknown, string]>;

describe('git gate remotes file on arbitrary input', () => {
  it('never throws, and what it accepts has safe names and a served scheme', () => {
    const shaped = fc.record({ remotes: fc.oneof(fc.array(fc.oneof(remote, fc.anything(), fc.dictionary(fc.constantFrom('name', 'upstream', 'push', 'key_file'), fc.anything())), { maxLength: 4 }), fc.anything()) }, { requiredKeys: [] });
    const text = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.json(), shaped.map((v) => JSON.stringify(v)));
    fc.assert(
      fc.property(text, (t) => {
        const r = parseRemotes(t);
        if (!r.ok) {
          expect(r.errors.length).toBeGreaterThan(0);
          for (const e of r.errors) expect(e).not.toBe('');
          return;
        }
        const names = new Set<string>();
        for (const rem of r.remotes) {
          expect(rem.name).toMatch(/^[A-Za-z0-9._-]+$/);
          expect(['.', '..']).not.toContain(rem.name);
          expect(names.has(rem.name)).toBe(false);
          names.add(rem.name);
          expect(['ssh:', 'https:', 'http:']).toContain(new URL(rem.upstream).protocol);
          for (const p of rem.push) expect(typeof p === 'string' && p !== '').toBe(true);
        }
      }),
      runs(300),
    );
  });

  it('a good file parses to its remotes; one broken remote is named by its index', () => {
    fc.assert(
      fc.property(remotes, fc.nat(), breakage, (rs, at, [brk, says]) => {
        const good = parseRemotes(JSON.stringify({ remotes: rs }));
        expect(good.ok, JSON.stringify(good)).toBe(true);
        if (good.ok) expect(good.remotes.map((r) => r.name)).toEqual(rs.map((r) => r.name));
        const i = at % rs.length;
        const bad = parseRemotes(JSON.stringify({ remotes: rs.map((r, j) => (j === i ? brk(r) : r)) }));
        expect(bad.ok).toBe(false);
        if (!bad.ok) expect(bad.errors.some((e) => e.startsWith(`remotes[${i}]`) && e.includes(says)), bad.errors.join('\n')).toBe(true);
      }),
      runs(300),
    );
  });

  it('a second remote of the same name is refused', () => {
    fc.assert(
      fc.property(remotes, fc.nat(), (rs, at) => {
        const dup = rs[at % rs.length]!;
        const bad = parseRemotes(JSON.stringify({ remotes: [...rs, dup] }));
        expect(bad.ok).toBe(false);
        if (!bad.ok) expect(bad.errors).toContain(`remotes[${rs.length}].name: duplicate remote ${dup.name}`);
      }),
      runs(100),
    );
  });
});
