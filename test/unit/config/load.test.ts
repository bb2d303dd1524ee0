import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import { describeFsError } from '../../../config/files.js';
import {
  findManifest,
  formatIssues,
  loadManifest,
  ManifestInvalidError,
  parseManifestYaml,
  resolveManifestPath,
} from '../../../config/load.js';
import { CONTRACT_EXAMPLE } from './fixtures.js';

let root: string;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'bottle-load-'));
});

afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

describe('findManifest', () => {
  it('prefers bottle.yaml, then bottle.yml, and returns an absolute path', () => {
    writeFileSync(join(root, 'bottle.yml'), '');
    expect(findManifest(root)).toBe(join(root, 'bottle.yml'));
    writeFileSync(join(root, 'bottle.yaml'), '');
    expect(findManifest(root)).toBe(join(root, 'bottle.yaml'));
  });

  it('resolves an explicit file against cwd', () => {
    mkdirSync(join(root, 'sub'));
    writeFileSync(join(root, 'sub', 'other.yaml'), '');
    expect(findManifest(root, 'sub/other.yaml')).toBe(join(root, 'sub', 'other.yaml'));
  });

  it('fails with MANIFEST_NOT_FOUND and a bottle init hint', () => {
    const err = thrown(() => findManifest(root)) as BottleError;
    expect(err).toBeInstanceOf(BottleError);
    expect(err.code).toBe('MANIFEST_NOT_FOUND');
    expect(err.message).toContain(root);
    expect(err.hint).toContain('bottle init');
    expect(err.exitCode).toBe(2);

    const explicit = thrown(() => findManifest(root, 'nope.yaml')) as BottleError;
    expect(explicit.code).toBe('MANIFEST_NOT_FOUND');
    expect(explicit.message).toContain(join(root, 'nope.yaml'));
    mkdirSync(join(root, 'bottle.yaml'));
    expect((thrown(() => findManifest(root)) as BottleError).code).toBe('MANIFEST_NOT_FOUND');
  });
});

describe('resolveManifestPath', () => {
  it('expands ~ and resolves relative paths against the manifest folder', () => {
    expect(resolveManifestPath('/proj', './agent.Dockerfile', '/home/u')).toBe('/proj/agent.Dockerfile');
    expect(resolveManifestPath('/proj', 'skills/review', '/home/u')).toBe('/proj/skills/review');
    expect(resolveManifestPath('/proj', '~/.ssh/key', '/home/u')).toBe('/home/u/.ssh/key');
    expect(resolveManifestPath('/proj', '~', '/home/u')).toBe('/home/u');
    expect(resolveManifestPath('/proj', '/abs/file', '/home/u')).toBe('/abs/file');
    expect(resolveManifestPath('/proj', '~other/x', '/home/u')).toBe('/proj/~other/x');
  });
});

describe('parseManifestYaml', () => {
  it('reports a YAML syntax error with its line and column', () => {
    const result = parseManifestYaml('version: 1\nbottles:\n  web: {\nagents: {}\n');
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.issues).toHaveLength(1);
    expect(result.issues[0]?.path).toBe('(root)');
    expect(result.issues[0]?.message).toMatch(/^YAML syntax error at line \d+, column \d+: /);
  });

  it('reports duplicate keys and several documents as syntax errors', () => {
    const dup = parseManifestYaml('version: 1\nversion: 1\n');
    expect(!dup.ok && dup.issues[0]?.message).toMatch(/line 2, column 1: .*unique/);
    const multi = parseManifestYaml('version: 1\n---\nversion: 1\n');
    expect(!multi.ok && multi.issues[0]?.message).toMatch(/more than one YAML document/);
  });

  it('refuses an alias bomb instead of expanding it', () => {
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x]']
      .concat(['b', 'c', 'd', 'e'].map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcd'[i]}`).join(', ')}]`))
      .join('\n');
    const result = parseManifestYaml(bomb);
    expect(!result.ok && result.issues[0]?.message).toMatch(/alias/i);
  });

  it('refuses a YAML 1.1 merge key of anything but a map as an issue, not a crash', () => {
    for (const text of ['%YAML 1.1\n---\n<<: 1\n', '%YAML 1.1\n---\nversion: 1\n<<: [a, b]\n']) {
      const result = parseManifestYaml(text);
      expect(!result.ok && result.issues[0]).toEqual({ path: '(root)', message: 'YAML cannot be read: Merge sources must be maps or map aliases' });
    }
  });

  it('validates the parsed document', () => {
    expect(parseManifestYaml(CONTRACT_EXAMPLE).ok).toBe(true);
    const empty = parseManifestYaml('');
    expect(!empty.ok && empty.issues[0]?.path).toBe('(root)');
  });
});

