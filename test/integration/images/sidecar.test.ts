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
    if (logs.stdout.includes(text) || logs.stderr.includes(text)) return logs.stdout + logs.stderr;
    if (Date.now() > until) throw new Error(`no '${text}' in the sidecar log within ${deadlineMs} ms: ${JSON.stringify(logs)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Node's fetch inside the container, over its own loopback: the test needs no network.
const fetchScript = (url: string) =>
  `fetch(${JSON.stringify(url)}).then(async r => { console.log(r.status); console.log(await r.text()); }, e => { console.error(e); process.exit(1); })`;

const PROGRAM = (role: string) => `/opt/bot-bottle/sidecars/${role}.mjs`;

describe('sidecar image', () => {
  it('holds every sidecar program and runs one as a non-root user that stops on SIGTERM', async () => {
    expect(images.sidecar).toMatch(/^bot-bottle\/sidecar:[0-9a-f]{16}$/);
    const container = await docker.createContainer({
      Image: images.sidecar,
      Cmd: [PROGRAM('supervise')],
      Env: ['BOTTLE_SIDECAR_PORT=9100', 'BOTTLE_SUPERVISE_DIR=/tmp/supervise'],
      Labels: { ...TEST_LABEL },
      HostConfig: { NetworkMode: 'none' },
    });
    try {
      await container.start();
      await waitForLog(container, 'listening on 9100', 20_000);

      // Not healthy until the host has put the bottle's current capabilities there.
      const before = await execIn(container, ['node', '-e', fetchScript('http://127.0.0.1:9100/healthz')]);
      expect(before.stdout.split('\n')[0]).toBe('503');
      const put = JSON.stringify({ dockerfile: 'FROM x\n', allowlist: ['a.test'], routes: [] });
      await execIn(container, ['node', '-e', `require('fs').mkdirSync('/tmp/supervise',{recursive:true});require('fs').writeFileSync('/tmp/supervise/current.json', ${JSON.stringify(put)})`]);
      const after = await execIn(container, ['node', '-e', fetchScript('http://127.0.0.1:9100/healthz')]);
      expect(after.stdout.split('\n')[0]).toBe('200');

      const programs = await execIn(container, ['sh', '-c', 'cd /opt/bot-bottle/sidecars && echo *.mjs']);
      expect(programs.stdout.trim().split(' ').sort()).toEqual(['cred-proxy.mjs', 'egress.mjs', 'git-gate.mjs', 'supervise.mjs']);
      const who = await execIn(container, ['id', '-un']);
      expect(who.stdout.trim()).toBe('sidecar');
      const git = await execIn(container, ['git', '--version']);
      expect(git.stdout).toMatch(/git version 2\./);
      const ssh = await execIn(container, ['ssh', '-V']);
      expect(ssh.stdout + ssh.stderr).toMatch(/OpenSSH/);

      const started = Date.now();
      await container.stop({ t: 10 });
      // The program handles SIGTERM itself (as PID 1 nothing else would): no 10 s wait for a kill.
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await container.remove({ force: true });
    }
  });

  it('a program refuses to start without a valid port, exit 2 naming the variable', async () => {
    for (const role of ['egress', 'cred-proxy', 'git-gate', 'supervise']) {
      const container = await docker.createContainer({
        Image: images.sidecar,
        Cmd: [PROGRAM(role)],
        Env: ['BOTTLE_SIDECAR_PORT=not-a-port'],
        Labels: { ...TEST_LABEL },
        HostConfig: { NetworkMode: 'none' },
      });
      try {
        await container.start();
        const { StatusCode } = (await container.wait()) as { StatusCode: number };
        const logs = demux((await container.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer);
        expect(StatusCode, `${role}: ${logs.stderr}`).toBe(2);
        expect(logs.stderr).toContain('BOTTLE_SIDECAR_PORT');
      } finally {
        await container.remove({ force: true });
      }
    }
  });
});
