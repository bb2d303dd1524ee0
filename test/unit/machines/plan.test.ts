import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { validateManifest, type Manifest } from '../../../config/manifest.js';
import { bottleIdentity, containerCandidates, DOCKER_NAME, MAX_CONTAINER_SUFFIX, slugify } from '../../../machines/names.js';
import { buildPlan, placeholderToken, type PlanInput, type WorldFacts } from '../../../machines/plan.js';
import { BottleError } from '../../../config/errors.js';

function manifest(doc: unknown): Manifest {
  const r = validateManifest(doc);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.manifest;
}

const full = manifest({
  version: 1,
  bottles: {
    web: {
      egress: { allow: ['api.anthropic.com', 'Registry.npmjs.org:443', 'api.anthropic.com'] },
      git: [{ name: 'origin', upstream: 'ssh://git@example.test/me/app.git', key: { file: '/k' }, known_hosts: { file: '/kh' }, push: ['agent/*'] }],
      cred_proxy: {
        routes: [{ path: '/anthropic/', upstream: 'https://api.anthropic.com', token: { env: 'T' }, inject: { header: 'x-api-key', format: '{token}' }, roles: ['anthropic-base-url'] }],
      },
      supervise: true,
      env: { LOG_LEVEL: { value: 'debug' }, GH_USER: { from_host: 'GH_USER' }, DISABLE_ERROR_REPORTING: { value: '0' } },
    },
  },
  agents: { coder: { bottle: 'web', prompt: 'go', command: ['claude'] } },
});

const world: WorldFacts = { existingContainers: [], runtimes: ['runc'], perBottleDockerfile: false };
const input = (over: Partial<PlanInput> = {}): PlanInput => ({
  manifest: full,
  manifestDir: '/proj',
  homeDir: '/home/u',
  home: '/home/u/.local/state/bot-bottle',
  agent: 'coder',
  cwd: null,
  overrides: {},
  images: { agent: 'bot-bottle/agent:abc', sidecar: 'bot-bottle/sidecar:def' },
  runId: 'run1',
  ...over,
});

const codeOf = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    return (err as BottleError).code;
  }
  return null;
};

describe('planning', () => {
  it('derives every name from the identity and lists sidecars, env and allowlist', () => {
    const plan = buildPlan(input(), world);
    expect(plan.identity).toBe('coder');
    expect(plan.container).toBe('bottle-coder');
    expect(plan.networks).toEqual({ internal: 'bottle-coder-internal', egress: 'bottle-coder-egress-net' });
    expect(plan.sidecars.map((s) => s.role)).toEqual(['egress', 'git-gate', 'cred-proxy', 'supervise']);
    expect(plan.sidecars.find((s) => s.role === 'supervise')?.upstream).toBe(false);
    expect(plan.allowlist).toEqual(['api.anthropic.com', 'registry.npmjs.org:443']);
    expect(plan.env.literals).toEqual({ LOG_LEVEL: 'debug', DISABLE_ERROR_REPORTING: '0' });
    expect(plan.env.forwarded).toEqual({ GH_USER: 'GH_USER' });
    expect(plan.env.agentSide).toMatchObject({
      HTTP_PROXY: 'http://egress:3128',
      HTTPS_PROXY: 'http://egress:3128',
      NO_PROXY: 'egress,git-gate,cred-proxy,supervise',
      ANTHROPIC_BASE_URL: 'http://cred-proxy:9099/anthropic',
      CLAUDE_CODE_OAUTH_TOKEN: placeholderToken('run1'),
      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
      BOTTLE_SUPERVISE_URL: 'http://supervise:9100',
      BOTTLE_PROMPT_FILE: '/run/bottle/prompt',
    });
    // The manifest set it, so bot-bottle leaves it alone.
    expect(plan.env.agentSide.DISABLE_ERROR_REPORTING).toBeUndefined();
    expect(plan.runtime).toBe('runc');
  });

  it('only egress when nothing else is declared', () => {
    const m = manifest({ version: 1, bottles: { b: {} }, agents: { a: { bottle: 'b' } } });
    const plan = buildPlan(input({ manifest: m, agent: 'a' }), world);
    expect(plan.sidecars.map((s) => s.role)).toEqual(['egress']);
    expect(plan.env.agentSide.ANTHROPIC_BASE_URL).toBeUndefined();
    expect(plan.env.agentSide.CLAUDE_CODE_OAUTH_TOKEN).toBeUndefined();
  });

  it('takes the first free container name and says how to clean up past the bound', () => {
    expect(buildPlan(input(), { ...world, existingContainers: ['bottle-coder', 'bottle-coder-2'] }).container).toBe('bottle-coder-3');
    const all = containerCandidates('coder');
    expect(all).toHaveLength(MAX_CONTAINER_SUFFIX);
    expect(codeOf(() => buildPlan(input(), { ...world, existingContainers: all }))).toBe('NO_FREE_NAME');
  });

  it('BOTTLE_CONTAINER pins the name and never replaces an existing container', () => {
    expect(buildPlan(input({ overrides: { container: 'mine' } }), world)).toMatchObject({ container: 'mine', containerPinned: true });
    expect(codeOf(() => buildPlan(input({ overrides: { container: 'mine' } }), { ...world, existingContainers: ['mine'] }))).toBe('CONTAINER_EXISTS');
  });

  it('chooses images: default, per-bottle, overrides, derived with --cwd', () => {
    expect(buildPlan(input(), world).images).toMatchObject({ image: 'bot-bottle/agent:abc', derived: null, runtime: 'bot-bottle/agent:abc' });
    expect(buildPlan(input(), { ...world, perBottleDockerfile: true }).images.image).toBe('bot-bottle/bottle:coder');
    expect(buildPlan(input({ overrides: { image: 'x/y:1' } }), { ...world, perBottleDockerfile: true }).images.image).toBe('x/y:1');
    const withCwd = buildPlan(input({ cwd: '/src/app' }), world);
    expect(withCwd.images.derived).toBe(`bot-bottle/cwd:${withCwd.identity}`);
    expect(withCwd.images.runtime).toBe(withCwd.images.derived);
    expect(buildPlan(input({ cwd: '/src/app', overrides: { derivedImage: 'd:1' } }), world).images.runtime).toBe('d:1');
  });

  it('runtime auto picks runsc when the daemon lists it; runsc without it is an error', () => {
    expect(buildPlan(input(), { ...world, runtimes: ['runc', 'runsc'] }).runtime).toBe('runsc');
    const m = manifest({ version: 1, bottles: { b: { runtime: 'runsc' } }, agents: { a: { bottle: 'b' } } });
    expect(codeOf(() => buildPlan(input({ manifest: m, agent: 'a' }), world))).toBe('MANIFEST_INVALID');
    const r = manifest({ version: 1, bottles: { b: { runtime: 'runc' } }, agents: { a: { bottle: 'b' } } });
    expect(buildPlan(input({ manifest: r, agent: 'a' }), { ...world, runtimes: ['runsc'] }).runtime).toBe('runc');
  });

  it('refuses to let the manifest override the variables bot-bottle sets', () => {
    const m = manifest({ version: 1, bottles: { b: { env: { HTTP_PROXY: { value: 'http://evil' } } } }, agents: { a: { bottle: 'b' } } });
    expect(codeOf(() => buildPlan(input({ manifest: m, agent: 'a' }), world))).toBe('MANIFEST_INVALID');
  });
});

