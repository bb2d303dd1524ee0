import { afterAll, describe, expect, it } from 'vitest';
import { createDockerClient } from '../../../effects/docker/client.js';
import { BASE_BOOTSTRAP_TAG, ensureBaseImage, findBaseImage } from '../../../effects/docker/image-base.js';
import { ensureTestImages, leftoverTestObjects, removeTestObjects, runInImage } from '../../support/images.js';

const docker = createDockerClient();
const lines: string[] = [];
const progress = (line: string) => lines.push(line);

afterAll(async () => {
  await removeTestObjects(docker);
  expect(await leftoverTestObjects(docker)).toEqual([]);
});

describe('base image', () => {
  it('is bootstrapped without a registry, or reused when present', async () => {
    const first = await ensureBaseImage(docker, { source: 'bootstrap', progress });
    expect(first.tag).toBe(BASE_BOOTSTRAP_TAG);
    if (first.via === 'local') expect(first.built).toBe(false);
    else expect(first).toMatchObject({ built: true, via: 'bootstrap' });

    const again = await ensureBaseImage(docker, { source: 'bootstrap', progress });
    expect(again).toEqual({ tag: BASE_BOOTSTRAP_TAG, built: false, via: 'local' });

    const res = await runInImage(docker, BASE_BOOTSTRAP_TAG, ['cat', '/etc/debian_version']);
    expect(res.exitCode).toBe(0);
    expect(res.stdout).toMatch(/^12\./);
  });

  it('auto uses a local base and never goes to a registry when one is there', async () => {
    await ensureTestImages();
    const local = await findBaseImage(docker);
    expect(local).not.toBeNull();
    const auto = await ensureBaseImage(docker, { source: 'auto', progress });
    expect(auto).toEqual({ tag: local, built: false, via: 'local' });
    expect(lines.some((l) => l.startsWith('pulling'))).toBe(false);
  });

  it('says how to get debootstrap when it is missing', async () => {
    const err = await ensureBaseImage(docker, {
      source: 'bootstrap',
      progress,
      bootstrapTag: 'bot-bottle-test/base:never-built',
      debootstrap: '/nonexistent/debootstrap',
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'BUILD_FAILED' });
    expect((err as Error).message).toContain('debootstrap is not installed');
    expect((err as { hint: string }).hint).toContain('scripts/docker-up.sh');
    await expect(docker.getImage('bot-bottle-test/base:never-built').inspect()).rejects.toMatchObject({ statusCode: 404 });
  });
});
