import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDockerClient } from '../../../effects/docker/client.js';
import { ensureTestImages, leftoverTestObjects, removeTestObjects, runInImage, type TestImages } from '../../support/images.js';

const docker = createDockerClient();
let images: TestImages;

beforeAll(async () => {
  images = await ensureTestImages();
});

afterAll(async () => {
  await removeTestObjects(docker);
  expect(await leftoverTestObjects(docker)).toEqual([]);
});

describe('agent image', () => {
  it('has a content tag and carries its role label', async () => {
    expect(images.agent).toMatch(/^bot-bottle\/agent:[0-9a-f]{16}$/);
    const info = await docker.getImage(images.agent).inspect();
    expect(info.Config.Labels?.['bot-bottle.image']).toBe('agent');
  });

  it('has bash, git, curl and node, and runs as agent (uid 1000) in /workspace', async () => {
    const script = [
      'id -u; id -un; echo "$HOME"; pwd',
      'bash --version | head -n1',
      'git --version',
      'curl --version | head -n1',
      'node --version',
      'stat -c "%u %n" /workspace /home/agent/.claude/skills',
      'touch /workspace/probe && echo writable',
      'command -v claude || echo no-claude',
    ].join('; ');
    const res = await runInImage(docker, images.agent, ['bash', '-c', script]);
    expect(res.stderr).toBe('');
    expect(res.exitCode).toBe(0);
    const out = res.stdout.split('\n');
    expect(out.slice(0, 4)).toEqual(['1000', 'agent', '/home/agent', '/workspace']);
    expect(res.stdout).toMatch(/GNU bash/);
    expect(res.stdout).toMatch(/git version 2\./);
    expect(res.stdout).toMatch(/curl \d/);
    expect(res.stdout).toMatch(/^v18\./m);
    expect(res.stdout).toContain('1000 /workspace');
    expect(res.stdout).toContain('1000 /home/agent/.claude/skills');
    expect(res.stdout).toContain('writable');
    expect(res.stdout).toContain('no-claude');
  });

  it('runs bash by default', async () => {
    const info = await docker.getImage(images.agent).inspect();
    expect(info.Config.Cmd).toEqual(['bash']);
    expect(info.Config.User).toBe('agent');
    expect(info.Config.WorkingDir).toBe('/workspace');
  });
});
