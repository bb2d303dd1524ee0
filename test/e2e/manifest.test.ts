import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { listRuns } from '../../store/state-doc.js';
import { docker } from '../support/docker.js';
import { E2eSuite, json, show, uniqueAgent } from '../support/e2e.js';

/**
 * `bottle validate` and `bottle plan` as a user meets them: every manifest error listed with
 * its path and nothing created; the plan in the CONTRACT's shape, with env names and never values.
 */

const AGENT = uniqueAgent('plan');
const BROKEN = uniqueAgent('broken');
const LITERAL = `literal-${randomBytes(6).toString('hex')}`;
const FROM_HOST = `host-secret-${randomBytes(6).toString('hex')}`;

const suite = new E2eSuite(
  'manifest',
  `version: 1
bottles:
  box:
    runtime: auto
    egress:
      allow:
        - allowed.test
        - api.allowed.test:443
        - "*.wild.test"
    env:
      LOG_LEVEL: { value: ${LITERAL} }
      GH_USER: { from_host: E2E_GH_USER }
agents:
  ${AGENT}:
    bottle: box
    prompt: plan me
    command: [bash, -c, 'exit 0']
`,
);

/** Every error this manifest holds, by path. */
const INVALID = `version: 1
bottles:
  web:
    runtime: docker
    bogus: 1
    egress:
      allow: [ok.test, "bad host!", "*.", 7]
    env:
      A: { value: "x", from_host: Y }
agents:
  ${BROKEN}:
    bottle: nope
    prompt: hi
    command: "not-a-list"
`;
const INVALID_PATHS = [
  'bottles.web.runtime',
  'bottles.web.bogus',
  'bottles.web.egress.allow[1]',
  'bottles.web.egress.allow[2]',
  'bottles.web.egress.allow[3]',
  'bottles.web.env.A',
  `agents.${BROKEN}.bottle`,
  `agents.${BROKEN}.command`,
];

beforeAll(() => suite.setup());
afterEach(() => suite.cleanup());
afterAll(() => suite.finish());

describe('bottle validate', () => {
  it('exits 2 listing every error with its path, and creates nothing', async () => {
    const identity = suite.track(BROKEN);
    const file = join(suite.dir, 'invalid.yaml');
    writeFileSync(file, INVALID);

    const r = await suite.cli(['validate', '-f', file]);
    expect(r.code, show(r)).toBe(2);
    expect(r.stderr).toContain('MANIFEST_INVALID');
    for (const path of INVALID_PATHS) expect(r.stderr, path).toContain(`${path}:`);

    const rj = await suite.cli(['validate', '-f', file, '--json']);
    expect(rj.code, show(rj)).toBe(2);
    const err = json<{ error: { code: string; message: string; hint: string | null; issues?: { path: string; message: string }[] } }>(rj).error;
    expect(err.code).toBe('MANIFEST_INVALID');
    expect(err.hint).toBeTruthy();
    const paths = (err.issues ?? []).map((i) => i.path);
    expect([...paths].sort()).toEqual([...INVALID_PATHS].sort());
    for (const i of err.issues ?? []) expect(i.message.length, i.path).toBeGreaterThan(0);

    // A launch of the invalid manifest is refused the same way, before anything exists.
    const run = await suite.cli(['run', BROKEN, '-f', file]);
    expect(run.code, show(run)).toBe(2);
    expect(run.stderr).toContain('MANIFEST_INVALID');

    expect(existsSync(suite.home), 'BOTTLE_HOME').toBe(false);
    expect(await suite.leftovers([identity])).toEqual([]);
  });

  it('exits 0 on a valid manifest', async () => {
    const r = await suite.cli(['validate']);
    expect(r.code, show(r)).toBe(0);
  });
});

describe('bottle plan --json', () => {
  it("has the CONTRACT's shape, names env without values, and creates nothing", async () => {
    const identity = suite.track(AGENT);
    const env = { E2E_GH_USER: FROM_HOST };

    const r = await suite.cli(['plan', AGENT, '--json'], { env });
    expect(r.code, show(r)).toBe(0);
    const plan = json<{
      identity: string;
      container: string;
      networks: { internal: string; egress: string };
      sidecars: unknown[];
      image: string;
      runtime: string;
      allowlist: string[];
      env: string[];
    }>(r);

    expect(plan.identity).toBe(identity);
    expect(plan.container).toBe(`bottle-${identity}`);
    expect(typeof plan.networks.internal).toBe('string');
    expect(typeof plan.networks.egress).toBe('string');
    expect(plan.networks.internal).not.toBe(plan.networks.egress);
    for (const n of [plan.networks.internal, plan.networks.egress]) expect(n).toContain(identity);
    expect(Array.isArray(plan.sidecars)).toBe(true);
    expect(plan.sidecars).toContain('egress');
    expect(plan.image).toBe(suite.images!.agent);
    const runtimes = Object.keys(((await docker().info()) as { Runtimes?: Record<string, unknown> }).Runtimes ?? {});
    expect(plan.runtime).toBe(runtimes.includes('runsc') ? 'runsc' : 'runc');
    expect([...plan.allowlist].sort()).toEqual(['*.wild.test', 'allowed.test', 'api.allowed.test:443'].sort());
    expect(plan.env).toEqual(expect.arrayContaining(['LOG_LEVEL', 'GH_USER', 'HTTPS_PROXY', 'HTTP_PROXY', 'NO_PROXY', 'BOTTLE_PROMPT_FILE']));
    for (const name of plan.env) expect(name).toMatch(/^[A-Za-z_][A-Za-z0-9_]*$/);

    // Never a value, in the JSON or in the human form.
    const human = await suite.cli(['plan', AGENT], { env });
    expect(human.code, show(human)).toBe(0);
    for (const out of [r.stdout, r.stderr, human.stdout, human.stderr]) {
      expect(out).not.toContain(LITERAL);
      expect(out).not.toContain(FROM_HOST);
    }
    expect(human.stderr).toContain(plan.container);

    expect(listRuns(suite.home, identity)).toEqual([]);
    expect(existsSync(join(suite.home, 'bottles', identity)), 'state of the planned bottle').toBe(false);
    expect(await suite.leftovers([identity])).toEqual([]);
  });
});
