import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../support/cli.js';
import { docker } from '../support/docker.js';
import { ensureTestImages } from '../support/images.js';
import { agentName, bottleFolder, cli, finishBottleSuite, type SecBottle } from '../support/security.js';

/**
 * Issue 13, item 4: ten bottles started at once all come up, run their agent and tear down
 * cleanly, each with its own names, and none leaves anything behind. (Their wall time and
 * memory against one bottle are measured by bench/load, not here.)
 */

const identities = new Set<string>();
const N = 10;

function loadBottle(i: number): SecBottle {
  return bottleFolder({
    prefix: 'bottle-load-',
    agent: agentName(`load-${i}`),
    bottle: 'load',
    config: { runtime: 'runc', egress: { allow: ['allowed.test'] } },
    prompt: 'say hello',
    script: `echo "hello from ${i}"; sleep 2; exit ${i % 3}`,
  });
}

beforeAll(async () => {
  ensureBuilt();
  await ensureTestImages();
});

afterAll(async () => {
  await finishBottleSuite(identities);
});

describe('ten bottles at once', () => {
  it('all come up, run and tear down cleanly', { timeout: 300_000 }, async () => {
    const bottles = Array.from({ length: N }, (_, i) => loadBottle(i));
    const runs = await Promise.all(bottles.map((b) => cli(b, ['run', b.agent, '-f', b.manifest])));
    for (const [i, r] of runs.entries()) {
      expect(r.code, r.stderr).toBe(i % 3);
      expect(r.stdout).toContain(`hello from ${i}`);
    }
    for (const b of bottles) {
      const [row] = JSON.parse((await cli(b, ['ls', '--json'])).stdout) as { identity: string; state: string }[];
      identities.add(row!.identity);
      expect(row!.state).toBe('done');
      const replay = await cli(b, ['replay', row!.identity]);
      expect(replay.code, replay.stderr).toBe(0);
      const left = await docker().listContainers({ all: true, filters: { label: [`bot-bottle.identity=${row!.identity}`] } });
      expect(left.map((c) => c.Names[0])).toEqual([]);
    }
    expect(identities.size).toBe(N);
  });
});
