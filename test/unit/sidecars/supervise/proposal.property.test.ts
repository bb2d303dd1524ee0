import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseEgressEntry } from '../../../../config/field-rules.js';
import { checkIncoming } from '../../../../machines/proposals.js';
import { parseProposalBody, proposalBody, type ValidProposal, validateProposal } from '../../../../sidecars/supervise/proposal.js';
import { lineText } from '../../../../sidecars/supervise/server.js';
import { runs } from '../../../support/property.js';
import { CURRENT, request, startSupervise } from './harness.js';

/**
 * Supervise proposals: the sidecar's check of the agent's request body
 * (sidecars/supervise/proposal.ts) and the host's check again of what the sidecar printed
 * (machines/proposals.ts checkIncoming). Neither throws on anything; every refusal names where;
 * and the two agree: a proposal the sidecar queues (telling the agent so) is never dropped by the
 * host in silence.
 */

const anything = fc.anything({ withBigInt: true, withDate: true, withMap: true, withSet: true, withNullPrototype: true, withSparseArray: true, withTypedArray: true, withUnicodeString: true });
const fullUnicode = fc.string({ unit: 'binary', maxLength: 60 });

/** Reasons a human may write: any text, minus what both sides refuse to show a terminal. */
const reason = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 120 });
const host = fc.domain().filter((d) => parseEgressEntry(d).ok);
const hosts = fc.uniqueArray(fc.oneof(host, host.map((h) => `*.${h}`), fc.tuple(host, fc.integer({ min: 1, max: 65535 })).map(([h, p]) => `${h}:${p}`)), {
  minLength: 1,
  maxLength: 6,
  selector: (h) => h.toLowerCase(),
}).filter((hs) => hs.every((h) => parseEgressEntry(h).ok));
const dockerfile = fc
  .tuple(fc.constantFrom('FROM debian', 'from x', '  FROM\timage:1'), fc.array(fc.string({ unit: 'grapheme', maxLength: 40 }), { maxLength: 5 }), fc.constant('\n'))
  .map(([from, lines, eol]) => [from, ...lines.map((l) => `RUN ${l}`)].join(eol));
const route = fc.record({
  path: fc.stringMatching(/^\/[a-z0-9]{1,10}(\/[a-z0-9._~-]{1,8}){0,2}$/).filter((p) => p !== '/healthz'),
  upstream: host.map((h) => `https://${h}`),
  inject: fc.record({ header: fc.constantFrom('Authorization', 'x-api-key'), format: fc.constantFrom('{token}', 'Bearer {token}') }),
  roles: fc.constantFrom([], ['anthropic-base-url']),
});

/** Bodies of each kind as the agent may send them. */
const body = fc.oneof(
  fc.record({ kind: fc.constant('allowlist'), reason, hosts }),
  fc.record({ kind: fc.constant('dockerfile'), reason, dockerfile }),
  fc.record({ kind: fc.constant('route'), reason, route }),
);

/** The line the sidecar prints for a queued proposal, as the host reads it back. */
function printed(p: ValidProposal): unknown {
  return JSON.parse(JSON.stringify({ id: 'pabcdefghij', kind: p.kind, reason: p.reason, change: p.change }));
}

function checkShape(p: ReturnType<typeof checkIncoming>): void {
  if (p === null) return;
  expect(typeof p.id).toBe('string');
  expect(['allowlist', 'dockerfile', 'route']).toContain(p.kind);
  expect(typeof p.reason).toBe('string');
}

function checkIssues(result: ReturnType<typeof validateProposal>): void {
  if (result.ok) return;
  expect(result.error).not.toBe('');
  expect(result.issues.length).toBeGreaterThan(0);
  for (const issue of result.issues) {
    expect(issue.path).not.toBe('');
    expect(issue.message).not.toBe('');
  }
}

