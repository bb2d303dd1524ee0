import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { names } from '../../machines/names.js';
import { ensureBuilt } from '../support/cli.js';
import { agentContainer } from '../support/cred-proxy.js';
import { docker, execIn } from '../support/docker.js';
import { connectNetwork, gatewayOf, startUpstreams, type UpstreamNet } from '../support/egress.js';
import { AGENT_SCRIPT } from '../support/git-server.js';
import { ensureTestImages } from '../support/images.js';
import { agentName, bottleFolder, cli, finishBottleSuite, runDetached, type SecBottle, track, waitForLog } from '../support/security.js';

/**
 * The one address policy of the egress proxy, the cred-proxy and the git gate (issue 12,
 * item 1), in real bottles: an allowlisted name, a route and a git remote whose upstream is a
 * container of this file on a private Docker network are refused by each sidecar while the
 * bottle has not opted that network in (the class in the answer and in `bottle audit`), and
 * reached once it has; the Docker host's own addresses (here the test network's gateway) stay
 * refused inside an opted-in block; and a route or remote at a private address not opted in
 * fails at plan time and at approval time.
 *
 * Network rule: the only upstream is a container of this file on its own internal network
 * (`lan.test`). The refusals happen before any connection is tried: nothing is ever sent to
 * the gateway or to any other address; the upstream's own log of connections says who reached it.
 */

const TOKEN_ENV = 'BOTTLE_TEST_ADDR_TOKEN';
const BOTTLE = 'addr';
const identities = new Set<string>();
let up: UpstreamNet;
let gateway = '';
let lanIp = '';

const inject = { header: 'x-api-key', format: '{token}' };

function addrBottle(tag: string, config: Record<string, unknown>): SecBottle {
  const b = bottleFolder({
    prefix: 'bottle-addr-',
    agent: agentName(`addr-${tag}`),
    bottle: BOTTLE,
    config: { runtime: 'runc', ...config },
    prompt: 'reach the internal service',
    script: AGENT_SCRIPT,
    hostEnv: { [TOKEN_ENV]: 'addr-token-0123456789' },
  });
  track(b.dir);
  return b;
}

/** Launches a bottle detached and puts its three dialling sidecars on the upstream's network. */
async function launch(b: SecBottle): Promise<{ identity: string; agent: string }> {
  const { identity } = await runDetached(b);
  identities.add(identity);
  await waitForLog(b, identity, /^RESULT ready=yes$/m, 120_000);
  const n = names(identity);
  for (const role of ['egress', 'cred-proxy', 'git-gate'] as const) await connectNetwork(up.network, n.sidecar(role));
  return { identity, agent: await agentContainer(identity) };
}

/** Runs a probe as the agent: `name` answers with `code body` (curl) or `exit output` (git), base64 so any text survives. */
async function probe(agent: string, script: string): Promise<Record<string, string>> {
  const r = await execIn(agent, ['bash', '-c', script]);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^R (\S+) (.*)$/.exec(line);
    if (m) out[m[1]!] = Buffer.from(m[2]!, 'base64').toString('utf8');
  }
  return out;
}

const PROBES = String.raw`
get() { out=$(curl -s --max-time 10 -w '\n%{http_code}' "$@"); code=$(printf '%s' "$out" | tail -n1); body=$(printf '%s' "$out" | sed '$d'); printf 'R %s %s\n' "$name" "$(printf '%s %s' "$code" "$body" | base64 -w0)"; }
gitp() { out=$(GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote "$1" 2>&1); rc=$?; printf 'R %s %s\n' "$name" "$(printf '%s %s' "$rc" "$out" | base64 -w0)"; }
`;

