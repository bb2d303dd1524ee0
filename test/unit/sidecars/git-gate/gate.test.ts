import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveCgi } from '../../../../sidecars/git-gate/cgi.js';
import { freePort } from '../main-process.js';

/**
 * The git gate's program (main.ts, its hook and http-backend) on loopback, against an upstream
 * of the test's own: `git http-backend` behind a Node HTTP server on 127.0.0.1 that wants
 * HTTP Basic x-access-token:<token>. The same behaviour in real bottles, with ssh and TLS
 * upstreams, is tested in test/security/git-gate.test.ts.
 */

const TOKEN = 'gate-test-token-1234567890';
const dir = mkdtempSync(join(tmpdir(), 'git-gate-unit-'));
const gitEnv = {
  PATH: process.env.PATH ?? '',
  HOME: join(dir, 'home'),
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_TERMINAL_PROMPT: '0',
  GIT_AUTHOR_NAME: 'test',
  GIT_AUTHOR_EMAIL: 'test@example.invalid',
  GIT_COMMITTER_NAME: 'test',
  GIT_COMMITTER_EMAIL: 'test@example.invalid',
};
const git = (cwd: string, args: string[]) => execFileSync('git', args, { cwd, env: gitEnv, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
/**
 * Runs git without blocking this process (the upstream server lives here) and returns its
 * exit code and both outputs; never throws.
 */
function tryGit(cwd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile('git', args, { cwd, env: gitEnv, encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) || 1 : 0, out: `${stdout}${stderr}` });
    });
  });
}
const agit = async (cwd: string, args: string[]) => {
  const r = await tryGit(cwd, args);
  if (r.code !== 0) throw new Error(`git ${args.join(' ')} failed: ${r.out}`);
  return r.out;
};

let upstream: Server;
let upstreamPort = 0;
let gatePort = 0;
let gate: ChildProcess;
const gateOut = { stdout: '', stderr: '' };
const upRoot = join(dir, 'upstream');
const seenAuth: string[] = [];

