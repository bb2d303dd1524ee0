import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { formatPath, type ManifestIssue, validateManifest } from '../../../config/manifest.js';
import { CONTRACT_EXAMPLE, minimalDoc, remote, route, withBottle } from './fixtures.js';

function issuesOf(doc: unknown): ManifestIssue[] {
  const result = validateManifest(doc);
  if (result.ok) throw new Error('expected the document to be invalid');
  return result.issues;
}

function expectIssue(doc: unknown, path: string, message: string | RegExp): void {
  const issues = issuesOf(doc);
  const atPath = issues.filter((i) => i.path === path);
  expect(atPath, `issues: ${JSON.stringify(issues)}`).not.toHaveLength(0);
  const matcher = typeof message === 'string' ? expect.stringContaining(message) : expect.stringMatching(message);
  expect(atPath.map((i) => i.message)).toContainEqual(matcher);
}

function expectValid(doc: unknown) {
  const result = validateManifest(doc);
  if (!result.ok) throw new Error(`expected valid, got ${JSON.stringify(result.issues)}`);
  return result.manifest;
}

describe('validateManifest: valid documents', () => {
  it('accepts the full example from CONTRACT.md', () => {
    const manifest = expectValid(parse(CONTRACT_EXAMPLE));
    const web = manifest.bottles.web!;
    expect(web.image).toEqual({ dockerfile: './agent.Dockerfile' });
    expect(web.egress.allow).toEqual(['api.anthropic.com', 'registry.npmjs.org:443']);
    expect(web.git[0]).toMatchObject({
      name: 'origin',
      key: { file: '~/.ssh/bottle_ed25519' },
      known_hosts: { file: '~/.ssh/known_hosts' },
      push: ['agent/*'],
    });
    expect(web.cred_proxy.routes[0]).toEqual({
      path: '/anthropic',
      upstream: 'https://api.anthropic.com',
      token: { env: 'ANTHROPIC_API_KEY' },
      inject: { header: 'x-api-key', format: '{token}' },
      roles: ['anthropic-base-url'],
    });
    expect(web.supervise).toBe(true);
    expect(web.env).toEqual({ LOG_LEVEL: { value: 'debug' }, GH_USER: { from_host: 'GH_USER' } });
    expect(manifest.agents.coder).toEqual({
      bottle: 'web',
      prompt: 'Make the failing tests pass.',
      command: ['claude', '--dangerously-skip-permissions'],
      skills: ['./skills/review'],
    });
  });

  it('fills in the defaults', () => {
    const manifest = expectValid(minimalDoc());
    expect(manifest.bottles.web).toEqual({
      runtime: 'auto',
      egress: { allow: [] },
      git: [],
      cred_proxy: { routes: [] },
      supervise: false,
      private_networks: [],
      env: {},
    });
    expect(manifest.agents.coder).toEqual({ bottle: 'web', skills: [] });
  });

  it('does not share default containers between results', () => {
    const a = expectValid(minimalDoc());
    a.bottles.web!.egress.allow.push('mutated.example');
    a.bottles.web!.git.push({ name: 'x', upstream: 'https://h/r', push: [] });
    const b = expectValid(minimalDoc());
    expect(b.bottles.web!.egress.allow).toEqual([]);
    expect(b.bottles.web!.git).toEqual([]);
  });

  it('normalizes egress entries to lower case', () => {
    const manifest = expectValid(withBottle({ egress: { allow: ['API.Example.COM:8443', '*.Example.org'] } }));
    expect(manifest.bottles.web!.egress.allow).toEqual(['api.example.com:8443', '*.example.org']);
  });

  it('accepts an image ref, a prompt_file, https git with token and ca, a route ca', () => {
    expectValid({
      version: 1,
      bottles: {
        web: {
          image: { ref: 'my/agent:1.2' },
          runtime: 'runsc',
          git: [remote({ ca: { file: './ca.pem' } })],
          cred_proxy: { routes: [route({ ca: { file: './ca.pem' }, roles: [] })] },
        },
      },
      agents: { coder: { bottle: 'web', prompt_file: './prompt.md' } },
    });
  });

  it('accepts an empty agents and bottles map', () => {
    expectValid({ version: 1, bottles: {}, agents: {} });
  });
});

