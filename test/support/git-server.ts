import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { contentTag } from '../../effects/docker/image-context.js';
import { DockerodeImageBuilder } from '../../effects/docker/images.js';
import { slugify } from '../../machines/names.js';
import { docker, SUITE_ID, subnetOf, suiteLabels } from './docker.js';
import { demux } from './images.js';
import type { Pki } from './cred-proxy.js';
import { bottleFolder, type SecBottle } from './security.js';

/**
 * Helpers for test/security/git-gate.test.ts: the suite's own git server, the upstream of the
 * bottles' git gates.
 *
 * The server is a container of an image built here FROM the local base image (Debian's
 * openssh-server, git and Node; apt works inside builds, no registry is used): sshd with
 * key-only login for user `git` (shell git-shell), bare repositories under /srv/git, and a
 * Node HTTPS server (certificate from the suite's test CA) that runs `git http-backend` for
 * requests carrying HTTP Basic `x-access-token:<token>`. The key pair, the host key, the
 * certificate and the token are made by the test at run time.
 *
 * Network rule: the server sits on the suite's own internal network, which leads nowhere;
 * once a bottle is up it is connected to that bottle's egress network as `git.test`, where
 * the bottle's git gate (and egress proxy) can reach it. Nothing here talks to a public address.
 */

const GIT_SERVER_DOCKERFILE = `ARG BASE
FROM \${BASE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \\
 && apt-get install -y --no-install-recommends openssh-server git nodejs ca-certificates \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && rm -f /etc/ssh/ssh_host_* \\
 && useradd --create-home --home-dir /home/git --shell /usr/bin/git-shell git \\
 && usermod -p '*' git \\
 && install -d -o git -g git /srv/git
`;

/** The https side: git http-backend as the `git` user, for requests with the right token only. */
const HTTPS_JS = String.raw`const https = require('https');
const { spawn, execFileSync } = require('child_process');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const uid = Number(execFileSync('id', ['-u', 'git']).toString().trim());
const gid = Number(execFileSync('id', ['-g', 'git']).toString().trim());
const want = 'Basic ' + Buffer.from('x-access-token:' + process.env.GIT_TOKEN).toString('base64');
const server = https.createServer({ key: process.env.TLS_KEY, cert: process.env.TLS_CERT }, (req, res) => {
  const auth = req.headers.authorization;
  const url = new URL(req.url, 'https://git.test');
  const verdict = auth === undefined ? 'missing' : auth === want ? 'ok' : 'bad';
  out({ kind: 'request', at: Date.now(), method: req.method, path: url.pathname, service: url.searchParams.get('service'), auth: verdict });
  if (verdict !== 'ok') {
    res.writeHead(401, { 'www-authenticate': 'Basic realm="git.test"' });
    res.end('token required\n');
    return;
  }
  const env = { PATH: process.env.PATH, HOME: '/home/git', GIT_PROJECT_ROOT: '/srv/git', GIT_HTTP_EXPORT_ALL: '1', REMOTE_USER: 'token',
    REQUEST_METHOD: req.method, PATH_INFO: url.pathname, QUERY_STRING: url.search.slice(1), CONTENT_TYPE: req.headers['content-type'] || '' };
  if (req.headers['content-length']) env.CONTENT_LENGTH = req.headers['content-length'];
  if (req.headers['content-encoding']) env.HTTP_CONTENT_ENCODING = req.headers['content-encoding'];
  if (req.headers['git-protocol']) env.HTTP_GIT_PROTOCOL = req.headers['git-protocol'];
  const child = spawn('git', ['http-backend'], { env, uid, gid });
  let head = Buffer.alloc(0);
  let done = false;
  child.stdout.on('data', (d) => {
    if (done) return void res.write(d);
    head = Buffer.concat([head, d]);
    const end = head.indexOf('\r\n\r\n');
    if (end === -1) return;
    let status = 200;
    const headers = {};
    for (const line of head.subarray(0, end).toString().split('\r\n')) {
      const i = line.indexOf(':');
      if (i <= 0) continue;
      const k = line.slice(0, i).trim(); const v = line.slice(i + 1).trim();
      if (k.toLowerCase() === 'status') status = parseInt(v, 10); else headers[k] = v;
    }
    done = true;
    res.writeHead(status, headers);
    res.write(head.subarray(end + 4));
  });
  child.stderr.on('data', (d) => process.stderr.write(d));
  req.pipe(child.stdin);
  child.on('close', () => { if (!done) res.writeHead(500); res.end(); });
});
server.on('tlsClientError', () => {});
server.listen(443, () => out({ kind: 'https-listening' }));
`;

/**
 * Sets up and runs everything as root (sshd needs it); repositories belong to `git`. app.git
 * has two commits on main and a pre-receive hook that refuses refs/heads/agent/frozen with a
 * message of its own; other.git is never declared to any bottle.
 */