async function audit(b: SecBottle, identity: string): Promise<Record<string, unknown>[]> {
  const r = await cli(b, ['audit', identity, '--json']);
  if (r.code !== 0) throw new Error(`bottle audit failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>[];
}

async function stop(b: SecBottle, identity: string): Promise<void> {
  const r = await cli(b, ['stop', identity]);
  expect(r.code, r.stderr).toBe(0);
}

beforeAll(async () => {
  ensureBuilt();
  const images = await ensureTestImages();
  up = await startUpstreams(images.sidecar, [{ name: 'lan', aliases: ['lan.test'], ports: ['80'] }]);
  gateway = await gatewayOf(up.network);
  lanIp = up.upstreams.lan!.ip;
  // The upstream's network is an ordinary private Docker network.
  expect(up.subnet).toMatch(/^(10|172|192)\./);
}, 180_000);

afterAll(() => finishBottleSuite(identities), 120_000);

describe('an upstream on a private network the bottle did not opt in', () => {
  let b: SecBottle;
  let identity = '';
  let r: Record<string, string> = {};
  let lines: Record<string, unknown>[] = [];
  let connectionsBefore = 0;
  let approval: { code: number | null; stderr: string } = { code: -1, stderr: '' };

  beforeAll(async () => {
    b = addrBottle('closed', {
      egress: { allow: ['lan.test'] },
      cred_proxy: { routes: [{ path: '/lan', upstream: 'http://lan.test', token: { env: TOKEN_ENV }, inject }] },
      git: [{ name: 'lan', upstream: 'http://lan.test/app.git', push: [] }],
      supervise: true,
    });
    const launched = await launch(b);
    identity = launched.identity;
    connectionsBefore = (await up.upstreams.lan!.connections()).length;
    r = await probe(
      launched.agent,
      `${PROBES}
name=egress get -x http://egress:3128 http://lan.test/
name=cred get http://cred-proxy:9099/lan/v1/x
name=git gitp http://git-gate:8418/lan.git
name=propose get -H 'content-type: application/json' --noproxy '*' "$BOTTLE_SUPERVISE_URL/proposals" -d '{"kind":"route","reason":"the internal API","route":{"path":"/lan2","upstream":"http://${lanIp}:80","inject":{"header":"x-api-key","format":"{token}"},"roles":[]}}'
`,
    );
    // The proposal reaches the run; approving it fails on the host with the reason.
    const id = /"id":"(p[a-z0-9]+)"/.exec(r.propose ?? '')?.[1] ?? '';
    expect(id, r.propose).not.toBe('');
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const list = await cli(b, ['proposals', identity, '--json']);
      if (list.stdout.includes(id)) break;
      await new Promise((res) => setTimeout(res, 300));
    }
    approval = await cli(b, ['approve', identity, id, '--token-env', TOKEN_ENV]);
    lines = await audit(b, identity);
    await stop(b, identity);
  }, 240_000);

  it('egress refuses the allowlisted name, naming the class and the key', () => {
    expect(r.egress).toMatch(/^403 /);
    expect(r.egress).toContain(`lan.test resolves to ${lanIp}, a private address (RFC 1918); allow it with bottles.${BOTTLE}.private_networks`);
  });

  it('the cred-proxy refuses the route’s upstream, naming the class and the key', () => {
    expect(r.cred).toMatch(/^403 /);
    expect(r.cred).toContain(`lan.test resolves to ${lanIp}, a private address (RFC 1918); allow it with bottles.${BOTTLE}.private_networks`);
  });

  it('the git gate refuses the remote’s upstream, naming the class and the key', () => {
    expect(r.git).toMatch(/^[1-9]/);
    expect(r.git).toContain(`a private address (RFC 1918); allow it with bottles.${BOTTLE}.private_networks`);
  });

  it('each refusal is in `bottle audit` with its address class', () => {
    const refused = (source: string) => lines.filter((l) => l.source === source && l.address_class === 'private (RFC 1918)');
    expect(refused('egress').length, JSON.stringify(lines.filter((l) => l.source === 'egress'))).toBeGreaterThan(0);
    expect(refused('cred-proxy').length, JSON.stringify(lines.filter((l) => l.source === 'cred-proxy'))).toBeGreaterThan(0);
    expect(refused('git-gate').length, JSON.stringify(lines.filter((l) => l.source === 'git-gate'))).toBeGreaterThan(0);
  });

  it('nothing reached the upstream', async () => {
    expect(await up.upstreams.lan!.connections()).toHaveLength(connectionsBefore);
  });

  it('a route proposal to the private address fails at approval time with a clear error', () => {
    expect(approval.code).toBe(1);
    expect(approval.stderr).toContain('ADDRESS_REFUSED');
    expect(approval.stderr).toContain(`${lanIp} is a private address (RFC 1918); allow it with bottles.${BOTTLE}.private_networks`);
  });
});

describe('opted in: reached; the Docker host’s addresses stay refused inside the opted-in block', () => {
  let b: SecBottle;
  let identity = '';
  let r: Record<string, string> = {};
  let lines: Record<string, unknown>[] = [];
  let reached: string[] = [];
  const sidecarAddresses: Record<string, string> = {};

  beforeAll(async () => {
    b = addrBottle('open', {
      // The whole subnet, gateway included: the gateway is the Docker host's, and stays refused.
      private_networks: [up.subnet],
      egress: { allow: ['lan.test', `${gateway}:80`] },
      cred_proxy: {
        routes: [
          { path: '/lan', upstream: 'http://lan.test', token: { env: TOKEN_ENV }, inject },
          { path: '/gw', upstream: `http://${gateway}`, token: { env: TOKEN_ENV }, inject },
        ],
      },
      git: [
        { name: 'lan', upstream: 'http://lan.test/app.git', push: [] },
        { name: 'gw', upstream: `http://${gateway}/app.git`, push: [] },
      ],
    });
    const launched = await launch(b);
    identity = launched.identity;
    const n = names(identity);
    for (const role of ['egress', 'cred-proxy', 'git-gate'] as const) {
      const info = await docker().getContainer(n.sidecar(role)).inspect();
      sidecarAddresses[role] = info.NetworkSettings.Networks[up.network]?.IPAddress ?? '';
    }
    const before = (await up.upstreams.lan!.connections()).length;
    r = await probe(
      launched.agent,
      `${PROBES}
name=egress get -x http://egress:3128 http://lan.test/
name=egress_gw get -x http://egress:3128 http://${gateway}/
name=cred get http://cred-proxy:9099/lan/v1/x
name=cred_gw get http://cred-proxy:9099/gw/v1/x
name=git gitp http://git-gate:8418/lan.git
name=git_gw gitp http://git-gate:8418/gw.git
`,
    );
    reached = (await up.upstreams.lan!.connections()).slice(before).map((c) => c.remote);
    lines = await audit(b, identity);
    await stop(b, identity);
  }, 240_000);

  it('`bottle plan` shows the opt-in, in text and in --json', async () => {
    const text = await cli(b, ['plan', b.agent, '-f', b.manifest]);
    expect(text.stderr).toContain(up.subnet);
    const json = await cli(b, ['plan', b.agent, '-f', b.manifest, '--json']);
    expect((JSON.parse(json.stdout) as { private_networks: string[] }).private_networks).toEqual([up.subnet]);
  });

  it('each sidecar reaches the opted-in upstream', () => {
    expect(r.egress).toMatch(/^200 hello from lan/);
    expect(r.cred).toMatch(/^200 hello from lan/);
    // The upstream is no git server: the gate got through to it and was answered.
    expect(r.git).not.toContain('private_networks');
    for (const role of ['egress', 'cred-proxy', 'git-gate']) {
      expect(sidecarAddresses[role], role).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
      expect(reached.some((remote) => remote.endsWith(sidecarAddresses[role]!)), `${role} ${JSON.stringify(reached)}`).toBe(true);
    }
  });

  it('the network’s gateway, an address of the Docker host, is refused by all three although the subnet is opted in', () => {
    expect(r.egress_gw).toMatch(/^403 /);
    expect(r.egress_gw).toContain(`${gateway} is an address of the Docker host`);
    expect(r.egress_gw).toContain('not even inside private_networks');
    expect(r.cred_gw).toMatch(/^403 /);
    expect(r.cred_gw).toContain(`${gateway} is an address of the Docker host`);
    expect(r.git_gw).toMatch(/^[1-9]/);
    expect(r.git_gw).toContain(`${gateway} is an address of the Docker host`);
    for (const source of ['egress', 'cred-proxy', 'git-gate']) {
      expect(lines.some((l) => l.source === source && l.address_class === 'docker host'), source).toBe(true);
    }
  });
});