describe('identity and names (properties)', () => {
  const agentName = fc.string({ minLength: 1, maxLength: 60 });
  const dir = fc.array(fc.stringMatching(/^[A-Za-z0-9 ._-]{1,12}$/), { minLength: 1, maxLength: 5 }).map((p) => `/${p.join('/')}`);

  it('the same agent with two cwds gets two identities', () => {
    fc.assert(
      fc.property(agentName, dir, dir, (agent, a, b) => {
        fc.pre(a !== b);
        expect(bottleIdentity(agent, a)).not.toBe(bottleIdentity(agent, b));
        expect(bottleIdentity(agent, a)).toBe(bottleIdentity(agent, a));
        expect(bottleIdentity(agent, a)).not.toBe(bottleIdentity(agent, null));
      }),
    );
  });

  it('every derived name is a valid Docker name', () => {
    fc.assert(
      fc.property(agentName, fc.option(dir, { nil: null }), (agent, cwd) => {
        const m = manifest({ version: 1, bottles: { b: { git: [], supervise: true } }, agents: { a: { bottle: 'b' } } });
        const plan = buildPlan(input({ manifest: m, agent: 'a', cwd }), world);
        const id = bottleIdentity(agent, cwd);
        expect(slugify(agent)).toMatch(/^[a-z0-9]+(-[a-z0-9]+)*$/);
        for (const name of [...containerCandidates(id), `bottle-${id}-egress`, `bottle-${id}-internal`, `bottle-${id}-workspace`]) {
          expect(name).toMatch(DOCKER_NAME);
          expect(name.length).toBeLessThan(128);
        }
        for (const name of [plan.container, plan.networks.internal, plan.networks.egress, plan.volume, ...plan.sidecars.map((s) => s.name)]) {
          expect(name).toMatch(DOCKER_NAME);
        }
      }),
    );
  });
});

describe('the address policy in the plan and the sidecar specs', () => {
  it('private_networks reaches the plan, its summary, and every sidecar that dials; the deny list is the gateways and host addresses; never the test hook', async () => {
    const { sidecarSpec } = await import('../../../machines/specs.js');
    const { planSummary } = await import('../../../machines/plan.js');
    const opted = manifest({ ...JSON.parse(JSON.stringify(full)), bottles: { web: { ...JSON.parse(JSON.stringify(full)).bottles.web, private_networks: ['10.20.0.0/16'] } } });
    const plan = buildPlan(input({ manifest: opted }), world);
    expect(plan.privateNetworks).toEqual(['10.20.0.0/16']);
    expect(planSummary(plan).private_networks).toEqual(['10.20.0.0/16']);
    expect(planSummary(buildPlan(input(), world)).private_networks).toEqual([]);
    // Without the key the plan has no such field (a log written before it folds unchanged).
    expect('privateNetworks' in buildPlan(input(), world)).toBe(false);
    for (const s of plan.sidecars) {
      const env = sidecarSpec(plan, 'run1', s, [], ['172.18.0.1', '172.17.0.1']).env;
      expect(env.BOTTLE_TEST_DIAL_LOOPBACK, s.role).toBeUndefined();
      if (['egress', 'cred-proxy', 'git-gate'].includes(s.role)) {
        expect(env.BOTTLE_ADDRESS_DENY, s.role).toBe('172.18.0.1,172.17.0.1');
        expect(env.BOTTLE_PRIVATE_NETWORKS, s.role).toBe('10.20.0.0/16');
      } else {
        expect(env.BOTTLE_ADDRESS_DENY, s.role).toBeUndefined();
      }
    }
  });
});
