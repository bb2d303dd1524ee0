import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LABEL } from '../../machines/ports.js';
import { docker } from '../support/docker.js';
import { E2eSuite, inspectContainer, json, scopedDockerHost, show, uniqueAgent } from '../support/e2e.js';

/**
 * What a launch finds already there: a labelled leftover of a dead run is ORPHAN_SIDECAR
 * until `bottle cleanup` removes it; a container pinned by BOTTLE_CONTAINER that exists is
 * CONTAINER_EXISTS and is never touched. Containers that merely look like ours are left alone.
 */

const ORPHANED = uniqueAgent('orphan');
const PINNED = uniqueAgent('pinned');
const LIVE = uniqueAgent('live');

const suite = new E2eSuite(
  'orphans',
  `version: 1
bottles:
  box:
    egress: { allow: [] }
agents:
  ${ORPHANED}:
    bottle: box
    prompt: launch
    command: [bash, -c, 'echo launched-after-cleanup']
  ${PINNED}:
    bottle: box
    prompt: launch
    command: [bash, -c, 'echo should-never-run']
  ${LIVE}:
    bottle: box
    prompt: stay up
    command: [bash, -c, 'trap "exit 0" TERM; sleep 1000 & wait $!']
`,
);

beforeAll(() => suite.setup());
afterEach(() => suite.cleanup());
afterAll(() => suite.finish());

/** A container lying around before the launch (started when asked), from the agent image with no network. */
async function createContainer(name: string, labels: Record<string, string>, start = false): Promise<string> {
  const c = await docker().createContainer({
    name,
    Image: suite.images!.agent,
    Cmd: ['sleep', 'infinity'],
    Labels: labels,
    HostConfig: { NetworkMode: 'none' },
  });
  if (start) await c.start();
  return c.id;
}

describe('a leftover labelled sidecar', () => {
  it('fails the launch with ORPHAN_SIDECAR until `bottle cleanup` removes it; a look-alike is never touched', async () => {
    const identity = suite.track(ORPHANED);
    const plan = json<{ sidecar_containers?: string[] }>(await suite.cli(['plan', ORPHANED, '--json']));
    const sidecarName = `bottle-${identity}-egress`;
    expect(plan.sidecar_containers ?? [sidecarName]).toContain(sidecarName);

    const leftover = await createContainer(sidecarName, { [LABEL.identity]: identity, [LABEL.run]: 'dead-run', [LABEL.role]: 'egress' });
    suite.foreignContainers.add(leftover);
    const lookAlikeName = `bottle-${identity}-egress-mine`;
    const lookAlike = await createContainer(lookAlikeName, {}, true);
    suite.foreignContainers.add(lookAlike);

    const refused = await suite.cli(['run', ORPHANED]);
    expect(refused.code, show(refused)).toBe(1);
    expect(refused.stderr).toContain('ORPHAN_SIDECAR');
    expect(refused.stderr).toContain(sidecarName);
    expect(refused.stderr).not.toContain(lookAlikeName);
    expect(refused.stdout).not.toContain('launched-after-cleanup');

    const refusedJson = await suite.cli(['run', ORPHANED, '--json']);
    expect(refusedJson.code, show(refusedJson)).toBe(1);
    expect(json<{ error: { code: string; message: string } }>(refusedJson).error.code).toBe('ORPHAN_SIDECAR');
    expect(refusedJson.stderr).toContain('ORPHAN_SIDECAR');

    // The refused launches created nothing and removed nothing.
    expect(await suite.leftovers()).toEqual([`container ${sidecarName}`]);
    expect((await inspectContainer(sidecarName))?.id).toBe(leftover);

    // Cleanup runs through a Docker endpoint that hides other users' bottles: see scopedDockerHost.
    const scoped = await scopedDockerHost([identity]);
    try {
      const env = { DOCKER_HOST: scoped.dockerHost };
      const dry = await suite.cli(['cleanup', '--dry-run'], { env });
      expect(dry.code, show(dry)).toBe(0);
      expect(dry.stderr).toContain(sidecarName);
      expect(dry.stderr).not.toContain(lookAlikeName);

      const dryJson = await suite.cli(['cleanup', '--dry-run', '--json'], { env });
      expect(dryJson.code, show(dryJson)).toBe(0);
      const listed = json<{ dry_run: boolean; would_remove: { kind: string; name: string; identity: string; run: string }[] }>(dryJson);
      expect(listed.dry_run).toBe(true);
      expect(listed.would_remove).toEqual([expect.objectContaining({ kind: 'container', name: sidecarName, identity, run: 'dead-run' })]);

      expect((await inspectContainer(sidecarName))?.id, 'a dry run removes nothing').toBe(leftover);
      expect((await inspectContainer(lookAlikeName))?.id).toBe(lookAlike);

      const clean = await suite.cli(['cleanup'], { env });
      expect(clean.code, show(clean)).toBe(0);
      expect(clean.stderr).toContain(sidecarName);
    } finally {
      await scoped.close();
    }
    expect(await inspectContainer(sidecarName)).toBeNull();
    expect(await inspectContainer(lookAlikeName)).toMatchObject({ id: lookAlike, running: true });

    const launched = await suite.cli(['run', ORPHANED]);
    expect(launched.code, show(launched)).toBe(0);
    expect(launched.stdout).toContain('launched-after-cleanup');
    expect(await suite.leftovers()).toEqual([]);
    expect(await inspectContainer(lookAlikeName)).toMatchObject({ id: lookAlike, running: true });
  });
});