describe('loadManifest', () => {
  const opts = { env: {}, homeDir: '/nonexistent-home', checkSecrets: false };

  it('returns the manifest with its absolute file and folder', async () => {
    const file = join(root, 'bottle.yaml');
    writeFileSync(file, CONTRACT_EXAMPLE);
    const loaded = await loadManifest(file, opts);
    expect(loaded.file).toBe(file);
    expect(loaded.dir).toBe(root);
    expect(Object.keys(loaded.manifest.agents)).toEqual(['coder']);
  });

  it('throws MANIFEST_INVALID listing every issue one per line', async () => {
    const file = join(root, 'bottle.yaml');
    writeFileSync(file, 'version: 2\nbottles: {web: {egress: {allow: ["https://x"]}}}\nagents: {coder: {bottle: nope}}\n');
    const err = (await rejection(loadManifest(file, opts))) as ManifestInvalidError;
    expect(err).toBeInstanceOf(ManifestInvalidError);
    expect(err).toBeInstanceOf(BottleError);
    expect(err.code).toBe('MANIFEST_INVALID');
    expect(err.exitCode).toBe(2);
    expect(err.issues.map((i) => i.path)).toEqual(['version', 'bottles.web.egress.allow[0]', 'agents.coder.bottle']);
    const lines = err.message.split('\n');
    expect(lines[0]).toContain(file);
    expect(lines.slice(1)).toEqual(err.issues.map((i) => `  - ${i.path}: ${i.message}`));
    expect(err.hint).toContain('bottle validate');
  });

  it('turns a YAML syntax error into a MANIFEST_INVALID issue', async () => {
    const file = join(root, 'bottle.yaml');
    writeFileSync(file, 'version: 1\n  bad indent: [\n');
    const err = (await rejection(loadManifest(file, opts))) as ManifestInvalidError;
    expect(err.code).toBe('MANIFEST_INVALID');
    expect(err.message).toMatch(/ {2}- \(root\): YAML syntax error at line \d+, column \d+/);
  });

  it('checks secrets only when asked, reporting each unreadable ref', async () => {
    const file = join(root, 'bottle.yaml');
    writeFileSync(file, CONTRACT_EXAMPLE);
    await expect(loadManifest(file, opts)).resolves.toBeDefined();
    const err = (await rejection(loadManifest(file, { ...opts, checkSecrets: true }))) as ManifestInvalidError;
    expect(err.code).toBe('MANIFEST_INVALID');
    expect(err.issues.map((i) => i.path)).toEqual([
      'bottles.web.cred_proxy.routes[0].token',
      'bottles.web.git[0].key',
      'bottles.web.git[0].known_hosts',
    ]);
    expect(err.message).toContain('/nonexistent-home/.ssh/bottle_ed25519');

    mkdirSync(join(root, 'home', '.ssh'), { recursive: true });
    writeFileSync(join(root, 'home', '.ssh', 'bottle_ed25519'), 'key\n');
    writeFileSync(join(root, 'home', '.ssh', 'known_hosts'), 'hosts\n');
    const ok = await loadManifest(file, { env: { ANTHROPIC_API_KEY: 'sk-test-0123456789' }, homeDir: join(root, 'home'), checkSecrets: true });
    expect(ok.manifest.bottles.web?.supervise).toBe(true);

    // A route token the cred-proxy could not inject or redact is refused by shape, never shown.
    const short = (await rejection(loadManifest(file, { env: { ANTHROPIC_API_KEY: 'k1' }, homeDir: join(root, 'home'), checkSecrets: true }))) as ManifestInvalidError;
    expect(short.issues).toEqual([{ path: 'bottles.web.cred_proxy.routes[0].token', message: expect.stringContaining('shorter than 8 characters') }]);
    expect(short.message).not.toContain('k1');
    for (const spaced of ['sk-test 0123456789', 'sk-test\t0123456789']) {
      const bad = (await rejection(loadManifest(file, { env: { ANTHROPIC_API_KEY: spaced }, homeDir: join(root, 'home'), checkSecrets: true }))) as ManifestInvalidError;
      expect(bad.issues).toEqual([{ path: 'bottles.web.cred_proxy.routes[0].token', message: expect.stringContaining('whitespace') }]);
      expect(bad.message).not.toContain('0123456789');
    }
  });

  it('throws MANIFEST_NOT_FOUND for a file that cannot be read', async () => {
    const err = (await rejection(loadManifest(join(root, 'missing.yaml'), opts))) as BottleError;
    expect(err.code).toBe('MANIFEST_NOT_FOUND');
    expect(err.message).toContain('ENOENT');
  });
});

describe('formatIssues and describeFsError', () => {
  it('renders one issue a line', () => {
    expect(formatIssues([{ path: 'a', message: 'b' }, { path: '(root)', message: 'c' }])).toBe('  - a: b\n  - (root): c');
  });

  it('names the OS reason and code', () => {
    const eacces = Object.assign(new Error("EACCES: permission denied, open '/x'"), { code: 'EACCES' });
    expect(describeFsError(eacces)).toBe('permission denied (EACCES)');
    const odd = Object.assign(new Error('odd'), { code: 'EIO' });
    expect(describeFsError(odd)).toBe('cannot be read (EIO)');
  });
});
