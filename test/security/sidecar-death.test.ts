import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../support/cli.js';
import { docker } from '../support/docker.js';
import { ensureTestImages } from '../support/images.js';
import { agentName, bottleFolder, cli, finishBottleSuite, runDetached, type SecBottle, waitForLog } from '../support/security.js';

/**
 * Issue 12, item 5: fail closed when a sidecar dies. `docker kill` of the egress sidecar, the
 * cred-proxy or the git gate while the agent runs: within a few seconds the agent is stopped
 * (it can no longer reach anything, through that sidecar or any other), the bottle records why
 * (SIDECAR_DIED in the log) and is torn down, and `bottle status` shows it.
 */

const identities = new Set<string>();
// The agent says it is alive every 200 ms; its last line tells when it stopped.
const SCRIPT = `echo READY; i=0; while true; do i=$((i+1)); echo "alive $i $(date +%s%N)"; sleep 0.2; done`;

function sidecarBottle(tag: string): SecBottle {
  return bottleFolder({
    prefix: 'bottle-death-',
    agent: agentName(`death-${tag}`),
    bottle: 'death',
    config: {
      runtime: 'auto',
      egress: { allow: ['allowed.test'] },
      // Neither upstream needs to answer: both sidecars are ready once they hold their policy.
      cred_proxy: { routes: [{ path: '/api', upstream: 'https://api.death.test', token: { env: 'DEATH_API_TOKEN' }, inject: { header: 'x-api-key', format: '{token}' } }] },
      git: [{ name: 'origin', upstream: 'https://git.death.test/app.git', token: { env: 'DEATH_GIT_TOKEN' }, push: [] }],
    },
    prompt: 'stay alive',
    script: SCRIPT,
    hostEnv: { DEATH_API_TOKEN: 'api-token-for-the-death-test-0123', DEATH_GIT_TOKEN: 'git-token-for-the-death-test-4567' },
  });
}

async function state(name: string): Promise<string> {
  try {
    return (await docker().getContainer(name).inspect()).State.Status;
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return 'gone';
    throw err;
  }
}

beforeAll(async () => {
  ensureBuilt();
  await ensureTestImages();
});

afterAll(async () => {
  await finishBottleSuite(identities);
});

describe('a sidecar killed while the agent runs', () => {
  for (const role of ['egress', 'cred-proxy', 'git-gate']) {
    it(`${role}: the agent is stopped within seconds, the bottle torn down, status says why`, async () => {
      const b = sidecarBottle(role);
      const { identity } = await runDetached(b);
      identities.add(identity);
      await waitForLog(b, identity, /alive 3 /);
      const agent = `bottle-${identity}`;
      expect(await state(agent)).toBe('running');

      const killedAt = Date.now();
      await docker().getContainer(`bottle-${identity}-${role}`).kill();
      // Fail closed: the agent must be gone, not merely cut off. A deadline for a security
      // property, generous for a loaded machine; the log's last line says when it stopped.
      while ((await state(agent)) === 'running') {
        expect(Date.now() - killedAt, 'the agent still runs after its sidecar died').toBeLessThan(15_000);
        await delay(100);
      }
      const stoppedAt = Date.now();

      let status: { state: string; error: { code: string; message: string } | null } = { state: '', error: null };
      for (let i = 0; i < 300 && status.state !== 'failed'; i++) {
        const r = await cli(b, ['status', identity, '--json']);
        if (r.code === 0) status = JSON.parse(r.stdout);
        await delay(100);
      }
      expect(status.state).toBe('failed');
      expect(status.error?.code).toBe('SIDECAR_DIED');
      expect(status.error?.message).toContain(`bottle-${identity}-${role}`);
      const text = await cli(b, ['status', identity]);
      expect(text.stderr).toMatch(/SIDECAR_DIED/);

      const audit = await cli(b, ['audit', identity, '--json']);
      const entries = JSON.parse(audit.stdout) as { type: string; error?: { code: string } }[];
      expect(entries.some((e) => e.type === 'effect.failed' && e.error?.code === 'SIDECAR_DIED')).toBe(true);
      // Torn down: nothing of the bottle is left running.
      const replay = await cli(b, ['replay', identity]);
      expect(replay.code, replay.stderr).toBe(0);
      for (const c of ['', '-egress', '-cred-proxy', '-git-gate', '-netns']) expect(await state(`bottle-${identity}${c}`)).toBe('gone');
      console.log(`[death ${role}] agent stopped ${stoppedAt - killedAt} ms after the kill`);
    });
  }
});