describe('bottle cleanup and live runs', () => {
  it('never counts a live bottle of another BOTTLE_HOME as removable', async () => {
    const identity = suite.track(LIVE);
    const up = await suite.cli(['run', LIVE, '--detach', '--json']);
    expect(up.code, show(up)).toBe(0);
    const ours = await suite.leftovers([identity]);
    expect(ours.length).toBeGreaterThan(0);

    // A second home on the same daemon (another user, a CI job, a test run): a dry run
    // only lists, so this is safe on a shared daemon.
    const otherHome = join(suite.dir, 'other-home');
    const dry = await suite.cli(['cleanup', '--dry-run', '--json'], { env: { BOTTLE_HOME: otherHome } });
    expect(dry.code, show(dry)).toBe(0);
    const listed = json<{ would_remove: { kind: string; name: string; identity: string }[] }>(dry).would_remove;
    // CONTRACT: cleanup removes objects "that no live run owns"; this run's owner is alive.
    expect(listed.filter((o) => o.identity === identity).map((o) => `${o.kind} ${o.name}`)).toEqual([]);

    const stop = await suite.cli(['stop', identity]);
    expect(stop.code, show(stop)).toBe(0);
    expect(await suite.leftovers([identity])).toEqual([]);
  });
});

describe('BOTTLE_CONTAINER naming an existing container', () => {
  for (const running of [true, false]) {
    it(`fails with CONTAINER_EXISTS and leaves that ${running ? 'running' : 'stopped'} container alone`, async () => {
      const identity = suite.track(PINNED);
      const name = `e2e-pinned-${running ? 'up' : 'down'}-${identity.slice(-8)}`;
      const id = await createContainer(name, {}, running);
      suite.foreignContainers.add(id);
      const env = { BOTTLE_CONTAINER: name };

      const r = await suite.cli(['run', PINNED], { env });
      expect(r.code, show(r)).toBe(1);
      expect(r.stderr).toContain('CONTAINER_EXISTS');
      expect(r.stderr).toContain(name);
      expect(r.stdout).not.toContain('should-never-run');

      const rj = await suite.cli(['run', PINNED, '--json'], { env });
      expect(rj.code, show(rj)).toBe(1);
      expect(json<{ error: { code: string } }>(rj).error.code).toBe('CONTAINER_EXISTS');

      const detached = await suite.cli(['run', PINNED, '--detach', '--json'], { env });
      expect(detached.code, show(detached)).toBe(1);
      expect(json<{ error: { code: string } }>(detached).error.code).toBe('CONTAINER_EXISTS');

      expect(await inspectContainer(name)).toMatchObject({ id, running });
      expect(await suite.leftovers([identity])).toEqual([]);
    });
  }
});
