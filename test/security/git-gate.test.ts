import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { names } from '../../machines/names.js';
import { auditDir } from '../../store/paths.js';
import { ensureBuilt } from '../support/cli.js';
import { agentContainer, agentProbe, makePki, SCAN_PROBE, type ScanResult } from '../support/cred-proxy.js';
import { docker, execIn, removeAllLabelled } from '../support/docker.js';
import {
  AGENT_GIT_ENV,
  addressOn,
  attachGitServer,
  createGitNetwork,
  GIT_NETWORK,
  type GitServer,
  gitServerImage,
  makeSshKeys,
  newGitBottle,
  startGitServer,
} from '../support/git-server.js';
import { ensureTestImages } from '../support/images.js';
import {
  assertNothingLabelled,
  cli,
  identityLabels,
  leftovers,
  needle,
  newSecret,
  removeBottleObjects,
  removeTempDirs,
  results,
  runDetached,
  type SecBottle,
  suiteLabels,
  track,
  waitForLog,
} from '../support/security.js';

/**
 * The git gate in a real bottle (issue 6, "How we will know"). The upstream is the suite's own
 * git server (test/support/git-server.ts: Debian's openssh-server and git, key-only login, bare
 * repositories, and git http-backend behind TLS wanting a token). One bottle declares three
 * remotes: `origin` (ssh, push agent/*), `web` (https with a token and the test CA, push
 * agent/*) and `ro` (ssh, push: []), and is launched with --cwd of a project whose own
 * .git/config names another remote with credentials. Once the bottle is up the server joins its
 * egress network as git.test. The agent's git runs in the agent's container as its user
 * (`docker exec`); the verdicts come from what the agent's git printed, the server's
 * repositories, the scan of the agent's container and `bottle audit`.
 *
 * Network rule: the agent addresses git-gate:8418 and, to show there is no way around the gate,
 * git.test (the suite's server) through the egress proxy and by address; nothing here sends
 * traffic to a public address.
 */

const TOKEN_ENV = 'BOTTLE_TEST_GIT_TOKEN';
const token = newSecret('gittoken');
const keys = makeSshKeys();
const pki = makePki(['git.test']);
track(keys.dir);
track(pki.dir);

let server: GitServer;
let bottle: SecBottle;
let identity = '';
let agent = '';
let stopped = false;
const project = mkdtempSync(join(tmpdir(), 'bottle-git-project-'));
track(project);
/** What the user's own .git/config holds and must not reach the bottle. */
const USER_SECRET_URL = 'https://me:hunter2-user-password@code.example.invalid/me/app.git';

/** Runs a bash script as the agent, in its container, with git's identity set. */
async function agentSh(script: string): Promise<{ code: number; out: string }> {
  const vars = Object.entries(AGENT_GIT_ENV).map(([k, v]) => `${k}=${v}`);
  const r = await execIn(agent, ['env', ...vars, 'bash', '-c', script]);
  return { code: r.code, out: `${r.stdout}${r.stderr}` };
}

async function agentOk(script: string): Promise<string> {
  const r = await agentSh(script);
  if (r.code !== 0) throw new Error(`agent script failed (${r.code}):\n${script}\n---\n${r.out}`);
  return r.out;
}

/** Every ref of the upstream's app.git: what "the upstream did not change" compares. */
async function upstreamRefs(): Promise<string> {
  return (await server.git('app', ['for-each-ref', '--format=%(refname) %(objectname)'])).stdout;
}