describe('validateManifest: schema errors', () => {
  it('requires version 1', () => {
    expectIssue({ ...minimalDoc(), version: 2 }, 'version', /version: 1/);
    const { version: _, ...noVersion } = minimalDoc();
    expectIssue(noVersion, 'version', /required/);
  });

  it('says what the root must be', () => {
    expect(issuesOf(null)).toEqual([{ path: '(root)', message: 'expected a mapping with version, bottles and agents' }]);
    expect(issuesOf('version: 1')[0]?.path).toBe('(root)');
  });

  it('rejects unknown keys at every level, each with its own path', () => {
    const doc = {
      ...minimalDoc(),
      extra: true,
      bottles: {
        web: {
          egres: {},
          egress: { allow: [], deny: [] },
          git: [remote({ branch: 'main' })],
          cred_proxy: { routes: [route({ inject: { header: 'a', format: '{token}', prefix: 'x' } })] },
          env: { A: { value: 'x', secret: true } },
          image: { ref: 'x', tag: 'y' },
        },
      },
      agents: { coder: { bottle: 'web', model: 'opus' } },
    };
    const paths = issuesOf(doc).map((i) => i.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        'extra',
        'bottles.web.egres',
        'bottles.web.egress.deny',
        'bottles.web.git[0].branch',
        'bottles.web.cred_proxy.routes[0].inject.prefix',
        'bottles.web.env.A.secret',
        'bottles.web.image.tag',
        'agents.coder.model',
      ]),
    );
    expectIssue(doc, 'bottles.web.egres', 'unknown key (allowed here: image, runtime, egress, git, cred_proxy, supervise, private_networks, env, resources)');
  });

  it('names the expected type in YAML words', () => {
    expectIssue(withBottle({ egress: { allow: 'api.example.com' } }), 'bottles.web.egress.allow', 'expected a list, got a string');
    expectIssue(withBottle({ env: { PORT: { value: 8080 } } }), 'bottles.web.env.PORT.value', /got a number \(quote it in YAML\)/);
    expectIssue({ ...minimalDoc(), agents: { coder: null } }, 'agents.coder', 'expected a mapping, got null');
    expectIssue({ ...minimalDoc(), agents: { coder: {} } }, 'agents.coder.bottle', /required/);
  });

  it('checks runtime, supervise and command', () => {
    expectIssue(withBottle({ runtime: 'kata' }), 'bottles.web.runtime', /auto/);
    expectIssue(withBottle({ supervise: 'yes' }), 'bottles.web.supervise', /boolean/);
    expectIssue({ ...minimalDoc(), agents: { coder: { bottle: 'web', command: [] } } }, 'agents.coder.command', 'must not be empty');
    expectIssue({ ...minimalDoc(), agents: { coder: { bottle: 'web', command: ['claude', ''] } } }, 'agents.coder.command[1]', 'must not be empty');
  });

  it('wants exactly one form of a secret ref, env entry and image', () => {
    const at = 'bottles.web.cred_proxy.routes[0].token';
    expectIssue(withBottle({ cred_proxy: { routes: [route({ token: {} })] } }), at, 'needs one of file or env');
    expectIssue(withBottle({ cred_proxy: { routes: [route({ token: { file: 'a', env: 'B' } })] } }), at, 'set only one of file or env');
    expectIssue(withBottle({ cred_proxy: { routes: [route({ token: { env: '1BAD' } })] } }), `${at}.env`, /environment variable name/);
    expectIssue(withBottle({ env: { A: {} } }), 'bottles.web.env.A', 'needs one of value or from_host');
    expectIssue(withBottle({ env: { A: { from_host: 'has space' } } }), 'bottles.web.env.A.from_host', /environment variable name/);
    expectIssue(withBottle({ image: { dockerfile: './D', ref: 'x' } }), 'bottles.web.image', 'set only one of dockerfile or ref');
  });

  it('accepts only a file for a ca', () => {
    expectIssue(withBottle({ cred_proxy: { routes: [route({ ca: { env: 'CA' } })] } }), 'bottles.web.cred_proxy.routes[0].ca.env', /unknown key/);
  });
});

