import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseManifestYaml } from '../../../config/load.js';

/** The manifests under examples/ (what the README's demos run) stay valid. */

const EXAMPLES = join(import.meta.dirname, '../../../examples');

describe('examples', () => {
  const dirs = readdirSync(EXAMPLES, { withFileTypes: true }).filter((d) => d.isDirectory());
  it('has the demo and the capability review demo', () => {
    expect(dirs.map((d) => d.name).sort()).toEqual(expect.arrayContaining(['demo', 'review']));
  });
  for (const d of dirs) {
    it(`examples/${d.name}/bottle.yaml validates`, () => {
      const result = parseManifestYaml(readFileSync(join(EXAMPLES, d.name, 'bottle.yaml'), 'utf8'));
      expect(result.ok ? [] : result.issues).toEqual([]);
    });
  }
  it('the review demo runs the supervise sidecar', () => {
    const result = parseManifestYaml(readFileSync(join(EXAMPLES, 'review', 'bottle.yaml'), 'utf8'));
    expect(result.ok && result.manifest.bottles.review?.supervise).toBe(true);
  });
});