beforeAll(async () => {
  ensureBuilt();
  const images = await ensureTestImages();
  const serverImage = await gitServerImage(images.base);
  const gitSubnet = await createGitNetwork();
  server = await startGitServer(serverImage, keys, pki, token);

  // The user's project: a git repository whose config has a remote with a password, a credential
  // helper and an extra header. None of it may reach the bottle.
  const git = (args: string[]) => execFileSync('git', args, { cwd: project, stdio: 'ignore', env: { ...process.env, ...AGENT_GIT_ENV, GIT_CONFIG_NOSYSTEM: '1', HOME: project } });
  git(['init', '--quiet', '-b', 'main']);
  writeFileSync(join(project, 'README.md'), 'the project\n');
  git(['add', '.']);
  git(['commit', '--quiet', '-m', 'project commit']);
  git(['remote', 'add', 'mine', USER_SECRET_URL]);
  git(['config', 'credential.helper', 'store --file /home/me/.git-credentials-hunter2']);
  git(['config', 'http.extraHeader', 'Authorization: Bearer hunter2-header']);

  bottle = newGitBottle({
    tag: 'main',
    // runtime auto, as users get it: the agent runs under gVisor wherever the daemon has it.
    runtime: 'auto',
    cwd: project,
    hostEnv: { [TOKEN_ENV]: token },
    // The server is a container of ours on a private network: opted in, as a user would an internal git host.
    privateNetworks: [gitSubnet],
    remotes: [
      { name: 'origin', upstream: 'ssh://git@git.test/srv/git/app.git', key: { file: keys.keyFile }, known_hosts: { file: keys.knownHostsFile }, push: ['agent/*'] },
      { name: 'web', upstream: 'https://git.test/app.git', token: { env: TOKEN_ENV }, ca: { file: pki.caFile }, push: ['agent/*'] },
      { name: 'ro', upstream: 'ssh://git@git.test/srv/git/app.git', key: { file: keys.keyFile }, known_hosts: { file: keys.knownHostsFile }, push: [] },
    ],
  });
  track(bottle.dir);
  const launched = await runDetached(bottle);
  identity = launched.identity;
  results(await waitForLog(bottle, identity, /^RESULT ready=yes$/m, 120_000));
  agent = await agentContainer(identity);
  await attachGitServer(`bottle-${identity}-git-gate`);
});

afterAll(async () => {
  if (bottle && identity && !stopped) await cli(bottle, ['stop', identity]).catch(() => undefined);
  const left = identity ? await leftovers(identity) : [];
  if (identity) await removeBottleObjects(identity);
  await removeAllLabelled(suiteLabels);
  removeTempDirs();
  expect(left, 'objects the bottle left behind').toEqual([]);
  if (identity) await assertNothingLabelled(identityLabels(identity));
  await assertNothingLabelled(suiteLabels);
});