describe('validateManifest: rules on single values', () => {
  it('checks egress entries with their index', () => {
    const doc = withBottle({ egress: { allow: ['ok.example.com', 'https://x.example.com', 'x.example.com/path', '*.com', 'a.*.example.com', 'h:70000'] } });
    expectIssue(doc, 'bottles.web.egress.allow[1]', /not a URL/);
    expectIssue(doc, 'bottles.web.egress.allow[2]', /without a path/);
    expectIssue(doc, 'bottles.web.egress.allow[3]', /two labels/);
    expectIssue(doc, 'bottles.web.egress.allow[4]', /whole first label/);
    expectIssue(doc, 'bottles.web.egress.allow[5]', /1 to 65535/);
    expect(issuesOf(doc).some((i) => i.path === 'bottles.web.egress.allow[0]')).toBe(false);
  });

  it('checks env names and literal values', () => {
    expectIssue(withBottle({ env: { 'BAD-NAME': { value: 'x' } } }), 'bottles.web.env.BAD-NAME', /environment variable name/);
    expectIssue(withBottle({ env: { '9LIVES': { value: 'x' } } }), 'bottles.web.env["9LIVES"]', /environment variable name/);
    expectIssue(withBottle({ env: { A: { value: 'one\ntwo' } } }), 'bottles.web.env.A.value', /newline/);
    expectIssue(withBottle({ env: { A: { value: 'one\rtwo' } } }), 'bottles.web.env.A.value', /newline/);
    expectIssue(withBottle({ env: { A: { value: 'a\0b' } } }), 'bottles.web.env.A.value', /NUL/);
  });

  it('checks route paths, upstreams, injection and roles', () => {
    const at = 'bottles.web.cred_proxy.routes[0]';
    const one = (r: Record<string, unknown>) => withBottle({ cred_proxy: { routes: [route(r)] } });
    expectIssue(one({ path: 'anthropic' }), `${at}.path`, 'must start with /');
    expectIssue(one({ path: '/a/../b' }), `${at}.path`, /segments/);
    expectIssue(one({ upstream: 'ftp://files.example.com' }), `${at}.upstream`, /https:\/\/ or http:\/\//);
    expectIssue(one({ upstream: 'not a url' }), `${at}.upstream`, /not a valid URL/);
    expectIssue(one({ upstream: 'https://user:pw@api.example.com' }), `${at}.upstream`, /credentials/);
    expectIssue(one({ inject: { header: 'Bad Header', format: '{token}' } }), `${at}.inject.header`, /header name/);
    expectIssue(one({ inject: { header: 'Authorization', format: 'Bearer' } }), `${at}.inject.format`, /\{token\}/);
    expectIssue(one({ inject: { header: 'Authorization', format: 'Bearer {token}\r\nX-Evil: 1' } }), `${at}.inject.format`, /control/);
    expectIssue(one({ roles: ['anthropic_base_url'] }), `${at}.roles[0]`, /unknown role/);
    expectValid(one({ upstream: 'http://internal-service:8080/api' }));
  });

  it('checks git remotes', () => {
    const at = 'bottles.web.git[0]';
    const one = (r: Record<string, unknown>) => withBottle({ git: [remote(r)] });
    expectIssue(one({ upstream: 'git@github.com:me/app.git', token: undefined, key: { file: 'k' } }), `${at}.upstream`, /scp-style/);
    expectIssue(one({ upstream: 'ftp://h/r.git' }), `${at}.upstream`, /ssh:\/\/, https:\/\/ or http:\/\//);
    expectIssue(one({ upstream: 'https://h' }), `${at}.upstream`, /repository path/);
    expectIssue(one({ upstream: 'https://me:secret@h/r.git' }), `${at}.upstream`, /password/);
    expectIssue(one({ name: 'my remote' }), `${at}.name`, /letters, digits/);
    expectIssue(one({ name: '..' }), `${at}.name`, /must not be/);
    expectIssue(one({ push: ['+main'] }), `${at}.push[0]`, /force/);
    expectIssue(one({ push: ['main..x'] }), `${at}.push[0]`, /ref pattern/);
    expectIssue(one({ push: ['refs/heads/'] }), `${at}.push[0]`, /end with \//);
    expectValid(one({ push: [] }));
  });

  it('rejects empty names', () => {
    expectIssue({ ...minimalDoc(), agents: { '': { bottle: 'web' } } }, 'agents[""]', /must not be empty/);
    expectIssue({ ...minimalDoc(), bottles: { '': {}, web: {} } }, 'bottles[""]', /must not be empty/);
    expectIssue({ ...minimalDoc(), agents: { coder: { bottle: '' } } }, 'agents.coder.bottle', /must not be empty/);
  });

  it('rejects __proto__ as a name instead of dropping it silently', () => {
    const doc = JSON.parse('{"version":1,"bottles":{"__proto__":{}},"agents":{"a":{"bottle":"__proto__"}}}');
    expectIssue(doc, 'bottles.__proto__', /reserved/);
    const env = JSON.parse('{"version":1,"bottles":{"web":{"env":{"__proto__":{"value":"x"}}}},"agents":{}}');
    expectIssue(env, 'bottles.web.env.__proto__', /reserved/);
  });
});

describe('validateManifest: cross-field rules', () => {
  it("requires each agent's bottle to exist", () => {
    expectIssue({ ...minimalDoc(), agents: { coder: { bottle: 'wbe' } } }, 'agents.coder.bottle', 'no bottle named "wbe" (defined: web)');
    expectIssue({ version: 1, bottles: {}, agents: { coder: { bottle: 'web' } } }, 'agents.coder.bottle', /no bottles are defined/);
    // Inherited properties are not bottles.
    expectIssue({ ...minimalDoc(), agents: { coder: { bottle: 'toString' } } }, 'agents.coder.bottle', /no bottle named/);
  });

  it('allows prompt or prompt_file, not both', () => {
    expectIssue({ ...minimalDoc(), agents: { coder: { bottle: 'web', prompt: 'p', prompt_file: './p.md' } } }, 'agents.coder', /not both/);
  });

  it('allows at most one anthropic-base-url route per bottle', () => {
    const doc = withBottle({
      cred_proxy: {
        routes: [
          route({ path: '/a', roles: ['anthropic-base-url'] }),
          route({ path: '/b', roles: [] }),
          route({ path: '/c', roles: ['anthropic-base-url'] }),
        ],
      },
    });
    expectIssue(doc, 'bottles.web.cred_proxy.routes[2].roles', /only one route.*routes\[0\]/);
    // Two bottles may each have one.
    expectValid({
      version: 1,
      bottles: {
        a: { cred_proxy: { routes: [route({ roles: ['anthropic-base-url'] })] } },
        b: { cred_proxy: { routes: [route({ roles: ['anthropic-base-url'] })] } },
      },
      agents: {},
    });
  });

  it('requires unique route paths within a bottle, trailing slash or not', () => {
    const doc = withBottle({ cred_proxy: { routes: [route({ path: '/api' }), route({ path: '/other' }), route({ path: '/api/' })] } });
    expectIssue(doc, 'bottles.web.cred_proxy.routes[2].path', /duplicate route path \(same as routes\[0\]\)/);
  });

  it('requires unique git remote names', () => {
    const doc = withBottle({ git: [remote(), remote({ upstream: 'https://h/other.git' })] });
    expectIssue(doc, 'bottles.web.git[1].name', /duplicate remote name/);
  });

  it('requires a key and known_hosts for an ssh upstream and keeps secrets to their transport', () => {
    const ssh = { upstream: 'ssh://git@github.com/me/app.git', token: undefined };
    expectIssue(withBottle({ git: [remote(ssh)] }), 'bottles.web.git[0].key', 'required for an ssh:// upstream');
    expectIssue(withBottle({ git: [remote({ ...ssh, key: { file: 'k' } })] }), 'bottles.web.git[0].known_hosts', /required for an ssh:\/\/ upstream/);
    expectIssue(withBottle({ git: [remote({ ...ssh, key: { file: 'k' }, token: { env: 'T' } })] }), 'bottles.web.git[0].token', /https/);
    expectIssue(withBottle({ git: [remote({ key: { file: 'k' } })] }), 'bottles.web.git[0].key', /only for ssh/);
    expectIssue(withBottle({ git: [remote({ known_hosts: { file: 'kh' } })] }), 'bottles.web.git[0].known_hosts', /only for ssh/);
    expectValid(withBottle({ git: [remote({ ...ssh, key: { env: 'KEY' }, known_hosts: { file: 'kh' } })] }));
  });
});

describe('validateManifest: every error at once', () => {
  it('reports schema and cross-field errors together, each with its path', () => {
    const doc = {
      version: 1,
      surprise: 1,
      bottles: {
        web: {
          runtime: 'docker',
          egress: { allow: ['ok.example.com', 'bad host'] },
          git: [remote({ upstream: 'ssh://git@h/r.git', token: undefined })],
          cred_proxy: { routes: [route({ path: '/x' }), route({ path: '/x', token: 7 })] },
          env: { 'NOT-OK': { value: 'x' } },
        },
      },
      agents: { coder: { bottle: 'nope', prompt: 'p', prompt_file: 'f' } },
    };
    const paths = issuesOf(doc).map((i) => i.path);
    expect(new Set(paths)).toEqual(
      new Set([
        'surprise',
        'bottles.web.runtime',
        'bottles.web.egress.allow[1]',
        'bottles.web.git[0].key',
        'bottles.web.git[0].known_hosts',
        'bottles.web.cred_proxy.routes[1].path',
        'bottles.web.cred_proxy.routes[1].token',
        'bottles.web.env.NOT-OK',
        'agents.coder.bottle',
        'agents.coder',
      ]),
    );
  });

  it('runs cross-field rules where the schema already failed elsewhere', () => {
    // The route's bad token does not hide the duplicate path, nor the bad runtime the missing bottle.
    const doc = {
      version: 3,
      bottles: { web: { runtime: 1, cred_proxy: { routes: [route(), route({ token: null })] } } },
      agents: { coder: { bottle: 'missing', command: 'not a list' } },
    };
    const paths = issuesOf(doc).map((i) => i.path);
    expect(paths).toEqual(
      expect.arrayContaining(['version', 'bottles.web.runtime', 'bottles.web.cred_proxy.routes[1].path', 'agents.coder.bottle', 'agents.coder.command']),
    );
  });
});

describe('formatPath', () => {
  it('renders keys, indices and odd names', () => {
    expect(formatPath([])).toBe('(root)');
    expect(formatPath(['bottles', 'web', 'egress', 'allow', 2])).toBe('bottles.web.egress.allow[2]');
    expect(formatPath(['agents', 'my.agent', 'bottle'])).toBe('agents["my.agent"].bottle');
    expect(formatPath(['agents', '', 'bottle'])).toBe('agents[""].bottle');
    expect(formatPath([0, 'a'])).toBe('[0].a');
    expect(formatPath(['env', 'NOT-OK'])).toBe('env.NOT-OK');
  });
});

describe('validateManifest: agent commands', () => {
  it('refuses a NUL inside a command argument, naming its path', () => {
    const doc = { version: 1, bottles: { b: {} }, agents: { a: { bottle: 'b', command: ['bash', '-c', 'echo\0hi'] } } };
    expectIssue(doc, 'agents.a.command[2]', 'NUL');
  });
});

describe('validateManifest: reserved route path', () => {
  it('refuses /healthz, which the cred-proxy answers itself', () => {
    const doc = {
      version: 1,
      bottles: { b: { cred_proxy: { routes: [{ path: '/healthz', upstream: 'https://api.model.test', token: { env: 'T' }, inject: { header: 'x-api-key', format: '{token}' } }] } } },
      agents: { a: { bottle: 'b' } },
    };
    expectIssue(doc, 'bottles.b.cred_proxy.routes[0].path', 'reserved');
  });
});

describe('validateManifest: private_networks and literal upstream addresses', () => {
  it('accepts CIDR blocks and bare addresses; names each bad entry with its path', () => {
    expect(expectValid(withBottle({ private_networks: ['10.20.0.0/16', '192.168.5.7', 'fd12::/16'] })).bottles.web!.private_networks).toEqual(['10.20.0.0/16', '192.168.5.7', 'fd12::/16']);
    expectIssue(withBottle({ private_networks: ['10.20.0.0/16', 'intranet'] }), 'bottles.web.private_networks[1]', '"intranet" is not an IP address');
    expectIssue(withBottle({ private_networks: ['10.20.0.5/16'] }), 'bottles.web.private_networks[0]', 'host bits set; the block is 10.20.0.0/16');
    expectIssue(withBottle({ private_networks: ['127.0.0.0/8'] }), 'bottles.web.private_networks[0]', /never dialled; private_networks cannot allow it/);
    expectIssue(withBottle({ private_networks: ['8.8.8.0/24'] }), 'bottles.web.private_networks[0]', /global addresses need no opt-in/);
    expectIssue(withBottle({ private_networks: '10.0.0.0/8' }), 'bottles.web.private_networks', 'expected a list, got a string');
  });

  it('a route or git remote at a literal private address fails unless opted in; one never dialable fails always', () => {
    const at = 'bottles.web.cred_proxy.routes[0].upstream';
    expectIssue(withBottle({ cred_proxy: { routes: [route({ upstream: 'http://10.20.0.5:8080' })] } }), at, '10.20.0.5 is a private address (RFC 1918); allow it with bottles.web.private_networks');
    expectValid(withBottle({ private_networks: ['10.20.0.0/16'], cred_proxy: { routes: [route({ upstream: 'http://10.20.0.5:8080' })] } }));
    expectIssue(withBottle({ private_networks: ['0.0.0.0/0'], cred_proxy: { routes: [route({ upstream: 'http://169.254.169.254/' })] } }), at, /cloud metadata\), which the cred-proxy never connects to/);
    expectIssue(withBottle({ git: [remote({ upstream: 'https://[fd00::5]/r.git' })] }), 'bottles.web.git[0].upstream', /unique local address \(fc00::\/7\); allow it with bottles\.web\.private_networks/);
    expectValid(withBottle({ private_networks: ['fd00::/8'], git: [remote({ upstream: 'https://[fd00::5]/r.git' })] }));
    expectValid(withBottle({ cred_proxy: { routes: [route({ upstream: 'https://api.example.com' })] } }));
  });
});
