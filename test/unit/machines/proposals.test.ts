import { describe, expect, it } from 'vitest';
import { checkIncoming } from '../../../machines/proposals.js';

/** The host checks what the supervise sidecar printed again before a human ever reads it. */

const base = { id: 'pabcdef1234', kind: 'dockerfile', reason: 'I need jq' };

describe('checkIncoming', () => {
  it('accepts each kind in its shape, keeping only the fields of that kind', () => {
    expect(checkIncoming({ ...base, change: { dockerfile: "FROM x\nRUN grep '\\bfoo\\b' a\tb\n", extra: 1 } })).toEqual({ ...base, change: { dockerfile: "FROM x\nRUN grep '\\bfoo\\b' a\tb\n" } });
    expect(checkIncoming({ ...base, kind: 'allowlist', change: { hosts: ['a.test'] } })?.change).toEqual({ hosts: ['a.test'] });
    const route = { path: '/x', upstream: 'https://x.test', inject: { header: 'x-api-key', format: '{token}' } };
    expect(checkIncoming({ ...base, kind: 'route', change: { route } })?.change).toEqual({ route: { ...route, roles: [] } });
  });

  it('refuses bad ids, kinds, reasons and shapes', () => {
    expect(checkIncoming({ ...base, id: '../etc', change: { dockerfile: 'FROM x' } })).toBeNull();
    expect(checkIncoming({ ...base, kind: 'sudo', change: {} })).toBeNull();
    expect(checkIncoming({ ...base, reason: '', change: { dockerfile: 'FROM x' } })).toBeNull();
    expect(checkIncoming({ ...base, kind: 'allowlist', change: { hosts: [] } })).toBeNull();
    expect(checkIncoming({ ...base, kind: 'route', change: { route: { path: '/x' } } })).toBeNull();
    expect(checkIncoming({ ...base, change: { dockerfile: 'x'.repeat(256 * 1024 + 1) } })).toBeNull();
  });

  it('refuses text that would act on the terminal of the human reading it', () => {
    for (const bad of ['\u001b[2J', 'a\rb', 'tricky \u202e txt.exe', 'bell\u0007', 'c1\u009b']) {
      expect(checkIncoming({ ...base, reason: bad, change: { dockerfile: 'FROM x' } }), JSON.stringify(bad)).toBeNull();
      expect(checkIncoming({ ...base, change: { dockerfile: `FROM x\nRUN echo ${bad}` } }), JSON.stringify(bad)).toBeNull();
    }
    expect(checkIncoming({ ...base, kind: 'allowlist', change: { hosts: ['a.test\u001b'] } })).toBeNull();
  });

  it('refuses a value nested deeper than any proposal instead of overflowing the stack', () => {
    let deep: unknown = 'x';
    for (let i = 0; i < 20_000; i++) deep = i % 2 ? [deep] : { a: deep };
    expect(checkIncoming({ ...base, kind: 'allowlist', change: { hosts: ['a.test'], extra: deep } })).toBeNull();
    expect(checkIncoming(deep)).toBeNull();
  });
});