describe('the git gate in a real bottle', () => {
  it("clones through the gate and sees the upstream's history", async () => {
    const out = await agentOk('git clone --quiet http://git-gate:8418/origin.git /tmp/app && git -C /tmp/app log --format=%s main');
    expect(out.trim().split('\n')).toEqual(['app: second upstream commit', 'app: first upstream commit']);
    const head = (await agentOk('git -C /tmp/app rev-parse HEAD')).trim();
    expect(head).toBe(await server.ref('app', 'refs/heads/main'));
  });

  it('with --cwd, /workspace has the declared remotes at the gate and none of the user’s remotes or credentials', async () => {
    const remotes = await agentOk('cd /workspace && git remote -v && git log --format=%s -1');
    expect(remotes).toContain('origin\thttp://git-gate:8418/origin.git (fetch)');
    expect(remotes).toContain('web\thttp://git-gate:8418/web.git (fetch)');
    expect(remotes).toContain('ro\thttp://git-gate:8418/ro.git (fetch)');
    expect(remotes).not.toContain('mine');
    expect(remotes).toContain('project commit');
    const config = await agentOk('cat /workspace/.git/config; find /workspace/.git -maxdepth 1');
    for (const leak of ['hunter2', 'code.example.invalid', 'credential', 'extraheader', 'FETCH_HEAD']) expect(config.toLowerCase()).not.toContain(leak.toLowerCase());
    const grep = await agentSh('grep -r -l hunter2 /workspace');
    expect(grep.out.trim()).toBe('');
    // The workspace's remote works as it is.
    const fetched = await agentOk('cd /workspace && git fetch --quiet origin && git log --format=%s -1 origin/main');
    expect(fetched.trim()).toBe('app: second upstream commit');
  });

  it('pushing agent/feature arrives upstream; main, a force push, a deletion and a tag are refused and change nothing upstream', async () => {
    const head = (await agentOk('cd /tmp/app && echo agent > agent.txt && git add . && git commit --quiet -m "agent: work" && git rev-parse HEAD')).trim();
    const ok = await agentSh('cd /tmp/app && git push origin HEAD:refs/heads/agent/feature');
    expect(ok.code, ok.out).toBe(0);
    expect(ok.out).toMatch(/git-gate: forwarded to the upstream of origin/);
    expect(await server.ref('app', 'refs/heads/agent/feature')).toBe(head);

    const before = await upstreamRefs();
    const main = await agentSh('cd /tmp/app && git push origin HEAD:main');
    expect(main.code).not.toBe(0);
    expect(main.out).toMatch(/refs\/heads\/main matches none of the push patterns \(agent\/\*\)/);

    const force = await agentSh('cd /tmp/app && git commit --quiet --amend -m "agent: rewritten" && git push --force origin HEAD:refs/heads/agent/feature');
    expect(force.code).not.toBe(0);
    expect(force.out).toMatch(/not a fast-forward/);

    const del = await agentSh('cd /tmp/app && git push origin --delete agent/feature');
    expect(del.code).not.toBe(0);
    expect(del.out).toMatch(/deleting refs\/heads\/agent\/feature is not allowed/);

    const tag = await agentSh('cd /tmp/app && git tag v1 && git push origin v1');
    expect(tag.code).not.toBe(0);
    expect(tag.out).toMatch(/tag pushes are allowed only where a push pattern names refs\/tags/);

    const ro = await agentSh('cd /tmp/app && git push http://git-gate:8418/ro.git HEAD:refs/heads/agent/ro');
    expect(ro.code).not.toBe(0);
    expect(ro.out).toMatch(/remote ro is read-only/);

    expect(await upstreamRefs()).toBe(before);
    expect(await server.ref('app', 'refs/heads/agent/feature')).toBe(head);
  });

  it("an upstream that refuses a push makes the agent's push fail with the upstream's message", async () => {
    const before = await upstreamRefs();
    const r = await agentSh('cd /tmp/app && git push origin HEAD:refs/heads/agent/frozen');
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/upstream policy: agent\/frozen is frozen by the upstream itself/);
    expect(await upstreamRefs()).toBe(before);
    // The gate's mirror did not take it either.
    expect((await agentOk('git ls-remote http://git-gate:8418/origin.git refs/heads/agent/frozen')).trim()).toBe('');
  });

  it('an https upstream works with a token the agent never holds', async () => {
    const out = await agentOk(
      'git clone --quiet http://git-gate:8418/web.git /tmp/web && cd /tmp/web && git log --format=%s -1 main && echo web > web.txt && git add . && git commit --quiet -m "agent: over https" && git push --quiet origin HEAD:refs/heads/agent/web 2>&1 && git rev-parse HEAD',
    );
    const head = out.trim().split('\n').at(-1)!;
    expect(out).toContain('app: second upstream commit');
    expect(await server.ref('app', 'refs/heads/agent/web')).toBe(head);
    const requests = (await server.lines()).filter((l) => l.kind === 'request');
    // git asks without credentials first (401), then with the token from the gate's helper.
    expect(requests.some((r) => r.auth === 'ok' && r.service === 'git-receive-pack')).toBe(true);
    expect(requests.some((r) => r.auth === 'ok' && r.path === '/app.git/git-upload-pack')).toBe(true);
    expect(requests.filter((r) => r.auth === 'bad')).toEqual([]);
  });

  it('a remote that is not declared cannot be reached, through the gate or around it', async () => {
    const through = await agentSh('git ls-remote http://git-gate:8418/other.git; echo "exit=$?"');
    expect(through.out).toMatch(/no remote 'other' is declared/);
    expect(through.out).toMatch(/exit=[1-9]/);
    const dots = await agentSh('git ls-remote "http://git-gate:8418/origin.git/../other.git"; echo "exit=$?"');
    expect(dots.out).toMatch(/exit=[1-9]/);
    const encoded = await agentSh('git ls-remote "http://git-gate:8418/%6fther.git"; echo "exit=$?"');
    expect(encoded.out).toMatch(/exit=[1-9]/);
    // Around the gate: the egress proxy does not allow git.test, DNS is closed, and the
    // server's address has no route from the agent.
    const viaProxy = await agentSh('git ls-remote https://git.test/other.git; echo "exit=$?"');
    expect(viaProxy.out).toMatch(/exit=[1-9]/);
    expect(viaProxy.out).toMatch(/403|CONNECT/);
    const ssh = await agentSh('GIT_SSH_COMMAND="ssh -o BatchMode=yes -o ConnectTimeout=3 -o StrictHostKeyChecking=no" git ls-remote ssh://git@git.test/srv/git/other.git; echo "exit=$?"');
    expect(ssh.out).toMatch(/exit=[1-9]/);
    const address = await addressOn(server.container, GIT_NETWORK);
    expect(address).not.toBe('');
    const direct = await agentSh(`for p in 22 443; do timeout 3 bash -c "echo > /dev/tcp/${address}/$p" 2>&1 && echo "open $p" || echo "closed $p"; done`);
    expect(direct.out).toContain('closed 22');
    expect(direct.out).toContain('closed 443');
    expect(direct.out).not.toMatch(/open \d+/);
    // Control: the gate itself reaches the server (so "closed" above is the bottle, not the server).
    const gate = `bottle-${identity}-git-gate`;
    const control = await execIn(gate, ['bash', '-c', `timeout 3 bash -c "echo > /dev/tcp/git.test/22" && echo reachable`]);
    expect(control.stdout).toContain('reachable');
    expect(GIT_NETWORK).not.toBe(names(identity).egressNetwork);
  });

  it('the private key and the token are nowhere in the agent container (files, env, /proc, docker inspect)', async () => {
    const keyNeedle = { key: needle(keys.privateLine) };
    const probe = SCAN_PROBE.replace("const PREFIX = Buffer.from('bbsec-');", 'const PREFIX = Buffer.from(process.env.SCAN_PREFIX);');
    expect(probe).not.toBe(SCAN_PROBE);
    const keyScan = await agentProbe<ScanResult>(agent, probe, [JSON.stringify(keyNeedle)], { SCAN_PREFIX: keys.privateLine.slice(0, 8) });
    expect(keyScan.found.key).toEqual([]);
    expect(keyScan.files_read).toBeGreaterThan(1000);
    expect(keyScan.environ_read).toBeGreaterThan(0);
    const tokenScan = await agentProbe<ScanResult>(agent, SCAN_PROBE, [JSON.stringify({ token: needle(token) })]);
    expect(tokenScan.found.token).toEqual([]);
    const inspect = JSON.stringify(await docker().getContainer(agent).inspect());
    expect(inspect).not.toContain(keys.privateLine);
    expect(inspect).not.toContain(token);
    // Control: the gate holds them, so the scans were looking for something that exists.
    const gate = `bottle-${identity}-git-gate`;
    const held = await execIn(gate, ['bash', '-c', 'cat /run/bottle/git-gate/secrets/*/key /run/bottle/git-gate/secrets/*/token']);
    expect(held.stdout).toContain(keys.privateLine);
    expect(held.stdout).toContain(token);
    const gateInspect = JSON.stringify(await docker().getContainer(gate).inspect());
    expect(gateInspect).not.toContain(keys.privateLine);
    expect(gateInspect).not.toContain(token);
  });

  it('every push and fetch is in `bottle audit --json` with source git-gate, live and after teardown', async () => {
    const live = await cli(bottle, ['audit', identity, '--json']);
    expect(live.code, live.stderr).toBe(0);
    type Entry = { source: string; type: string; remote?: string; ref?: string | null; decision?: string; reason?: string; old?: string | null; new?: string | null };
    const gateEntries = (JSON.parse(live.stdout) as Entry[]).filter((e) => e.source === 'git-gate');
    const pushes = gateEntries.filter((e) => e.type === 'push');
    const fetches = gateEntries.filter((e) => e.type === 'fetch');
    expect(fetches.some((e) => e.remote === 'origin' && e.decision === 'allow')).toBe(true);
    expect(fetches.some((e) => e.remote === 'web' && e.decision === 'allow')).toBe(true);
    expect(fetches.some((e) => e.remote === 'other' && e.decision === 'deny')).toBe(true);
    const decided = pushes.map((e) => `${e.remote} ${e.ref} ${e.decision}`);
    expect(decided).toEqual(
      expect.arrayContaining([
        'origin refs/heads/agent/feature allow',
        'origin refs/heads/main deny',
        'origin refs/tags/v1 deny',
        'ro null deny',
        'origin refs/heads/agent/frozen deny',
        'web refs/heads/agent/web allow',
      ]),
    );
    expect(pushes.filter((e) => e.ref === 'refs/heads/agent/feature' && e.decision === 'deny').length).toBe(2);
    const frozen = pushes.find((e) => e.ref === 'refs/heads/agent/frozen')!;
    expect(frozen.reason).toMatch(/upstream rejected: .*frozen/);
    const accepted = pushes.find((e) => e.ref === 'refs/heads/agent/feature' && e.decision === 'allow')!;
    expect(accepted.old).toMatch(/^0{40}$/);
    expect(accepted.new).toBe(await server.ref('app', 'refs/heads/agent/feature'));

    const stop = await cli(bottle, ['stop', identity]);
    stopped = true;
    expect(stop.code, stop.stderr).toBe(0);
    const file = join(auditDir(bottle.home, identity), 'git-gate.jsonl');
    expect(existsSync(file)).toBe(true);
    const kept = readFileSync(file, 'utf8');
    expect(kept.split('\n').filter(Boolean).length).toBe(gateEntries.length);
    expect(kept).not.toContain(token);
    expect(kept).not.toContain(keys.privateLine);
    const after = await cli(bottle, ['audit', identity, '--json']);
    expect((JSON.parse(after.stdout) as Entry[]).filter((e) => e.source === 'git-gate').length).toBe(gateEntries.length);
  });
});