beforeAll(async () => {
  mkdirSync(gitEnv.HOME);
  mkdirSync(upRoot);
  // The upstream: app.git with two commits on main and a hook that refuses agent/frozen.
  git(upRoot, ['init', '--bare', '--quiet', '-b', 'main', 'app.git']);
  git(join(upRoot, 'app.git'), ['config', 'http.receivepack', 'true']);
  writeFileSync(join(upRoot, 'app.git', 'hooks', 'pre-receive'), '#!/bin/sh\nwhile read old new ref; do [ "$ref" = refs/heads/agent/frozen ] && { echo "upstream policy: agent/frozen is frozen"; exit 1; }; done; exit 0\n', { mode: 0o755 });
  git(upRoot, ['init', '--bare', '--quiet', '-b', 'main', 'secret.git']);
  const seed = join(dir, 'seed');
  git(dir, ['init', '--quiet', '-b', 'main', seed]);
  for (const n of ['one', 'two']) {
    writeFileSync(join(seed, `${n}.txt`), n);
    git(seed, ['add', '.']);
    git(seed, ['commit', '--quiet', '-m', `commit ${n}`]);
  }
  git(seed, ['push', '--quiet', join(upRoot, 'app.git'), 'main']);
  git(seed, ['push', '--quiet', join(upRoot, 'secret.git'), 'main']);

  upstream = createServer((req, res) => {
    const auth = req.headers.authorization ?? '';
    seenAuth.push(auth);
    if (auth !== `Basic ${Buffer.from(`x-access-token:${TOKEN}`).toString('base64')}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="test"' });
      res.end();
      return;
    }
    const url = new URL(req.url ?? '/', 'http://upstream');
    void serveCgi(req, res, { projectRoot: upRoot, pathInfo: url.pathname, query: url.search.slice(1), env: { PATH: gitEnv.PATH, HOME: gitEnv.HOME } });
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  upstreamPort = (upstream.address() as AddressInfo).port;

  const conf = join(dir, 'conf');
  mkdirSync(conf);
  writeFileSync(join(conf, 'token'), TOKEN, { mode: 0o600 });
  writeFileSync(
    join(conf, 'remotes.json'),
    JSON.stringify({
      remotes: [
        { name: 'origin', upstream: `http://127.0.0.1:${upstreamPort}/app.git`, push: ['agent/*'], token_file: join(conf, 'token') },
        { name: 'ro', upstream: `http://127.0.0.1:${upstreamPort}/app.git`, push: [], token_file: join(conf, 'token') },
        // Private and not opted in: refused before any connection is tried (nothing is sent to it).
        { name: 'lan', upstream: `http://10.20.0.5:${upstreamPort}/app.git`, push: ['agent/*'], token_file: join(conf, 'token') },
      ],
    }),
  );
  gatePort = await freePort();
  const tsx = import.meta.resolve('tsx');
  gate = spawn(process.execPath, ['--import', tsx, join(process.cwd(), 'sidecars', 'git-gate', 'main.ts')], {
    env: {
      PATH: gitEnv.PATH,
      HOME: join(dir, 'gatehome'),
      BOTTLE_SIDECAR_PORT: String(gatePort),
      BOTTLE_GIT_GATE_CONFIG: join(conf, 'remotes.json'),
      BOTTLE_GIT_GATE_STATE: join(dir, 'gate'),
      BOTTLE_RUN: 'run-1',
      BOTTLE_BOTTLE: 'web',
      // The test's upstream is on 127.0.0.1; every other address is judged as in a bottle.
      BOTTLE_TEST_DIAL_LOOPBACK: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  gate.stdout!.on('data', (d: Buffer) => {
    gateOut.stdout += d.toString();
  });
  gate.stderr!.on('data', (d: Buffer) => {
    gateOut.stderr += d.toString();
  });
  const deadline = Date.now() + 20_000;
  while (!gateOut.stdout.includes('ready\n')) {
    if (Date.now() > deadline || gate.exitCode !== null) throw new Error(`gate did not start:\n${gateOut.stderr}`);
    await delay(50);
  }
});

afterAll(async () => {
  gate?.kill('SIGKILL');
  await new Promise((r) => upstream?.close(r));
  rmSync(dir, { recursive: true, force: true });
});

const gateUrl = (name: string) => `http://127.0.0.1:${gatePort}/${name}.git`;
const upstreamRef = async (ref: string) => (await tryGit(join(upRoot, 'app.git'), ['rev-parse', '--verify', '--quiet', ref])).out.trim();
const audit = () =>
  gateOut.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe('the git gate on loopback', () => {
  const work = join(dir, 'work');

  it('answers its health check and clones through the gate with the upstream history', async () => {
    const res = await fetch(`http://127.0.0.1:${gatePort}/healthz`);
    expect(res.status).toBe(200);
    await agit(dir, ['clone', '--quiet', gateUrl('origin'), work]);
    expect((await agit(work, ['log', '--format=%s', 'main'])).trim().split('\n')).toEqual(['commit two', 'commit one']);
    expect((await agit(work, ['rev-parse', 'HEAD'])).trim()).toBe(await upstreamRef('refs/heads/main'));
    // The upstream saw the token only as Basic credentials after its challenge.
    expect(seenAuth.some((a) => a.startsWith('Basic '))).toBe(true);
    expect(audit().some((a) => a.type === 'fetch' && a.remote === 'origin' && a.decision === 'allow' && a.run === 'run-1')).toBe(true);
  });

  it('forwards an allowed push upstream and refuses main, force, delete and tags', async () => {
    writeFileSync(join(work, 'three.txt'), 'three');
    await agit(work, ['add', '.']);
    await agit(work, ['commit', '--quiet', '-m', 'commit three']);
    const head = (await agit(work, ['rev-parse', 'HEAD'])).trim();
    const ok = await tryGit(work, ['push', 'origin', 'HEAD:refs/heads/agent/feature']);
    expect(ok.code, ok.out).toBe(0);
    expect(await upstreamRef('refs/heads/agent/feature')).toBe(head);

    const mainBefore = await upstreamRef('refs/heads/main');
    const main = await tryGit(work, ['push', 'origin', 'HEAD:main']);
    expect(main.code).not.toBe(0);
    expect(main.out).toMatch(/matches none of the push patterns/);
    expect(await upstreamRef('refs/heads/main')).toBe(mainBefore);

    await agit(work, ['commit', '--quiet', '--amend', '-m', 'commit three, rewritten']);
    const force = await tryGit(work, ['push', '--force', 'origin', 'HEAD:refs/heads/agent/feature']);
    expect(force.code).not.toBe(0);
    expect(force.out).toMatch(/not a fast-forward/);
    expect(await upstreamRef('refs/heads/agent/feature')).toBe(head);

    const del = await tryGit(work, ['push', 'origin', ':refs/heads/agent/feature']);
    expect(del.code).not.toBe(0);
    expect(del.out).toMatch(/deleting refs\/heads\/agent\/feature is not allowed/);
    expect(await upstreamRef('refs/heads/agent/feature')).toBe(head);

    await agit(work, ['tag', 'v1']);
    const tag = await tryGit(work, ['push', 'origin', 'v1']);
    expect(tag.code).not.toBe(0);
    expect(tag.out).toMatch(/tag pushes are allowed only/);
    expect(await upstreamRef('refs/tags/v1')).toBe('');

    const pushes = audit().filter((a) => a.type === 'push');
    expect(pushes.map((a) => [a.ref, a.decision])).toEqual([
      ['refs/heads/agent/feature', 'allow'],
      ['refs/heads/main', 'deny'],
      ['refs/heads/agent/feature', 'deny'],
      ['refs/heads/agent/feature', 'deny'],
      ['refs/tags/v1', 'deny'],
    ]);
    expect(pushes[0]).toMatchObject({ remote: 'origin', old: '0'.repeat(40), new: head });
  });

  it("passes the upstream's own refusal to the agent's push", async () => {
    const r = await tryGit(work, ['push', 'origin', 'HEAD:refs/heads/agent/frozen']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/upstream policy: agent\/frozen is frozen/);
    expect(await upstreamRef('refs/heads/agent/frozen')).toBe('');
    expect(audit().at(-1)).toMatchObject({ type: 'push', ref: 'refs/heads/agent/frozen', decision: 'deny', reason: expect.stringMatching(/upstream rejected: .*frozen/) });
    // The mirror did not take it either: a fresh clone has no such branch.
    expect((await tryGit(dir, ['ls-remote', gateUrl('origin'), 'refs/heads/agent/frozen'])).out.trim()).toBe('');
  });

  it('a read-only remote refuses every push; an undeclared remote does not exist', async () => {
    const ro = await tryGit(work, ['push', gateUrl('ro'), 'HEAD:refs/heads/agent/x']);
    expect(ro.code).not.toBe(0);
    expect(ro.out).toMatch(/read-only/);
    const other = await tryGit(dir, ['ls-remote', gateUrl('secret')]);
    expect(other.code).not.toBe(0);
    expect(other.out).toMatch(/no remote 'secret' is declared/);
    const sneaky = await tryGit(dir, ['ls-remote', `http://127.0.0.1:${gatePort}/origin.git/../secret.git`]);
    expect(sneaky.code).not.toBe(0);
    expect(audit().some((a) => a.remote === 'secret' && a.decision === 'deny')).toBe(true);
    expect(gateOut.stdout + gateOut.stderr).not.toContain(TOKEN);
  });

  it('refuses an upstream whose address is private and not opted in, naming the class and the key, in the answer and the audit', async () => {
    const r = await tryGit(dir, ['ls-remote', gateUrl('lan')]);
    expect(r.code).not.toBe(0);
    expect(r.out).toContain('10.20.0.5 is a private address (RFC 1918); allow it with bottles.web.private_networks');
    const line = audit().find((a) => a.remote === 'lan' && a.decision === 'deny');
    expect(line).toMatchObject({ type: 'fetch', address_class: 'private (RFC 1918)' });
  });
});
