import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { CONTEXT_DOCKERFILE, collectContext, contentTag, contextTar } from '../../../effects/docker/image-context.js';
import { readProgressStream } from '../../../effects/docker/image-stream.js';
import { splitTag } from '../../../effects/docker/images.js';

// Pure parts of the image code (no Docker): content tags, the tar writer read by GNU tar.

const run = promisify(execFile);
const dirs: string[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bbt-images-ctx-'));
  dirs.push(dir);
  return dir;
}

async function writeTree(root: string, files: Record<string, string>): Promise<void> {
  for (const [rel, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(root, rel)), { recursive: true });
    await writeFile(path.join(root, rel), content);
  }
}

afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

// Ignore rules (.bottleignore and .dockerignore) are pinned in test/unit/effects/image-ignore.test.ts.

describe('content tags', () => {
  it('are stable, independent of where the context lives, and follow content, mode, args and Dockerfile', async () => {
    const a = await tempDir();
    const b = await tempDir();
    await writeTree(a, { 'x.txt': 'one', 'sub/y.txt': 'two' });
    await writeTree(b, { 'x.txt': 'one', 'sub/y.txt': 'two' });
    const df = 'FROM scratch\n';
    const tagA = await contentTag('t/r', { dockerfile: df, context: { dir: a } });
    expect(tagA).toMatch(/^t\/r:[0-9a-f]{16}$/);
    expect(await contentTag('t/r', { dockerfile: df, context: { dir: a } })).toBe(tagA);
    expect(await contentTag('t/r', { dockerfile: df, context: { dir: b } })).toBe(tagA);

    await writeFile(path.join(b, 'x.txt'), 'changed');
    const changed = await contentTag('t/r', { dockerfile: df, context: { dir: b } });
    expect(changed).not.toBe(tagA);

    await writeFile(path.join(b, 'x.txt'), 'one');
    expect(await contentTag('t/r', { dockerfile: df, context: { dir: b } })).toBe(tagA);
    await chmod(path.join(b, 'x.txt'), 0o755);
    expect(await contentTag('t/r', { dockerfile: df, context: { dir: b } })).not.toBe(tagA);
    // Group-write or other umask noise does not count: modes are normalised as git does.
    await chmod(path.join(b, 'x.txt'), 0o664);
    expect(await contentTag('t/r', { dockerfile: df, context: { dir: b } })).toBe(tagA);

    expect(await contentTag('t/r', { dockerfile: df, buildArgs: { BASE: 'x' }, context: { dir: a } })).not.toBe(tagA);
    expect(await contentTag('t/r', { dockerfile: 'FROM scratch\nLABEL a=b\n', context: { dir: a } })).not.toBe(tagA);
    expect(await contentTag('t/r', { dockerfile: df, context: { dir: a, ignore: ['sub/'] } })).not.toBe(tagA);
  });

  it('keeps symlinks as links and never follows them out of the context', async () => {
    const dir = await tempDir();
    await writeTree(dir, { 'a.txt': 'a' });
    await symlink('/etc/passwd', path.join(dir, 'passwd'));
    const entries = await collectContext({ dir }, 'FROM scratch\n');
    expect(entries.find((e) => e.path === 'passwd')).toEqual({ type: 'symlink', path: 'passwd', target: '/etc/passwd' });
  });

  it('refuses two sources that claim the same path', async () => {
    const dir = await tempDir();
    await writeTree(dir, { 'a.txt': 'a' });
    await expect(collectContext({ sources: [{ dir }, { content: 'b', at: 'a.txt' }] }, 'FROM scratch\n')).rejects.toMatchObject({ code: 'BUILD_FAILED' });
  });
});

describe('tar writer', () => {
  it('writes an archive GNU tar reads, with modes, links, empty dirs and long names', async () => {
    const dir = await tempDir();
    const long = `${'deep/'.repeat(30)}file.txt`;
    await writeTree(dir, { 'run.sh': '#!/bin/sh\n', [long]: 'long' });
    await chmod(path.join(dir, 'run.sh'), 0o755);
    await mkdir(path.join(dir, 'empty'));
    await symlink('run.sh', path.join(dir, 'link'));
    const entries = await collectContext({ sources: [{ dir, at: 'ctx' }] }, 'FROM scratch\n');
    const archive = path.join(await tempDir(), 'ctx.tar');
    await writeFile(archive, await buffer(contextTar(entries)));

    const { stdout } = await run('tar', ['-tvf', archive]);
    expect(stdout).toMatch(/^-rwxr-xr-x 0\/0 .* ctx\/run\.sh$/m);
    expect(stdout).toMatch(/^drwxr-xr-x 0\/0 .* ctx\/empty\/$/m);
    expect(stdout).toMatch(/^lrwxrwxrwx 0\/0 .* ctx\/link -> run\.sh$/m);
    expect(stdout).toContain(`ctx/${long}`);
    expect(stdout).toContain(CONTEXT_DOCKERFILE);

    const out = await tempDir();
    await run('tar', ['-xf', archive, '-C', out]);
    const { stdout: content } = await run('cat', [path.join(out, 'ctx', long)]);
    expect(content).toBe('long');
  });
});

describe('splitTag', () => {
  it('tells a registry port from a tag', () => {
    expect(splitTag('bot-bottle/cwd:abc')).toEqual({ repo: 'bot-bottle/cwd', tag: 'abc' });
    expect(splitTag('localhost:5000/x')).toEqual({ repo: 'localhost:5000/x', tag: 'latest' });
    expect(splitTag('localhost:5000/x:1')).toEqual({ repo: 'localhost:5000/x', tag: '1' });
  });
});

describe('progress stream reader', () => {
  it('joins chunked output into lines, keeps the failing step, and reads on to the end', async () => {
    const messages = [
      { stream: 'Step 1/2 : FROM x\n' },
      { stream: ' ---> Running in 0123456789ab\n' },
      { stream: 'Step 2/2 : RUN apt-get install nope\n' },
      { stream: '\u001b[91mE: \u001b[0m' },
      { stream: '\u001b[91mUnable to locate package nope\n\u001b[0m' },
      { errorDetail: { message: 'returned a non-zero code: 100' }, error: 'returned a non-zero code: 100' },
      { stream: 'after the error\n' },
    ];
    const text = messages.map((m) => `${JSON.stringify(m)}\r\n`).join('');
    // Cut the byte stream at awkward places, including inside JSON documents.
    const chunks = [text.slice(0, 7), text.slice(7, 60), text.slice(60, 61), text.slice(61)].map((c) => Buffer.from(c));
    const lines: string[] = [];
    const outcome = await readProgressStream(Readable.from(chunks), (l) => lines.push(l));
    expect(lines).toEqual([
      'Step 1/2 : FROM x',
      'Step 2/2 : RUN apt-get install nope',
      'E: Unable to locate package nope',
      'returned a non-zero code: 100',
      'after the error',
    ]);
    expect(outcome.error).toBe('returned a non-zero code: 100');
    expect(outcome.step).toBe('Step 2/2 : RUN apt-get install nope');
    expect(outcome.tail).toContain('E: Unable to locate package nope');
  });
});
