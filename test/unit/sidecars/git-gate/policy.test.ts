import { describe, expect, it } from 'vitest';
import { decidePush, decideUpdate, matchingPattern, parseHookInput, patternRegExp } from '../../../../sidecars/git-gate/policy.js';

const Z = '0'.repeat(40);
const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const ff = () => true;
const notFf = () => false;

describe('push patterns', () => {
  it('a branch pattern matches refs/heads/<name>; * stays within one segment', () => {
    expect(matchingPattern('refs/heads/agent/feature', ['agent/*'])).toBe('agent/*');
    expect(matchingPattern('refs/heads/agent/', ['agent/*'])).toBe('agent/*');
    expect(matchingPattern('refs/heads/agent/a/b', ['agent/*'])).toBeUndefined();
    expect(matchingPattern('refs/heads/main', ['agent/*'])).toBeUndefined();
    expect(matchingPattern('refs/heads/agentx/feature', ['agent/*'])).toBeUndefined();
    expect(matchingPattern('refs/heads/main', ['main'])).toBe('main');
    expect(matchingPattern('refs/heads/mainline', ['main'])).toBeUndefined();
    expect(matchingPattern('refs/heads/wip-1', ['wip-*', 'x'])).toBe('wip-*');
  });

  it('a branch pattern never matches a tag or another namespace', () => {
    expect(matchingPattern('refs/tags/agent/v1', ['agent/*'])).toBeUndefined();
    expect(matchingPattern('refs/tags/v1', ['*'])).toBeUndefined();
    expect(matchingPattern('refs/notes/commits', ['*'])).toBeUndefined();
    expect(matchingPattern('refs/heads/anything', ['*'])).toBe('*');
  });

  it('a refs/ pattern is matched against the full ref', () => {
    expect(matchingPattern('refs/tags/v1.2', ['refs/tags/v*'])).toBe('refs/tags/v*');
    expect(matchingPattern('refs/tags/x1', ['refs/tags/v*'])).toBeUndefined();
    expect(matchingPattern('refs/heads/agent/x', ['refs/heads/agent/*'])).toBe('refs/heads/agent/*');
  });

  it('regex characters in patterns are literal', () => {
    expect(patternRegExp('refs/heads/a.b').test('refs/heads/axb')).toBe(false);
    expect(patternRegExp('refs/heads/a.b').test('refs/heads/a.b')).toBe(true);
    expect(patternRegExp('refs/heads/a+(b)').test('refs/heads/a+(b)')).toBe(true);
  });
});

