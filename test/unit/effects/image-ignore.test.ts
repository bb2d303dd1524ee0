import * as fsp from 'node:fs/promises';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { CONTEXT_DOCKERFILE, CONTEXT_DOCKERIGNORE, collectContext } from '../../../effects/docker/image-context.js';
import { dockerignoreMatcher, ignoreMatcher } from '../../../effects/docker/image-ignore.js';

// Every directory the context walk reads, to check what it never enters.
vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  return { ...actual, readdir: vi.fn(actual.readdir) };
});

const dirs: string[] = [];

async function tree(files: Record<string, string>): Promise<string> {
  const root = await mkdtemp(path.join(tmpdir(), 'bbt-ignore-'));
  dirs.push(root);
  for (const [rel, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(root, rel)), { recursive: true });
    await writeFile(path.join(root, rel), content);
  }
  return root;
}

afterEach(async () => {
  vi.mocked(fsp.readdir).mockClear();
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function contextPaths(source: Parameters<typeof collectContext>[0]): Promise<string[]> {
  const entries = await collectContext(source, 'FROM scratch\n');
  return entries.map((e) => (e.type === 'dir' ? `${e.path}/` : e.path)).filter((p) => p !== CONTEXT_DOCKERFILE && p !== CONTEXT_DOCKERIGNORE);
}

function readDirs(root: string): string[] {
  return vi
    .mocked(fsp.readdir)
    .mock.calls.map(([p]) => path.relative(root, String(p)))
    .filter((p) => !p.startsWith('..'));
}

describe('.bottleignore (gitignore syntax)', () => {
  const m = ignoreMatcher(['# comment', '', 'secret.env', '*.log', '!keep.log', 'node_modules/', '/build', 'docs/**/*.pdf', 'a?c']);

  it.each([
    ['secret.env', false, true],
    ['deep/er/secret.env', false, true],
    ['x.log', false, true],
    ['logs/x.log', false, true],
    ['keep.log', false, false],
    ['node_modules', true, true],
    ['node_modules', false, false],
    ['pkg/node_modules', true, true],
    ['build', true, true],
    ['src/build', true, false],
    ['docs/a/b/c.pdf', false, true],
    ['docs/c.pdf', false, true],
    ['other/c.pdf', false, false],
    ['abc', false, true],
    ['abbc', false, false],
    ['src/main.ts', false, false],
    ['.git', true, false],
  ])('%s (dir: %s) ignored: %s', (p, isDir, expected) => {
    expect(m.ignores(p, isDir)).toBe(expected);
  });

  it('never re-includes below an excluded directory, so the walk does not enter it (as git)', async () => {
    const root = await tree({ 'build/keep.txt': 'k', 'build/other.txt': 'o', 'src/a.ts': 'a' });
    const lines = ['build/', '!build/keep.txt'];
    expect(ignoreMatcher(lines).mayReinclude('build')).toBe(false);
    expect(await contextPaths({ dir: root, ignore: lines })).toEqual(['src/', 'src/a.ts']);
    expect(readDirs(root)).not.toContain('build');
  });
});

describe('.dockerignore (Docker semantics)', () => {
  it('anchors every pattern at the context root and matches what lies below a matched folder', () => {
    const d = dockerignoreMatcher('# c\nnode_modules\n./dist/\n!dist/keep\n*.md\n');
    expect(d.ignores('node_modules', true)).toBe(true);
    expect(d.ignores('node_modules/pkg/index.js', false)).toBe(true);
    expect(d.ignores('sub/node_modules', true)).toBe(false);
    expect(d.ignores('README.md', false)).toBe(true);
    expect(d.ignores('docs/README.md', false)).toBe(false);
    expect(d.ignores('dist', true)).toBe(true);
    expect(d.ignores('dist/app.js', false)).toBe(true);
    expect(d.ignores('dist/keep', false)).toBe(false);
  });

  it.each([
    // [.dockerignore, path, ignored]
    ['**/node_modules', 'a/b/node_modules/x.js', true],
    ['**/*.log', 'x.log', true],
    ['**/*.log', 'a/b/x.log', true],
    ['*/temp*', 'somedir/temporary.txt', true],
    ['*/temp*', 'temp', false],
    ['temp?', 'temp1', true],
    ['*.md\n!README*.md', 'CHANGES.md', true],
    ['*.md\n!README*.md', 'README-secret.md', false],
    ['*.md\n!README*.md\nREADME-secret.md', 'README-secret.md', true],
    ['/secret', 'secret', true],
    ['secret/', 'secret/x', true],
    // Case matters on Linux, as for the daemon.
    ['README.md', 'readme.md', false],
    // The Dockerfile may be excluded like any other file (the builder sends its own).
    ['Dockerfile', 'Dockerfile', true],
  ])('%j: %s ignored: %s', (text, p, expected) => {
    expect(dockerignoreMatcher(text).ignores(p, false)).toBe(expected);
  });

  it('enters an excluded folder only when a `!` pattern names a path under it (the rule of Docker’s own context walk)', () => {
    const d = dockerignoreMatcher('build\n!build/keep.txt\nnode_modules\nout\n!out/a/b\n');
    expect(d.mayReinclude('build')).toBe(true);
    expect(d.mayReinclude('build/sub')).toBe(false);
    expect(d.mayReinclude('node_modules')).toBe(false);
    expect(d.mayReinclude('out')).toBe(true);
    expect(d.mayReinclude('out/a')).toBe(true);
    expect(d.mayReinclude('out/c')).toBe(false);
    expect(dockerignoreMatcher('build\n').mayReinclude('build')).toBe(false);
    // Docker compares the pattern's text: a wildcard before the folder does not make it enter.
    expect(dockerignoreMatcher('build\n!*/keep.txt\n').mayReinclude('build')).toBe(false);
  });

  it('`build` + `!build/keep.txt` takes build/keep.txt and nothing else of build/, and never reads node_modules', async () => {
    const root = await tree({
      'build/keep.txt': 'k',
      'build/other.txt': 'o',
      'build/sub/keep.txt': 's',
      'node_modules/pkg/index.js': 'x',
      'src/a.ts': 'a',
      'src/b.md': 'b',
      'README.md': 'r',
    });
    const dockerignore = 'build\n!build/keep.txt\nnode_modules\n*.md\n!README.md\n';
    expect(await contextPaths({ sources: [{ dir: root, dockerignore }] })).toEqual(['README.md', 'build/', 'build/keep.txt', 'src/', 'src/a.ts', 'src/b.md']);
    const read = readDirs(root);
    expect(read).toContain('build');
    expect(read).not.toContain('build/sub');
    expect(read.filter((p) => p.startsWith('node_modules'))).toEqual([]);
  });

  it('leaves out build/keep.txt for `build` + `!*/keep.txt`, as docker build does (its walk does not enter build/)', async () => {
    const root = await tree({ 'build/keep.txt': 'k', 'build/sub/keep.txt': 's', 'a.txt': 'a' });
    expect(await contextPaths({ sources: [{ dir: root, dockerignore: 'build\n!*/keep.txt\n' }] })).toEqual(['a.txt']);
    expect(readDirs(root)).not.toContain('build');
  });
});
