import { randomBytes } from 'node:crypto';
import { mkdirSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LABEL } from '../../machines/ports.js';
import { E2eSuite, inspectContainer, json, show, uniqueAgent, waitFor } from '../support/e2e.js';

/**
 * The same agent against two projects (--cwd): two identities, two sets of Docker names,
 * two bottles running at once, each with its own copy of its own project at /workspace.
 */

const AGENT = uniqueAgent('cwd');

const suite = new E2eSuite(
  'cwd',
  `version: 1
bottles:
  box:
    egress: { allow: [] }
agents:
  ${AGENT}:
    bottle: box
    prompt: show the marker
    command: [bash, -c, 'echo "marker=$(cat /workspace/marker)"; trap "exit 0" TERM; sleep 1000 & wait $!']
`,
);

interface Plan {
  identity: string;
  container: string;
  networks: { internal: string; egress: string };
  volume?: string;
  sidecar_containers?: string[];
  derived_image?: string | null;
}

beforeAll(() => suite.setup());
afterEach(() => suite.cleanup());
afterAll(() => suite.finish());

describe('one agent, two projects', () => {
  it('runs two bottles at once without sharing a name, each seeing its own /workspace', async () => {
    const projects = ['project-a', 'project-b'].map((name) => {
      const dir = join(suite.dir, name);
      mkdirSync(dir);
      const marker = `marker-${randomBytes(6).toString('hex')}`;
      writeFileSync(`${dir}/marker`, `${marker}\n`);
      return { dir: realpathSync(dir), marker };
    });

    const plans: Plan[] = [];
    for (const p of projects) {
      const r = await suite.cli(['plan', AGENT, '--cwd', p.dir, '--json']);
      expect(r.code, show(r)).toBe(0);
      plans.push(json<Plan>(r));
    }
    const [a, b] = plans as [Plan, Plan];
    for (const plan of plans) {
      suite.track(plan.identity);
      expect(plan.identity.startsWith(`${AGENT}-`), plan.identity).toBe(true);
    }
    const namesOf = (p: Plan) =>
      [p.identity, p.container, p.networks.internal, p.networks.egress, p.volume, ...(p.sidecar_containers ?? []), p.derived_image].filter(
        (n): n is string => typeof n === 'string',
      );
    expect(a.identity).not.toBe(b.identity);
    const shared = namesOf(a).filter((n) => namesOf(b).includes(n));
    expect(shared, 'names the two plans share').toEqual([]);

    // Both at the same time.
    const runs = await Promise.all(projects.map((p) => suite.cli(['run', AGENT, '--cwd', p.dir, '--detach', '--json'])));
    const launched = runs.map((r) => {
      expect(r.code, show(r)).toBe(0);
      return json<{ identity: string; run: string }>(r);
    });
    expect(launched.map((l) => l.identity)).toEqual([a.identity, b.identity]);

    // Both agents are running now, each in the container its plan named.
    for (const plan of plans) {
      const c = await inspectContainer(plan.container);
      expect(c?.running, plan.container).toBe(true);
    }
    const actual = await Promise.all(plans.map(async (p) => (await suite.labelled([p.identity])).map((o) => o.name)));
    const [namesA, namesB] = actual as [string[], string[]];
    expect(namesA).toContain(a.container);
    expect(namesB).toContain(b.container);
    expect(namesA.filter((n) => namesB.includes(n)), 'Docker objects the two bottles share').toEqual([]);
    for (const [i, plan] of plans.entries()) {
      for (const o of await suite.labelled([plan.identity])) expect(o.labels[LABEL.identity]).toBe(plan.identity);
      expect(actual[i]).toEqual(expect.arrayContaining([plan.networks.internal, plan.networks.egress]));
    }

    // Each sees its own project: its output names its own marker and never the other's.
    for (const [i, plan] of plans.entries()) {
      const mine = projects[i]!.marker;
      const other = projects[1 - i]!.marker;
      const logs = await waitFor(`the output of ${plan.identity}`, async () => {
        const r = await suite.cli(['logs', plan.identity]);
        return r.stdout.includes(`marker=${mine}`) ? r.stdout : undefined;
      });
      expect(logs).not.toContain(other);
    }

    const stops = await Promise.all(plans.map((p) => suite.cli(['stop', p.identity])));
    for (const s of stops) expect(s.code, show(s)).toBe(0);
    expect(await suite.leftovers()).toEqual([]);
  });
});