describe('plan time: a route or git remote at a private address not opted in', () => {
  it('fails `bottle validate` and `bottle plan` with the path, the class and the key; opted in, it plans', async () => {
    const closed = addrBottle('plan', {
      cred_proxy: { routes: [{ path: '/lan', upstream: `http://${lanIp}:80`, token: { env: TOKEN_ENV }, inject }] },
      git: [{ name: 'lan', upstream: `http://${lanIp}/app.git`, push: [] }],
    });
    for (const args of [['validate', '-f', closed.manifest], ['plan', closed.agent, '-f', closed.manifest]]) {
      const res = await cli(closed, args);
      expect(res.code, args[0]).toBe(2);
      expect(res.stderr).toContain('MANIFEST_INVALID');
      expect(res.stderr).toContain(`bottles.${BOTTLE}.cred_proxy.routes[0].upstream`);
      expect(res.stderr).toContain(`bottles.${BOTTLE}.git[0].upstream`);
      expect(res.stderr).toContain(`${lanIp} is a private address (RFC 1918); allow it with bottles.${BOTTLE}.private_networks`);
    }
    const open = addrBottle('plan-open', {
      private_networks: [up.subnet],
      cred_proxy: { routes: [{ path: '/lan', upstream: `http://${lanIp}:80`, token: { env: TOKEN_ENV }, inject }] },
    });
    const planned = await cli(open, ['plan', open.agent, '-f', open.manifest, '--json']);
    expect(planned.code, planned.stderr).toBe(0);
  });
});