const SETUP_SH = String.raw`set -eu
umask 022
mkdir -p /run/sshd
printf '%s\n' "$HOST_KEY" > /etc/ssh/ssh_host_ed25519_key
chmod 600 /etc/ssh/ssh_host_ed25519_key
install -d -o git -g git -m 700 /home/git/.ssh
printf '%s\n' "$AUTHORIZED_KEY" > /home/git/.ssh/authorized_keys
chown git:git /home/git/.ssh/authorized_keys
chmod 600 /home/git/.ssh/authorized_keys
cat > /etc/ssh/sshd_test_config <<'EOF'
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers git
UsePAM no
PidFile /run/sshd.pid
EOF
runuser -u git -- sh -eu -c '
  export HOME=/home/git GIT_AUTHOR_NAME=upstream GIT_AUTHOR_EMAIL=upstream@git.test GIT_COMMITTER_NAME=upstream GIT_COMMITTER_EMAIL=upstream@git.test
  for r in app other; do
    git init --quiet --bare -b main /srv/git/$r.git
    git -C /srv/git/$r.git config http.receivepack true
    rm -rf /tmp/seed && git init --quiet -b main /tmp/seed
    cd /tmp/seed
    echo "$r one" > one.txt && git add . && git commit --quiet -m "$r: first upstream commit"
    echo "$r two" > two.txt && git add . && git commit --quiet -m "$r: second upstream commit"
    git push --quiet /srv/git/$r.git main
    cd /
  done
  cat > /srv/git/app.git/hooks/pre-receive <<"EOF"
#!/bin/sh
while read old new ref; do
  if [ "$ref" = refs/heads/agent/frozen ]; then
    echo "upstream policy: agent/frozen is frozen by the upstream itself"
    exit 1
  fi
done
exit 0
EOF
  chmod 755 /srv/git/app.git/hooks/pre-receive
'
/usr/sbin/sshd -D -e -f /etc/ssh/sshd_test_config &
node -e "$HTTPS_JS" &
echo '{"kind":"ready"}'
wait
`;

export interface SshKeys {
  dir: string;
  /** The remote's private key file (the manifest's key: {file}). */
  keyFile: string;
  /** known_hosts naming git.test with the server's host key. */
  knownHostsFile: string;
  privateKey: string;
  publicKey: string;
  hostKey: string;
  hostPublicKey: string;
  /** A line from the private part of the key's PEM body: what a scan looks for. */
  privateLine: string;
}

/** A client key pair and a host key, made with ssh-keygen now. */
export function makeSshKeys(): SshKeys {
  const dir = mkdtempSync(join(tmpdir(), 'bottle-git-keys-'));
  const gen = (file: string, comment: string) => execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', join(dir, file)], { stdio: 'ignore' });
  gen('client', 'bottle-test-client');
  gen('host', 'git.test-host');
  const privateKey = readFileSync(join(dir, 'client'), 'utf8');
  const hostPublicKey = readFileSync(join(dir, 'host.pub'), 'utf8').trim();
  const knownHostsFile = join(dir, 'known_hosts');
  writeFileSync(knownHostsFile, `git.test ${hostPublicKey.split(' ').slice(0, 2).join(' ')}\n`);
  const body = privateKey.split('\n').filter((l) => l && !l.startsWith('-----'));
  return {
    dir,
    keyFile: join(dir, 'client'),
    knownHostsFile,
    privateKey,
    publicKey: readFileSync(join(dir, 'client.pub'), 'utf8').trim(),
    hostKey: readFileSync(join(dir, 'host'), 'utf8'),
    hostPublicKey,
    privateLine: body[body.length - 2]!,
  };
}

/** Builds (once per content) the git server image FROM the local base image. */
export async function gitServerImage(base: string): Promise<string> {
  const spec = { dockerfile: GIT_SERVER_DOCKERFILE, buildArgs: { BASE: base }, context: { files: { '.keep': '' } } };
  const tag = await contentTag('bot-bottle-test/git-server', spec);
  await new DockerodeImageBuilder(docker()).ensureImage({ ...spec, tag }, (line) => process.stderr.write(`[git-server] ${line}\n`));
  return tag;
}

/** The suite's network for its git server: internal, so it leads nowhere. */
export const GIT_NETWORK = `bbt-${SUITE_ID}-git-net`;

/** Creates it and returns its IPv4 subnet, which the git bottles opt in (private_networks). */
export async function createGitNetwork(): Promise<string> {
  await docker().createNetwork({ Name: GIT_NETWORK, Driver: 'bridge', Internal: true, Labels: { ...suiteLabels }, CheckDuplicate: true });
  return subnetOf(GIT_NETWORK);
}