describe('one ref update', () => {
  const patterns = ['agent/*', 'refs/tags/release-*'];

  it('creating and fast-forwarding an allowed branch is allowed', () => {
    expect(decideUpdate({ ref: 'refs/heads/agent/f', old: Z, new: A }, patterns, notFf)).toMatchObject({ decision: 'allow' });
    expect(decideUpdate({ ref: 'refs/heads/agent/f', old: A, new: B }, patterns, ff)).toMatchObject({ decision: 'allow' });
  });

  it('a force push (not a fast-forward) is refused', () => {
    const d = decideUpdate({ ref: 'refs/heads/agent/f', old: A, new: B }, patterns, notFf);
    expect(d).toMatchObject({ decision: 'deny' });
    expect(d.reason).toMatch(/not a fast-forward/);
  });

  it('the ancestry question is asked only for an update of an existing branch', () => {
    const asked: string[] = [];
    const spy = (o: string, n: string) => {
      asked.push(`${o}..${n}`);
      return true;
    };
    decideUpdate({ ref: 'refs/heads/agent/f', old: Z, new: A }, patterns, spy);
    decideUpdate({ ref: 'refs/heads/main', old: A, new: B }, patterns, spy);
    decideUpdate({ ref: 'refs/heads/agent/f', old: A, new: Z }, patterns, spy);
    expect(asked).toEqual([]);
    decideUpdate({ ref: 'refs/heads/agent/f', old: A, new: B }, patterns, spy);
    expect(asked).toEqual([`${A}..${B}`]);
  });

  it('deleting a ref is refused, even an allowed one', () => {
    const d = decideUpdate({ ref: 'refs/heads/agent/f', old: A, new: Z }, patterns, ff);
    expect(d).toMatchObject({ decision: 'deny' });
    expect(d.reason).toMatch(/deleting/);
  });

  it('a branch outside the patterns is refused', () => {
    const d = decideUpdate({ ref: 'refs/heads/main', old: A, new: B }, patterns, ff);
    expect(d).toMatchObject({ decision: 'deny' });
    expect(d.reason).toMatch(/matches none of the push patterns \(agent\/\*, refs\/tags\/release-\*\)/);
  });

  it('tags only where a pattern names refs/tags/..., created but never moved', () => {
    expect(decideUpdate({ ref: 'refs/tags/v1', old: Z, new: A }, ['agent/*'], ff)).toMatchObject({ decision: 'deny', reason: expect.stringMatching(/tag pushes/) });
    expect(decideUpdate({ ref: 'refs/tags/release-1', old: Z, new: A }, patterns, ff)).toMatchObject({ decision: 'allow' });
    expect(decideUpdate({ ref: 'refs/tags/release-1', old: A, new: B }, patterns, ff)).toMatchObject({ decision: 'deny', reason: expect.stringMatching(/never moved/) });
    expect(decideUpdate({ ref: 'refs/tags/release-1', old: A, new: Z }, patterns, ff)).toMatchObject({ decision: 'deny', reason: expect.stringMatching(/deleting/) });
  });

  it('push: [] is read-only', () => {
    expect(decideUpdate({ ref: 'refs/heads/agent/f', old: Z, new: A }, [], ff)).toMatchObject({ decision: 'deny', reason: expect.stringMatching(/read-only/) });
  });

  it('malformed ref names are refused before the patterns are looked at', () => {
    for (const ref of ['HEAD', 'refs/heads/a..b', 'refs/heads/a b', 'refs/heads/x.lock', 'refs/heads/a/', 'refs/heads/a*']) {
      expect(decideUpdate({ ref, old: Z, new: A }, ['*', 'refs/*'], ff).decision, ref).toBe('deny');
    }
  });

  it('sha-256 object ids count as zero when all zeros', () => {
    const z64 = '0'.repeat(64);
    expect(decideUpdate({ ref: 'refs/heads/agent/f', old: 'c'.repeat(64), new: z64 }, patterns, ff)).toMatchObject({ decision: 'deny' });
  });
});

describe('a whole push', () => {
  it('is accepted only when every ref is allowed', () => {
    const ok = decidePush(
      [
        { ref: 'refs/heads/agent/a', old: Z, new: A },
        { ref: 'refs/heads/agent/b', old: A, new: B },
      ],
      ['agent/*'],
      ff,
    );
    expect(ok.accepted).toBe(true);
    const mixed = decidePush(
      [
        { ref: 'refs/heads/agent/a', old: Z, new: A },
        { ref: 'refs/heads/main', old: A, new: B },
      ],
      ['agent/*'],
      ff,
    );
    expect(mixed.accepted).toBe(false);
    expect(mixed.decisions.map((d) => d.decision)).toEqual(['allow', 'deny']);
    expect(decidePush([], ['agent/*'], ff).accepted).toBe(false);
  });

  it('reads the hook input git writes', () => {
    expect(parseHookInput(`${Z} ${A} refs/heads/agent/a\n${A} ${B} refs/heads/main\n`)).toEqual([
      { old: Z, new: A, ref: 'refs/heads/agent/a' },
      { old: A, new: B, ref: 'refs/heads/main' },
    ]);
    expect(() => parseHookInput('garbage\n')).toThrow(/unexpected/);
  });
});
