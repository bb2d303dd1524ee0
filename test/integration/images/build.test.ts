import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createDockerClient } from '../../../effects/docker/client.js';
import { contentTag, DockerodeImageBuilder } from '../../../effects/docker/images.js';
import { ensureTestImages, leftoverTestObjects, removeTestObjects, runInImage, TEST_LABEL, type TestImages } from '../../support/images.js';

const docker = createDockerClient();
const builder = new DockerodeImageBuilder(docker);
const REPO = 'bot-bottle-test/build';
let images: TestImages;
const dirs: string[] = [];
const noProgress = (_line: string): void => undefined;

beforeAll(async () => {
  images = await ensureTestImages();
});

afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

afterAll(async () => {
  await removeTestObjects(docker);
  expect(await leftoverTestObjects(docker)).toEqual([]);
});

async function context(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bbt-images-build-'));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) await writeFile(path.join(dir, name), content);
  return dir;
}

const DOCKERFILE = 'ARG BASE\nFROM $BASE\nCOPY greeting.txt run.sh /opt/\n';

async function spec(dir: string, dockerfile = DOCKERFILE) {
  const buildArgs = { BASE: images.base };
  const tag = await contentTag(REPO, { dockerfile, buildArgs, context: { dir } });
  return { tag, dockerfile, buildArgs, context: { dir }, labels: { ...TEST_LABEL } };
}

describe('DockerodeImageBuilder', () => {
  it('builds once per content: a second ensure does nothing, a changed file gives a new tag', async () => {
    const dir = await context({ 'greeting.txt': 'hello\n', 'run.sh': '#!/bin/sh\necho run\n' });
    await chmod(path.join(dir, 'run.sh'), 0o755);
    const first = await spec(dir);
    const lines: string[] = [];
    expect(await builder.ensureImage(first, (l) => lines.push(l))).toEqual({ tag: first.tag, built: true });
    expect(lines.some((l) => /^Step \d+\/\d+ : COPY greeting\.txt/.test(l))).toBe(true);

    const again = await spec(dir);
    expect(again.tag).toBe(first.tag);
    const quiet: string[] = [];
    expect(await builder.ensureImage(again, (l) => quiet.push(l))).toEqual({ tag: first.tag, built: false });
    expect(quiet).toEqual([]);

    await writeFile(path.join(dir, 'greeting.txt'), 'bonjour\n');
    const changed = await spec(dir);
    expect(changed.tag).not.toBe(first.tag);
    expect(await builder.ensureImage(changed, noProgress)).toEqual({ tag: changed.tag, built: true });

    const res = await runInImage(docker, changed.tag, ['sh', '-c', 'cat /opt/greeting.txt; /opt/run.sh; stat -c %a /opt/run.sh']);
    expect(res.stdout).toBe('bonjour\nrun\n755\n');
    const old = await runInImage(docker, first.tag, ['cat', '/opt/greeting.txt']);
    expect(old.stdout).toBe('hello\n');
  });

  it('builds from inline files (the port form) and hides the Dockerfile from COPY', async () => {
    const dockerfile = 'ARG BASE\nFROM $BASE\nCOPY . /ctx/\n';
    const buildArgs = { BASE: images.base };
    const files = { 'inline.txt': 'inline content', 'sub/x.txt': 'x' };
    const tag = await contentTag(REPO, { dockerfile, buildArgs, context: { files } });
    expect(await builder.ensureImage({ tag, dockerfile, buildArgs, context: { files }, labels: { ...TEST_LABEL } }, noProgress)).toEqual({ tag, built: true });
    const res = await runInImage(docker, tag, ['sh', '-c', 'cd /ctx && find . | sort && cat inline.txt']);
    expect(res.stdout).toBe('.\n./inline.txt\n./sub\n./sub/x.txt\ninline content');
  });

  it('reads the stream to the end and reports a failing RUN as BUILD_FAILED naming the step', async () => {
    const dir = await context({ 'greeting.txt': 'x', 'run.sh': 'x' });
    const dockerfile = 'ARG BASE\nFROM $BASE\nRUN echo about to fail >&2 && exit 3\n';
    const failing = await spec(dir, dockerfile);
    const lines: string[] = [];
    const err = await builder.ensureImage(failing, (l) => lines.push(l)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'BUILD_FAILED' });
    const message = (err as Error).message;
    expect(message).toContain(failing.tag);
    expect(message).toContain('Step 3/4 : RUN echo about to fail >&2 && exit 3');
    expect(message).toContain('returned a non-zero code: 3');
    expect(message).toContain('about to fail');
    expect((err as { hint?: string }).hint).toContain('bottle images build');
    expect(lines).toContain('about to fail');
    expect(await builder.imageExists(failing.tag)).toBe(false);
  });

  it('reports a COPY of a missing file (an error with no failing command) as BUILD_FAILED', async () => {
    const dir = await context({ 'greeting.txt': 'x', 'run.sh': 'x' });
    const failing = await spec(dir, 'ARG BASE\nFROM $BASE\nCOPY missing.txt /opt/\n');
    await expect(builder.ensureImage(failing, noProgress)).rejects.toMatchObject({ code: 'BUILD_FAILED', message: expect.stringContaining('COPY missing.txt') });
  });
});
