import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { parseCurrent, parseDecisions, WatchedJsonFile } from '../../../../sidecars/supervise/host-files.js';
import { runs } from '../../../support/property.js';

/**
 * The files the host puts into the supervise sidecar (sidecars/supervise/host-files.ts):
 * current.json and decisions.json may be anything at any time. Parsing never throws; a file
 * that cannot be used is reported and the last good content stays in force, through any
 * sequence of good, bad, missing and not-a-file versions.
 */

const anything = fc.anything({ withNullPrototype: true, withSparseArray: true, withUnicodeString: true });
const route = fc.record({ path: fc.string(), upstream: fc.string(), inject: fc.record({ header: fc.string(), format: fc.string() }), roles: fc.array(fc.string(), { maxLength: 2 }) }, { requiredKeys: ['path', 'upstream', 'inject'] });
const current = fc.record({ dockerfile: fc.option(fc.string(), { nil: null }), allowlist: fc.array(fc.domain(), { maxLength: 3 }), routes: fc.array(route, { maxLength: 2 }) });
const decision = fc.record(
  { id: fc.string({ minLength: 1, maxLength: 12 }), status: fc.constantFrom('approved', 'denied', 'failed'), reason: fc.string(), error: fc.oneof(fc.string(), fc.record({ code: fc.string(), message: fc.string() })), at: fc.oneof(fc.string(), fc.integer()) },
  { requiredKeys: ['id', 'status'] },
);

describe('supervise host files on arbitrary input', () => {
  it('parseCurrent and parseDecisions never throw, and say why they refuse', () => {
    const decisionsDoc = fc.record({ decisions: fc.array(fc.oneof(decision, anything), { maxLength: 5 }) }, { requiredKeys: [] });
    fc.assert(
      fc.property(fc.oneof(anything, current, decisionsDoc, current.map((c) => ({ ...c, allowlist: 'x' }))), (doc) => {
        for (const r of [parseCurrent(doc), parseDecisions(doc)]) if (!r.ok) expect(r.message).toMatch(/^does not hold the expected fields: \S/);
      }),
      runs(300),
    );
  });

  it('decisions: every understood entry is kept (the last one per id), every other one counted as skipped', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(decision, anything), { maxLength: 8 }), (entries) => {
        const r = parseDecisions({ decisions: entries });
        expect(r.ok).toBe(true);
        if (!r.ok) return;
        const understood = entries.filter((e) => parseDecisions({ decisions: [e] }).ok && (parseDecisions({ decisions: [e] }) as { value: { skipped: number } }).value.skipped === 0);
        expect(r.value.skipped).toBe(entries.length - understood.length);
        expect(r.value.byId.size).toBe(new Set(understood.map((e) => (e as { id: string }).id)).size);
        for (const d of r.value.byId.values()) expect(['approved', 'denied', 'failed']).toContain(d.status);
      }),
      runs(200),
    );
  });
});

describe('supervise host files: the last good content stays in force', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bottle-hostfiles-prop-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;

  type Version = { kind: 'good'; doc: unknown } | { kind: 'bad'; text: string } | { kind: 'missing' } | { kind: 'folder' };
  const version: fc.Arbitrary<Version> = fc.oneof(
    current.map((doc): Version => ({ kind: 'good', doc })),
    fc.oneof(fc.string({ maxLength: 20 }), fc.constant('{"dockerfile": 1}'), fc.constant('[]')).map((text): Version => ({ kind: 'bad', text })),
    fc.constant<Version>({ kind: 'missing' }),
    fc.constant<Version>({ kind: 'folder' }),
  );

  it('through any sequence of versions (each put in place by rename, as the archive API does)', () => {
    fc.assert(
      fc.property(fc.array(version, { minLength: 1, maxLength: 8 }), (versions) => {
        const file = join(dir, `current-${++n}.json`);
        const loads: unknown[] = [];
        const errors: string[] = [];
        const watched = new WatchedJsonFile(file, parseCurrent, { onLoad: (v) => loads.push(v), onError: (m) => errors.push(m) });
        let good: unknown;
        for (const [i, v] of versions.entries()) {
          rmSync(file, { recursive: true, force: true });
          if (v.kind === 'folder') mkdirSync(file);
          else if (v.kind !== 'missing') {
            const tmp = `${file}.${i}.tmp`;
            writeFileSync(tmp, v.kind === 'good' ? JSON.stringify(v.doc) : v.text);
            renameSync(tmp, file);
          }
          const value = watched.value();
          const usable = v.kind === 'good' || (v.kind === 'bad' && parseCurrent(safeJson(v.text)).ok);
          if (usable) good = v.kind === 'good' ? JSON.parse(JSON.stringify(v.doc)) : safeJson((v as { text: string }).text);
          expect(value).toEqual(good);
          const problem = watched.error();
          if (usable) expect(problem).toBeUndefined();
          else expect(problem).toMatch(/^(does not exist|is not a regular file|is not valid JSON|does not hold the expected fields)/);
        }
        for (const e of errors) expect(e).not.toBe('');
      }),
      runs(150),
    );
  });
});

function safeJson(t: string): unknown {
  try {
    return JSON.parse(t);
  } catch {
    return undefined;
  }
}