export interface GitServer {
  container: string;
  /** JSON lines the server printed (https requests, ready). */
  lines(): Promise<Record<string, unknown>[]>;
  /** Runs a command in the server as `git` (e.g. rev-parse in a repository). */
  git(repo: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  /** The commit a ref of /srv/git/<repo>.git points at, or '' when it does not exist. */
  ref(repo: string, ref: string): Promise<string>;
}

export async function startGitServer(image: string, keys: SshKeys, pki: Pki, token: string): Promise<GitServer> {
  const container = `bbt-${SUITE_ID}-git-server`;
  const c = await docker().createContainer({
    name: container,
    Image: image,
    Entrypoint: ['bash', '-c', SETUP_SH],
    Env: [`HOST_KEY=${keys.hostKey}`, `AUTHORIZED_KEY=${keys.publicKey}`, `TLS_KEY=${pki.key}`, `TLS_CERT=${pki.cert}`, `GIT_TOKEN=${token}`, `HTTPS_JS=${HTTPS_JS}`],
    Labels: { ...suiteLabels },
    HostConfig: { NetworkMode: GIT_NETWORK },
    NetworkingConfig: { EndpointsConfig: { [GIT_NETWORK]: { Aliases: ['git.test'] } } },
  });
  await c.start();
  const stdoutOf = async () => demux((await c.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer);
  const lines = async () =>
    (await stdoutOf()).stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const seen = await lines();
    if (seen.some((l) => l.kind === 'ready') && seen.some((l) => l.kind === 'https-listening')) break;
    const state = await c.inspect();
    if (!state.State.Running || Date.now() > deadline) {
      const o = await stdoutOf();
      throw new Error(`git server did not start:\n${o.stdout}\n${o.stderr}`);
    }
    await delay(100);
  }
  const { execIn } = await import('./docker.js');
  const git = (repo: string, args: string[]) => execIn(container, ['git', '-C', `/srv/git/${repo}.git`, ...args], { user: 'git' });
  return {
    container,
    lines,
    git,
    ref: async (repo, ref) => {
      const r = await git(repo, ['rev-parse', '--verify', '--quiet', ref]);
      return r.code === 0 ? r.stdout.trim() : '';
    },
  };
}

/**
 * Puts a bottle's git gate on the suite's git network, where the server answers as git.test
 * (the bottle opts that network's subnet in with private_networks).
 */
export async function attachGitServer(gate: string): Promise<void> {
  await docker().getNetwork(GIT_NETWORK).connect({ Container: gate });
}

/** The server's address on a network (for the agent's attempt to go around the gate). */
export async function addressOn(container: string, network: string): Promise<string> {
  const info = await docker().getContainer(container).inspect();
  return info.NetworkSettings.Networks[network]?.IPAddress ?? '';
}

// ---------------------------------------------------------------------------------------
// Bottles

export const GIT_BOTTLE = 'gate';

export interface GitRemoteSpec {
  name: string;
  upstream: string;
  push: string[];
  key?: { file: string } | { env: string };
  known_hosts?: { file: string } | { env: string };
  token?: { file: string } | { env: string };
  ca?: { file: string };
}

/** The agent's main process: says it is up, then waits to be stopped; probes run beside it with `docker exec`. */
export const AGENT_SCRIPT = `echo 'RESULT ready=yes'
trap 'exit 0' TERM
sleep 3600 &
wait
`;

/** A bottle with its own folder, BOTTLE_HOME and manifest, with `remotes` for its git gate. */
export function newGitBottle(opts: {
  tag: string;
  remotes: GitRemoteSpec[];
  hostEnv?: Record<string, string>;
  cwd?: string;
  allow?: string[];
  runtime?: 'auto' | 'runsc' | 'runc';
  /** The manifest's private_networks: the git network's subnet, so the gate may reach the server. */
  privateNetworks?: string[];
}): SecBottle {
  return bottleFolder({
    prefix: 'bottle-git-',
    agent: slugify(`git-${SUITE_ID}-${opts.tag}`),
    bottle: GIT_BOTTLE,
    config: {
      runtime: opts.runtime ?? 'runc',
      egress: { allow: opts.allow ?? ['allowed.test'] },
      git: opts.remotes,
      ...(opts.privateNetworks ? { private_networks: opts.privateNetworks } : {}),
    },
    prompt: 'work through the git gate',
    script: AGENT_SCRIPT,
    ...(opts.hostEnv ? { hostEnv: opts.hostEnv } : {}),
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  });
}

/** Git's identity for commits the agent makes (passed with `env` to each command). */
export const AGENT_GIT_ENV = {
  GIT_AUTHOR_NAME: 'agent',
  GIT_AUTHOR_EMAIL: 'agent@bottle.test',
  GIT_COMMITTER_NAME: 'agent',
  GIT_COMMITTER_EMAIL: 'agent@bottle.test',
  GIT_TERMINAL_PROMPT: '0',
};
