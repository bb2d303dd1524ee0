import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import { findManifest, loadManifest } from '../../../config/load.js';
import { runs } from '../../support/property.js';

/**
 * Loading bottle.yaml from disk (config/load.ts): whatever bytes the file holds (binary, a BOM,
 * YAML tags and anchors, deep nesting, several documents), loading gives a manifest or a
 * BottleError with a stable code whose message names the file; nothing else escapes.
 */

const dir = mkdtempSync(join(tmpdir(), 'bottle-load-prop-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const opts = { env: {}, homeDir: dir, checkSecrets: false };

const valid = 'version: 1\nbottles:\n  web:\n    egress:\n      allow: [api.example.com]\nagents:\n  coder:\n    bottle: web\n    prompt: hi\n';
const yamlBits = fc.constantFrom(
  '---\n',
  '...\n',
  '\uFEFF',
  '!!binary aGVsbG8=',
  '!!set {a, b}',
  '!!timestamp 2001-12-14',
  '&a [*a]',
  '*nowhere',
  '<<: *x',
  '? [a]\n: b\n',
  '\t',
  '%YAML 1.1\n---\n',
  '!custom x',
  'key: "unterminated',
  'a: b: c',
  `${'['.repeat(2000)}${']'.repeat(2000)}`,
  `${'- '.repeat(300)}x`,
);
const text = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 200 }),
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  fc.array(fc.oneof(yamlBits, fc.string({ maxLength: 20 })), { maxLength: 6 }).map((parts) => parts.join('\n')),
  fc.tuple(fc.nat({ max: valid.length }), fc.oneof(yamlBits, fc.string({ maxLength: 10 }))).map(([at, bit]) => `${valid.slice(0, at)}${bit}${valid.slice(at)}`),
);

describe('loading manifest files with arbitrary content', () => {
  it('gives a manifest or MANIFEST_INVALID naming the file, never another error', async () => {
    await fc.assert(
      fc.asyncProperty(text, async (content) => {
        const file = join(dir, `m-${++n}`, 'bottle.yaml');
        mkdirSync(join(dir, `m-${n}`));
        writeFileSync(file, content);
        try {
          const loaded = await loadManifest(file, opts);
          expect(loaded.file).toBe(file);
        } catch (err) {
          expect(err).toBeInstanceOf(BottleError);
          expect((err as BottleError).code).toBe('MANIFEST_INVALID');
          expect((err as BottleError).message.startsWith(`${file} is not a valid manifest:\n  - `)).toBe(true);
          expect((err as BottleError).hint).toMatch(/^Try: /);
        }
      }),
      runs(200),
    );
  });

  it('a folder or nothing where the manifest should be is MANIFEST_NOT_FOUND', async () => {
    const d = join(dir, 'folder-case');
    mkdirSync(join(d, 'bottle.yaml'), { recursive: true });
    expect(() => findManifest(d)).toThrow(expect.objectContaining({ code: 'MANIFEST_NOT_FOUND' }));
    expect(() => findManifest(d, 'bottle.yaml')).toThrow(expect.objectContaining({ code: 'MANIFEST_NOT_FOUND' }));
    await expect(loadManifest(join(d, 'bottle.yaml'), opts)).rejects.toMatchObject({ code: 'MANIFEST_NOT_FOUND' });
    await expect(loadManifest(join(d, 'missing.yaml'), opts)).rejects.toMatchObject({ code: 'MANIFEST_NOT_FOUND' });
  });
});
