import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDockerClient } from '../../../effects/docker/client.js';
import { demux, ensureTestImages, execIn, leftoverTestObjects, removeTestObjects, TEST_LABEL, type TestImages } from '../../support/images.js';

const docker = createDockerClient();
let images: TestImages;

beforeAll(async () => {
  images = await ensureTestImages();
});

afterAll(async () => {
  await removeTestObjects(docker);
  expect(await leftoverTestObjects(docker)).toEqual([]);
});

async function waitForLog(container: Docker.Container, text: string, deadlineMs: number): Promise<string> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    const logs = demux((await container.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer);
    if (logs.stdout.includes(text)) return logs.stdout;
    if (Date.now() > until) throw new Error(`no '${text}' in the sidecar log within ${deadlineMs} ms: ${JSON.stringify(logs)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Node's fetch inside the container, over its own loopback: the test needs no network.
const fetchScript = (url: string) =>
  `fetch(${JSON.stringify(url)}).then(async r => { console.log(r.status); console.log(await r.text()); }, e => { console.error(e); process.exit(1); })`;

describe('sidecar image', () => {
  it('runs the placeholder as a non-root user: /healthz answers ok, the rest 503 naming the role', async () => {
    expect(images.sidecar).toMatch(/^bot-bottle\/sidecar:[0-9a-f]{16}$/);
    const container = await docker.createContainer({
      Image: images.sidecar,
      Env: ['BOTTLE_SIDECAR_PORT=9100', 'BOTTLE_SIDECAR_ROLE=supervise'],
      Labels: { ...TEST_LABEL },
      HostConfig: { NetworkMode: 'none' },
    });
    try {
      await container.start();
      await waitForLog(container, 'ready', 20_000);

      const health = await execIn(container, ['node', '-e', fetchScript('http://127.0.0.1:9100/healthz')]);
      expect(health.stdout).toBe('200\nok\n');

      const other = await execIn(container, ['node', '-e', fetchScript('http://127.0.0.1:9100/proposals')]);
      const [status, body] = other.stdout.split('\n');
      expect(status).toBe('503');
      expect(JSON.parse(body ?? '')).toMatchObject({ error: 'not_implemented', role: 'supervise' });

      const who = await execIn(container, ['id', '-un']);
      expect(who.stdout.trim()).toBe('sidecar');
      const git = await execIn(container, ['git', '--version']);
      expect(git.stdout).toMatch(/git version 2\./);

      const started = Date.now();
      await container.stop({ t: 10 });
      // The placeholder handles SIGTERM itself (as PID 1 nothing else would).
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await container.remove({ force: true });
    }
  });

  it('refuses to start without a port', async () => {
    const container = await docker.createContainer({ Image: images.sidecar, Labels: { ...TEST_LABEL }, HostConfig: { NetworkMode: 'none' } });
    try {
      await container.start();
      const { StatusCode } = (await container.wait()) as { StatusCode: number };
      expect(StatusCode).toBe(2);
      const logs = demux((await container.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer);
      expect(logs.stderr).toContain('BOTTLE_SIDECAR_PORT');
    } finally {
      await container.remove({ force: true });
    }
  });
});
