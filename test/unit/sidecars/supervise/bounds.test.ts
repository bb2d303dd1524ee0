import { describe, expect, it } from 'vitest';
import { CURRENT, propose, replaceHostFile, request, startSupervise } from './harness.js';

/**
 * Proposals are bounded per bottle: a number pending (not yet decided by the human) and a
 * number a minute. Past either the agent gets 429 with a JSON error saying which bound and what
 * to do, nothing is queued, and the host is told only that a proposal was refused.
 */
const allow = (i: number) => ({ kind: 'allowlist', reason: `host ${i}`, hosts: [`h${i}.example.com`] });

describe('supervise: proposal bounds', () => {
  it('refuses the 101st pending proposal with 429, and accepts again once some are decided', async () => {
    const s = await startSupervise({ current: CURRENT, perMinute: 1000 });
    const ids: string[] = [];
    for (let i = 0; i < 100; i++) {
      const r = await propose(s.port, allow(i));
      expect(r.status).toBe(201);
      ids.push(r.json.id);
    }
    const refused = await propose(s.port, allow(100));
    expect(refused.status).toBe(429);
    expect(refused.headers['content-type']).toContain('application/json');
    expect(refused.json).toMatchObject({ limit: 'pending', pending: 100, max_pending: 100 });
    expect(refused.json.error).toMatch(/too many pending proposals: 100 wait for the human .* wait until some are decided/);
    expect(s.lines.filter((l) => l.type === 'proposal')).toHaveLength(100);
    expect(s.lines.at(-1)).toMatchObject({ type: 'rejected', status: 429 });
    expect(((await request(s.port, '/proposals')).json as unknown[]).length).toBe(100);

    // The human decides two: two more fit.
    replaceHostFile(s.dir, 'decisions.json', { decisions: [ { id: ids[0], status: 'denied', reason: 'no' }, { id: ids[1], status: 'approved' } ] });
    expect((await propose(s.port, allow(101))).status).toBe(201);
    expect((await propose(s.port, allow(102))).status).toBe(201);
    expect((await propose(s.port, allow(103))).status).toBe(429);
  });

  it('refuses past the rate with 429 and Retry-After, and accepts again a minute later', async () => {
    let t = Date.parse('2026-12-04T10:00:00Z');
    const s = await startSupervise({ current: CURRENT, perMinute: 3, now: () => new Date(t) });
    for (let i = 0; i < 3; i++) expect((await propose(s.port, allow(i))).status).toBe(201);
    t += 20_000;
    const refused = await propose(s.port, allow(3));
    expect(refused.status).toBe(429);
    expect(refused.json).toMatchObject({ limit: 'rate', per_minute: 3, retry_after_s: 40 });
    expect(refused.headers['retry-after']).toBe('40');
    expect(refused.json.error).toMatch(/at most 3 a minute; try again in 40 s/);
    t += 40_000;
    expect((await propose(s.port, allow(4))).status).toBe(201);
  });

  it('still answers a bad proposal with 400 (checked before the bounds)', async () => {
    const s = await startSupervise({ current: CURRENT, pendingLimit: 1 });
    expect((await propose(s.port, allow(0))).status).toBe(201);
    expect((await propose(s.port, { kind: 'allowlist', reason: 'r', hosts: ['not a host'] })).status).toBe(400);
    expect((await propose(s.port, allow(1))).status).toBe(429);
  });
});
