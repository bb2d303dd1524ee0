import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createDockerClient } from '../../../effects/docker/client.js';
import { DockerodeImageBuilder } from '../../../effects/docker/images.js';
import { buildImages, imageBuildPlan } from '../../../effects/docker/images-plan.js';
import { ensureTestImages, leftoverTestObjects, REPO_ROOT, removeTestObjects, runInImage, TEST_LABEL, type TestImages } from '../../support/images.js';

const docker = createDockerClient();
const builder = new DockerodeImageBuilder(docker);
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

async function tree(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bbt-images-derived-'));
  dirs.push(dir);
  for (const [rel, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await writeFile(path.join(dir, rel), content);
  }
  return dir;
}

describe('the --cwd image', () => {
  it('copies the project to /workspace without what .bottleignore excludes, and skills to ~/.claude/skills', async () => {
    const project = await tree({
      '.bottleignore': '# not for the agent\nsecret.env\n*.log\n!keep.log\nnode_modules/\n/build\n',
      'src/main.js': 'console.log(1)\n',
      'src/build/nested.txt': 'kept: /build is anchored\n',
      'tools/run.sh': '#!/bin/sh\necho ran\n',
      'secret.env': 'TOKEN=1\n',
      'logs/today.log': 'noise\n',
      'keep.log': 'kept\n',
      'node_modules/dep/index.js': '',
      'build/out.bin': 'x',
      '.git/HEAD': 'ref: refs/heads/main\n',
    });
    await chmod(path.join(project, 'tools/run.sh'), 0o755);
    const skillDir = path.join(await tree({ 'review/SKILL.md': '# review\n' }), 'review');

    const alias = `bot-bottle-test/cwd:${TEST_LABEL['bot-bottle.test']}`;
    const plan = await imageBuildPlan({ repoRoot: REPO_ROOT, base: images.base, cwd: project, skills: [skillDir], aliases: { derived: alias }, labels: { ...TEST_LABEL } });
    expect(plan.images.map((i) => i.role)).toEqual(['base', 'agent', 'sidecar', 'derived']);
    expect(plan.agent).toBe(images.agent);
    expect(plan.sidecar).toBe(images.sidecar);
    expect(plan.runtime).toMatch(/^bot-bottle\/cwd:[0-9a-f]{16}$/);

    const lines: string[] = [];
    const built = await buildImages(plan, builder, (l) => lines.push(l));
    expect(built.map((b) => [b.role, b.built])).toEqual([
      ['base', false],
      ['agent', false],
      ['sidecar', false],
      ['derived', true],
    ]);
    expect(lines.some((l) => l.startsWith('[derived] Step'))).toBe(true);
    expect(await builder.imageExists(alias)).toBe(true);

    const res = await runInImage(docker, plan.runtime, [
      'bash',
      '-c',
      'cd /workspace && find . -not -path "./.git/*" | sort; stat -c "%u:%g %a %n" src/main.js tools/run.sh; ./tools/run.sh; ' +
        'find /home/agent/.claude/skills | sort; stat -c "%u %n" /home/agent/.claude/skills/review/SKILL.md; touch /workspace/src/new && echo writable',
    ]);
    expect(res.exitCode).toBe(0);
    const listed = res.stdout.split('\n');
    expect(listed).toEqual(
      expect.arrayContaining(['./.bottleignore', './.git', './keep.log', './logs', './src/main.js', './src/build/nested.txt', './tools/run.sh']),
    );
    for (const gone of ['./secret.env', './logs/today.log', './node_modules', './build']) expect(listed).not.toContain(gone);
    expect(res.stdout).toContain('1000:1000 644 src/main.js');
    expect(res.stdout).toContain('1000:1000 755 tools/run.sh');
    expect(res.stdout).toContain('ran');
    expect(listed).toContain('/home/agent/.claude/skills/review/SKILL.md');
    expect(res.stdout).toContain('1000 /home/agent/.claude/skills/review/SKILL.md');
    expect(res.stdout).toContain('writable');

    // Same project, same tag, nothing built; a changed file means a new image.
    const again = await imageBuildPlan({ repoRoot: REPO_ROOT, base: images.base, cwd: project, skills: [skillDir], labels: { ...TEST_LABEL } });
    expect(again.runtime).toBe(plan.runtime);
    await writeFile(path.join(project, 'src/main.js'), 'console.log(2)\n');
    const changed = await imageBuildPlan({ repoRoot: REPO_ROOT, base: images.base, cwd: project, skills: [skillDir], labels: { ...TEST_LABEL } });
    expect(changed.runtime).not.toBe(plan.runtime);
    // Only the ignored files changing does not.
    await writeFile(path.join(project, 'secret.env'), 'TOKEN=2\n');
    const ignoredChange = await imageBuildPlan({ repoRoot: REPO_ROOT, base: images.base, cwd: project, skills: [skillDir], labels: { ...TEST_LABEL } });
    expect(ignoredChange.runtime).toBe(changed.runtime);
  });

  it('builds a per-bottle Dockerfile FROM the agent image with no host files', async () => {
    const state = await tree({ Dockerfile: 'ARG AGENT_IMAGE\nFROM $AGENT_IMAGE\nUSER root\nRUN echo approved > /etc/bottle-change\nUSER agent\n' });
    const plan = await imageBuildPlan({ repoRoot: REPO_ROOT, base: images.base, perBottleDockerfile: path.join(state, 'Dockerfile'), labels: { ...TEST_LABEL } });
    expect(plan.images.map((i) => i.role)).toEqual(['base', 'agent', 'sidecar', 'bottle']);
    expect(plan.agent).toMatch(/^bot-bottle\/bottle:[0-9a-f]{16}$/);
    expect(plan.runtime).toBe(plan.agent);
    await buildImages(plan, builder, noProgress);
    const res = await runInImage(docker, plan.runtime, ['sh', '-c', 'cat /etc/bottle-change; id -u']);
    expect(res.stdout).toBe('approved\n1000\n');
  });

  it('refuses two skills with the same folder name', async () => {
    const a = await tree({ 'review/SKILL.md': 'a' });
    const b = await tree({ 'review/SKILL.md': 'b' });
    await expect(
      imageBuildPlan({ repoRoot: REPO_ROOT, base: images.base, skills: [path.join(a, 'review'), path.join(b, 'review')] }),
    ).rejects.toMatchObject({ code: 'MANIFEST_INVALID' });
  });

  it('checks that an image it does not build exists, and never lets the daemon pull a parent', async () => {
    const plan = await imageBuildPlan({ repoRoot: REPO_ROOT, base: 'bot-bottle-test/missing:base', agentRef: 'bot-bottle-test/missing:agent' });
    await expect(buildImages(plan, builder, noProgress)).rejects.toMatchObject({ code: 'IMAGE_MISSING', message: expect.stringContaining('bot-bottle-test/missing:base') });
  });
});
