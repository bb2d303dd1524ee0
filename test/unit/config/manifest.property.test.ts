import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseManifestYaml } from '../../../config/load.js';
import { validateManifest } from '../../../config/manifest.js';
import { remote, route } from './fixtures.js';

function checkNeverThrows(doc: unknown): void {
  const result = validateManifest(doc);
  if (result.ok) return;
  expect(result.issues.length).toBeGreaterThan(0);
  for (const issue of result.issues) {
    expect(typeof issue.path).toBe('string');
    expect(issue.path).not.toBe('');
    expect(typeof issue.message).toBe('string');
    expect(issue.message).not.toBe('');
  }
}

const anything = fc.anything({
  withBigInt: true,
  withBoxedValues: true,
  withDate: true,
  withMap: true,
  withSet: true,
  withNullPrototype: true,
  withObjectString: true,
  withSparseArray: true,
  withTypedArray: true,
  withUnicodeString: true,
});

/** Keys that matter to the manifest, so random documents reach deep into the schema. */
const key = fc.oneof(
  fc.constantFrom('version', 'bottles', 'agents', 'web', 'coder', 'bottle', 'prompt', 'prompt_file', 'command', 'skills', 'image',
    'dockerfile', 'ref', 'runtime', 'egress', 'allow', 'git', 'name', 'upstream', 'key', 'known_hosts', 'token', 'ca', 'push',
    'cred_proxy', 'routes', 'path', 'inject', 'header', 'format', 'roles', 'supervise', 'env', 'value', 'from_host', 'file',
    '__proto__', 'constructor', 'toString', ''),
  fc.string(),
);
const leaf = fc.oneof(
  fc.constantFrom(1, 'web', 'anthropic-base-url', '/anthropic', 'https://api.example.com', 'ssh://git@h/r.git', 'api.example.com', '{token}', 'auto', true, null),
  fc.jsonValue({ maxDepth: 1 }),
);
const { tree } = fc.letrec((tie) => ({
  tree: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, fc.array(tie('tree'), { maxLength: 4 }), fc.dictionary(key, tie('tree'), { maxKeys: 5 })),
}));

/** Valid-looking manifests with random pieces swapped in. */
const nearlyValid = fc.record({
  version: fc.oneof(fc.constant(1), leaf),
  bottles: fc.dictionary(
    key,
    fc.record(
      {
        egress: fc.record({ allow: fc.array(fc.oneof(fc.string(), leaf), { maxLength: 4 }) }),
        git: fc.array(fc.oneof(fc.constant(remote()), fc.constant(remote({ upstream: 'ssh://git@h/r.git' })), tree), { maxLength: 3 }),
        cred_proxy: fc.record({ routes: fc.array(fc.oneof(fc.constant(route()), fc.constant(route({ roles: ['anthropic-base-url'] })), tree), { maxLength: 3 }) }),
        env: fc.dictionary(key, fc.oneof(fc.record({ value: fc.string() }), fc.record({ from_host: key }), tree), { maxKeys: 3 }),
        supervise: fc.oneof(fc.boolean(), leaf),
      },
      { requiredKeys: [] },
    ),
    { maxKeys: 3 },
  ),
  agents: fc.dictionary(key, fc.oneof(fc.record({ bottle: key, prompt: fc.string() }, { requiredKeys: [] }), tree), { maxKeys: 3 }),
});

describe('validateManifest on arbitrary input', () => {
  it('never throws, and every issue has a path and a message (anything)', () => {
    fc.assert(fc.property(anything, checkNeverThrows), { numRuns: 1000 });
  });

  it('never throws on arbitrary JSON', () => {
    fc.assert(fc.property(fc.jsonValue(), checkNeverThrows), { numRuns: 1000 });
    fc.assert(
      fc.property(fc.json(), (text) => {
        checkNeverThrows(JSON.parse(text));
      }),
      { numRuns: 500 },
    );
  });

  it('never throws on manifest-shaped trees and nearly valid manifests', () => {
    fc.assert(fc.property(tree, checkNeverThrows), { numRuns: 1000 });
    fc.assert(fc.property(nearlyValid, checkNeverThrows), { numRuns: 1000 });
  });

  it('never throws on arbitrary YAML text', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.jsonValue().map((v) => JSON.stringify(v, null, 2))), (text) => {
        const result = parseManifestYaml(text);
        if (!result.ok) for (const issue of result.issues) expect(issue.message).not.toBe('');
      }),
      { numRuns: 500 },
    );
  });

  it('is deterministic and does not mutate its input', () => {
    fc.assert(
      fc.property(nearlyValid, (doc) => {
        const before = JSON.stringify(doc);
        const first = validateManifest(doc);
        expect(JSON.stringify(doc)).toBe(before);
        expect(validateManifest(doc)).toEqual(first);
      }),
      { numRuns: 300 },
    );
  });
});
