import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  envNameProblem,
  gitUpstreamProblem,
  parseEgressEntry,
  refPatternProblem,
  routePathKey,
  routePathProblem,
  routeUpstreamProblem,
} from '../../../config/field-rules.js';

const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/);
const hostname = fc.array(label, { minLength: 1, maxLength: 3 }).map((labels) => labels.join('.'));
const domain = fc.array(label, { minLength: 2, maxLength: 3 }).map((labels) => labels.join('.'));
const port = fc.integer({ min: 1, max: 65535 });

function accepted(raw: string): string {
  const result = parseEgressEntry(raw);
  if (!result.ok) throw new Error(`${JSON.stringify(raw)} rejected: ${result.message}`);
  return result.entry;
}

function rejected(raw: string): string {
  const result = parseEgressEntry(raw);
  if (result.ok) throw new Error(`${JSON.stringify(raw)} accepted as ${result.entry}`);
  return result.message;
}

describe('parseEgressEntry', () => {
  it('accepts hosts, host:port and *.domain', () => {
    expect(accepted('api.anthropic.com')).toBe('api.anthropic.com');
    expect(accepted('registry.npmjs.org:443')).toBe('registry.npmjs.org:443');
    expect(accepted('*.githubusercontent.com')).toBe('*.githubusercontent.com');
    expect(accepted('localhost')).toBe('localhost');
    expect(accepted('10.0.0.1:8080')).toBe('10.0.0.1:8080');
    expect(accepted('API.Example.COM')).toBe('api.example.com');
  });

  it('rejects everything else with a reason', () => {
    expect(rejected('')).toMatch(/empty/);
    expect(rejected('https://api.example.com')).toMatch(/not a URL/);
    expect(rejected('api.example.com/v1')).toMatch(/path/);
    expect(rejected('api .example.com')).toMatch(/whitespace/);
    expect(rejected('*.com')).toMatch(/two labels/);
    expect(rejected('*')).toMatch(/wildcard/);
    expect(rejected('*.example.com:443')).toMatch(/no port/);
    expect(rejected('a.*.example.com')).toMatch(/whole first label/);
    expect(rejected('*api.example.com')).toMatch(/whole first label/);
    expect(rejected('**.example.com')).toMatch(/label/);
    expect(rejected('example.com.')).toMatch(/empty label/);
    expect(rejected('.example.com')).toMatch(/empty label/);
    expect(rejected('-bad.example.com')).toMatch(/label/);
    expect(rejected('under_score.example.com')).toMatch(/label/);
    expect(rejected('example.com:0')).toMatch(/1 to 65535/);
    expect(rejected('example.com:65536')).toMatch(/1 to 65535/);
    expect(rejected('example.com:')).toMatch(/1 to 65535/);
    expect(rejected('example.com:08')).toMatch(/1 to 65535/);
    expect(rejected(':443')).toMatch(/host/);
    expect(rejected('[::1]:443')).toMatch(/IPv6/);
    expect(rejected('\u212Aexample.com')).toMatch(/ASCII/);
    expect(rejected('bücher.example')).toMatch(/xn--/);
    expect(rejected(`${'a'.repeat(64)}.example.com`)).toMatch(/label/);
    expect(rejected(`${'a.'.repeat(127)}ab`)).toMatch(/253/);
  });

  it('accepts every generated host, host:port and *.domain, lowercased', () => {
    fc.assert(
      fc.property(hostname, fc.option(port, { nil: undefined }), (host, p) => {
        const raw = p === undefined ? host : `${host}:${p}`;
        expect(accepted(raw)).toBe(raw);
      }),
    );
    fc.assert(
      fc.property(domain, (d) => {
        expect(accepted(`*.${d}`)).toBe(`*.${d}`);
      }),
    );
    fc.assert(
      fc.property(hostname.chain((h) => fc.mixedCase(fc.constant(h))), (raw) => {
        expect(accepted(raw)).toBe(raw.toLowerCase());
      }),
    );
  });

  it('rejects a scheme, a path, a bad port, a one-label wildcard and an inner wildcard', () => {
    fc.assert(
      fc.property(hostname, fc.constantFrom('http://', 'https://', 'HTTP://'), (h, scheme) => {
        rejected(`${scheme}${h}`);
      }),
    );
    fc.assert(
      fc.property(hostname, fc.string(), (h, path) => {
        rejected(`${h}/${path}`);
      }),
    );
    fc.assert(
      fc.property(hostname, fc.oneof(fc.constant(0), fc.integer({ min: 65536, max: 10_000_000 })), (h, p) => {
        rejected(`${h}:${p}`);
      }),
    );
    fc.assert(
      fc.property(label, (l) => {
        rejected(`*.${l}`);
      }),
    );
    fc.assert(
      fc.property(label, domain, (first, rest) => {
        rejected(`${first}.*.${rest}`);
      }),
    );
  });

  it('on any input: never throws, and what it accepts is normalized and stable', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ unit: 'grapheme' }), fc.stringMatching(/^[a-zA-Z0-9.*:\-/ ]{0,30}$/)), (raw) => {
        const result = parseEgressEntry(raw);
        if (result.ok) {
          expect(result.entry).toBe(result.entry.toLowerCase());
          expect(result.entry).not.toMatch(/[\s/]/);
          expect(result.entry.indexOf('*')).toBeLessThanOrEqual(0);
          expect(parseEgressEntry(result.entry)).toEqual(result);
        } else {
          expect(result.message).not.toBe('');
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('other single-value rules', () => {
  it('env names', () => {
    for (const ok of ['A', '_x', 'LOG_LEVEL', 'a1']) expect(envNameProblem(ok)).toBeUndefined();
    for (const bad of ['', '1A', 'A-B', 'A B', 'A=B', 'É']) expect(envNameProblem(bad)).toBeDefined();
  });

  it('route paths and their comparison key', () => {
    for (const ok of ['/', '/anthropic', '/a/b', '/a/', '/v1.2_x~y']) expect(routePathProblem(ok)).toBeUndefined();
    for (const bad of ['', 'a', '/a//b', '/./a', '/a/..', '/a?b', '/a#b', '/a b', '/%2e%2e']) {
      expect(routePathProblem(bad), bad).toBeDefined();
    }
    expect(routePathKey('/a/')).toBe(routePathKey('/a'));
    expect(routePathKey('/')).toBe('/');
  });

  it('route upstreams', () => {
    for (const ok of ['https://api.anthropic.com', 'http://svc:8080/api']) expect(routeUpstreamProblem(ok)).toBeUndefined();
    for (const bad of ['api.anthropic.com', 'ftp://x', 'file:///etc/passwd', 'https://u@h', 'https://h/?q=1', 'https://h/#f']) {
      expect(routeUpstreamProblem(bad), bad).toBeDefined();
    }
  });

  it('git upstreams', () => {
    for (const ok of ['ssh://git@github.com/me/app.git', 'https://h/r.git', 'http://h:8080/r', 'https://user@h/r.git']) {
      expect(gitUpstreamProblem(ok), ok).toBeUndefined();
    }
    for (const bad of ['git@github.com:me/app.git', 'github.com:me/app.git', 'file:///repo', 'git://h/r', 'ssh://h', 'https://u:p@h/r']) {
      expect(gitUpstreamProblem(bad), bad).toBeDefined();
    }
  });

  it('push ref patterns', () => {
    for (const ok of ['main', 'agent/*', 'refs/heads/agent/*', 'feature-*']) expect(refPatternProblem(ok), ok).toBeUndefined();
    for (const bad of ['', '+main', '-x', 'a b', 'a..b', 'a:b', 'a^', 'a~1', 'a?', 'a[b', 'a\\b', '/a', 'a/', 'a//b', 'a@{1}']) {
      expect(refPatternProblem(bad), bad).toBeDefined();
    }
  });
});