describe('supervise proposals on arbitrary input', () => {
  it('the sidecar never throws, and every refusal has a path and a message', () => {
    fc.assert(fc.property(anything, (doc) => checkIssues(validateProposal(doc))), runs(300));
    fc.assert(fc.property(fc.oneof(fc.string(), fullUnicode, fc.json()), (text) => checkIssues(parseProposalBody(text))), runs(200));
  });

  it('near misses of valid bodies: a stray key, a swapped value, a missing field are refused with the path', () => {
    const mutated = fc.tuple(body, fc.constantFrom('extra', 'drop', 'swap'), fc.nat(), anything).map(([b, how, i, v]) => {
      const doc: Record<string, unknown> = { ...b };
      const keys = Object.keys(doc);
      const key = keys[i % keys.length]!;
      if (how === 'extra') doc.api_token = v;
      if (how === 'drop') delete doc[key];
      if (how === 'swap') doc[key] = v;
      return { doc, how, key };
    });
    fc.assert(
      fc.property(mutated, ({ doc, how, key }) => {
        const result = validateProposal(doc);
        checkIssues(result);
        if (how === 'extra') {
          expect(result.ok).toBe(false);
          if (!result.ok) expect(result.issues.some((i) => i.path === 'api_token' && /never carries a secret/.test(i.message))).toBe(true);
        }
        if (how === 'drop') {
          expect(result.ok).toBe(false);
          if (!result.ok) expect(result.issues.some((i) => i.path === key || i.path.startsWith(`${key}.`) || i.path === 'kind')).toBe(true);
        }
      }),
      runs(300),
    );
  });

  it('the host never throws on what the sidecar prints, whatever it prints', () => {
    const shaped = fc.record(
      { id: fc.oneof(fc.constant('pabcdefghij'), fc.string()), kind: fc.oneof(fc.constantFrom('allowlist', 'dockerfile', 'route'), anything), reason: fc.oneof(reason, anything), change: anything },
      { requiredKeys: [] },
    );
    fc.assert(fc.property(fc.oneof(anything, shaped), (value) => checkShape(checkIncoming(value))), runs(300));
  });

  it('the host never throws on deeply nested values (built in the test: the counterexample is the depth)', () => {
    const where = fc.constantFrom('change', 'hosts', 'route', 'key', 'root');
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 20_000 }), where, (depth, at) => {
        let v: unknown = 'x';
        for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { a: v };
        const base = { id: 'pabcdefghij', kind: 'allowlist', reason: 'r' };
        const value =
          at === 'root' ? v : at === 'change' ? { ...base, change: v } : at === 'hosts' ? { ...base, change: { hosts: [v] } } : at === 'route' ? { ...base, kind: 'route', change: { route: v } } : { ...base, change: { hosts: ['a.test'], extra: v } };
        checkShape(checkIncoming(value));
      }),
      runs(100),
    );
  });

  it('the host accepts every proposal the sidecar accepts, with the same content', () => {
    fc.assert(
      fc.property(body, (b) => {
        const result = validateProposal(b);
        fc.pre(result.ok);
        if (!result.ok) return;
        const p = checkIncoming(printed(result.proposal));
        expect(p, JSON.stringify(result.proposal)).not.toBeNull();
        expect(p).toEqual(printed(result.proposal));
        // The check is stable: the same proposal checked again is the same.
        expect(validateProposal(proposalBody(result.proposal))).toEqual(result);
      }),
      runs(300),
    );
  });

  it('text with a control or bidirectional character is refused by the sidecar with the path, and never reaches a human through the host', () => {
    const unsafe = fc.constantFrom('\u0000', '\u0007', '\u001b', '\r', '\u007f', '\u009b', '\u200e', '\u200f', '\u202e', '\u2066');
    const poisoned = fc.tuple(body, unsafe, fc.nat()).map(([b, ch, at]) => {
      const doc = structuredClone(b) as Record<string, unknown>;
      const r = doc.reason as string;
      doc.reason = `${r.slice(0, at % (r.length + 1))}${ch}${r.slice(at % (r.length + 1))}`;
      return doc;
    });
    fc.assert(
      fc.property(poisoned, (doc) => {
        const result = validateProposal(doc);
        expect(result.ok, JSON.stringify(doc.reason)).toBe(false);
        if (!result.ok) expect(result.issues.map((i) => i.path)).toContain('reason');
        expect(checkIncoming({ id: 'pabcdefghij', kind: doc.kind, reason: doc.reason, change: {} })).toBeNull();
      }),
      runs(200),
    );
    // A Dockerfile with CRLF line ends: refused with its path, as the host would drop it.
    fc.assert(
      fc.property(dockerfile, (text) => {
        const crlf = text.replaceAll('\n', '\r\n');
        fc.pre(crlf !== text);
        const result = validateProposal({ kind: 'dockerfile', reason: 'r', dockerfile: crlf });
        expect(result.ok).toBe(false);
        if (!result.ok) expect(result.issues.map((i) => i.path)).toEqual(['dockerfile']);
        expect(checkIncoming({ id: 'pabcdefghij', kind: 'dockerfile', reason: 'r', change: { dockerfile: crlf } })).toBeNull();
      }),
      runs(50),
    );
  });
});

describe('supervise server on loopback: arbitrary requests', () => {
  it('a 201 exactly for a valid body, its one line accepted by the host as is; a 400 names every problem; never a 5xx', async () => {
    const sv = await startSupervise({ current: CURRENT, limit: 1_000 });
    const requestBody = fc.oneof(
      body.map((b) => JSON.stringify(b)),
      fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
      fc.tuple(body, fc.constantFrom('\r', '\u200e', '\u0000', '\u202e')).map(([b, ch]) => JSON.stringify({ ...b, reason: `${b.reason}${ch}` })),
      fc.string({ maxLength: 40 }),
    );
    const statuses = new Set<number>();
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('POST', 'PUT', 'GET'), fc.constantFrom('/proposals', '/proposals/', '/proposals?x=1', '/other'), requestBody, async (method, path, text) => {
        const before = sv.lines.length;
        const reply = await request(sv.port, path, { method, body: method === 'GET' ? undefined : text, headers: { 'content-type': 'application/json' } });
        expect(reply.status).toBeLessThan(500);
        statuses.add(reply.status);
        const lines = sv.lines.slice(before);
        const proposals = lines.filter((l) => l.type === 'proposal');
        if (reply.status === 201) {
          expect(validateProposal(JSON.parse(text)).ok).toBe(true);
          expect(proposals).toHaveLength(1);
          // As the host reads it: the line's text, parsed, checked again.
          const read = JSON.parse(lineText(proposals[0]!)) as { proposal: unknown };
          expect(checkIncoming(read.proposal)).toEqual(read.proposal);
        } else {
          expect(proposals).toHaveLength(0);
        }
        if (reply.status === 400) {
          expect(reply.json?.error).toEqual(expect.any(String));
          if (method === 'POST' && path.startsWith('/proposals')) expect(reply.json.issues.length).toBeGreaterThan(0);
        }
      }),
      runs(150),
    );
    // The generator reaches every answer: queued, refused, wrong method, unknown path.
    for (const status of [201, 400, 404, 405]) expect(statuses).toContain(status);
  });
});
