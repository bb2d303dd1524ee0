import { describe, expect, it } from 'vitest';
import { auditBudgetFromEnv, createAuditBudget } from '../../../../sidecars/common/audit-budget.js';
import { openAuditLog } from '../../../../sidecars/egress/audit.js';

/** A budget with a hand-driven clock and timer, writing into an array. */
function budget(opts: { burst?: number; perSecond?: number; maxBytes?: number; summaryMs?: number } = {}) {
  let t = 1_000_000;
  const out: string[] = [];
  const timers: (() => void)[] = [];
  const b = createAuditBudget({
    ...opts,
    source: 'egress',
    run: 'r1',
    write: (text) => out.push(text),
    now: () => t,
    setTimer: (fn) => {
      timers.push(fn);
      return {};
    },
  });
  return {
    b,
    out,
    advance: (ms: number) => {
      t += ms;
    },
    fireTimers: () => {
      for (const fn of timers.splice(0)) fn();
    },
    summaries: () => out.map((l) => JSON.parse(l)).filter((r) => r.type === 'audit.summary'),
  };
}

describe('the audit budget', () => {
  it('writes a burst, then counts what it holds back by kind and writes the counts as a summary', () => {
    const h = budget({ burst: 3, perSecond: 1, summaryMs: 5000 });
    for (let i = 0; i < 10; i++) h.b.offer(`{"n":${i}}\n`, i % 2 === 0 ? 'deny' : 'allow');
    expect(h.out).toEqual(['{"n":0}\n', '{"n":1}\n', '{"n":2}\n']);
    h.fireTimers();
    expect(h.summaries()).toEqual([
      {
        at: 1_000_000,
        type: 'audit.summary',
        source: 'egress',
        reason: 'rate',
        dropped: { allow: 4, deny: 3 },
        dropped_lines: 7,
        dropped_bytes: 7 * 8,
        first_at: 1_000_000,
        last_at: 1_000_000,
        total_dropped: 7,
        run: 'r1',
      },
    ]);
    // Refilled at perSecond: two seconds later two lines fit again.
    h.advance(2000);
    expect(h.b.offer('{"n":10}\n', 'deny')).toBe(true);
    expect(h.b.offer('{"n":11}\n', 'deny')).toBe(true);
    expect(h.b.offer('{"n":12}\n', 'deny')).toBe(false);
    h.b.flush();
    expect(h.summaries().at(-1)).toMatchObject({ dropped: { deny: 1 }, total_dropped: 8 });
  });

  it('never loses a line silently: written + summarised = offered, under any flood', () => {
    const h = budget({ burst: 50, perSecond: 100, maxBytes: 4000, summaryMs: 1000 });
    const offered = 100_000;
    for (let i = 0; i < offered; i++) {
      h.b.offer(`{"decision":"deny","i":${i}}\n`, 'deny');
      if (i % 100 === 0) h.advance(10);
      if (i % 1000 === 0) h.fireTimers();
    }
    h.b.flush();
    const detailed = h.out.filter((l) => !l.includes('audit.summary'));
    const summarised = h.summaries().reduce((n, s) => n + s.dropped_lines, 0);
    expect(detailed.length + summarised).toBe(offered);
    // Bounded: the lifetime size holds whatever the rate allowed.
    expect(detailed.join('').length).toBeLessThanOrEqual(4000);
    expect(h.summaries().at(-1).reason).toMatch(/size/);
    expect(h.out.join('').length).toBeLessThan(4000 + 101 * 300);
  });

  it('writes the summary at most every summaryMs, not one per held-back line', () => {
    const h = budget({ burst: 1, perSecond: 0.001, summaryMs: 5000 });
    for (let i = 0; i < 1000; i++) h.b.offer('{}\n', 'deny');
    expect(h.summaries()).toHaveLength(0);
    h.fireTimers();
    h.fireTimers();
    expect(h.summaries()).toHaveLength(1);
  });

  it('reads its limits from BOTTLE_AUDIT_LIMITS, keeping defaults for what is missing or malformed', () => {
    expect(auditBudgetFromEnv('10,2,4096,100')).toEqual({ burst: 10, perSecond: 2, maxBytes: 4096, summaryMs: 100 });
    expect(auditBudgetFromEnv('10,x,,0')).toEqual({ burst: 10 });
    expect(auditBudgetFromEnv(undefined)).toEqual({});
  });

  it('bounds the egress audit log: past the budget its lines become a summary in the same stream', async () => {
    const writes: string[] = [];
    const original = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((chunk: string) => {
      writes.push(String(chunk));
      return true;
    }) as typeof process.stdout.write;
    try {
      const log = openAuditLog(undefined, { run: 'r1', budget: { burst: 2, perSecond: 0.001, summaryMs: 60_000 } });
      const rec = { at: 1, client: 'c', method: 'GET', host: 'denied.test', port: 80, decision: 'deny' as const, rule: null, reason: 'no', bytes_up: 0, bytes_down: 0, duration_ms: 0 };
      for (let i = 0; i < 5; i++) log.write(rec);
      log.write({ ...rec, alarm: 'canary' });
      log.close();
    } finally {
      process.stdout.write = original;
    }
    const lines = writes.join('').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.filter((l) => l.decision === 'deny')).toHaveLength(2);
    expect(lines.filter((l) => l.type === 'audit.summary')).toEqual([expect.objectContaining({ source: 'egress', dropped: { deny: 3, 'alarm:canary': 1 }, run: 'r1' })]);
  });
});
