import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type AddressPolicy, systemResolve, vetHost } from '../common/address-policy.js';
import { type GateRemote, upstreamEnv, upstreamHostPort, upstreamProblem } from './config.js';
import { gitMessage, run } from './git.js';

/**
 * One bare mirror per declared remote under `<state>/mirrors/<name>.git`: the repository
 * `git http-backend` serves to the agent. It is refreshed from the upstream (forced, pruned:
 * the mirror is whatever the upstream has) before refs are advertised, and its pre-receive
 * hook decides and forwards every push (hook.ts).
 */

export const UPSTREAM_TIMEOUT_MS = 120_000;
const SYSTEM_CAS = '/etc/ssl/certs/ca-certificates.crt';

export interface GateState {
  /** Folder of the mirrors, the CA bundles and the per-push audit files. */
  dir: string;
  remotes: GateRemote[];
}

export const mirrorsDir = (state: string) => join(state, 'mirrors');
export const mirrorPath = (state: string, name: string) => join(mirrorsDir(state), `${name}.git`);
/** System CAs plus the remote's `ca`, made at start; undefined when the remote has none. */
export const caBundlePath = (state: string, remote: GateRemote) => (remote.caFile ? join(state, 'ca', `${remote.name}.pem`) : undefined);

/** An upstream the gate will not connect to: the address policy refused it, or its name did not resolve. */
export class UpstreamRefused extends Error {
  constructor(
    message: string,
    /** Set when the address policy refused (`private (RFC 1918)`, `loopback`, `docker host`, ...). */
    readonly addressClass?: string,
  ) {
    super(message);
  }
}

/** How the gate judges an upstream's addresses: the shared policy, the resolver, the bottle for the hint. */
export interface Dialling {
  policy: AddressPolicy;
  resolve?: (host: string) => Promise<string[]>;
  bottle?: string;
}

/**
 * The environment of a git command toward `remote`'s upstream, with the upstream's name
 * resolved once here and every address checked against the address policy; git (curl, ssh)
 * is pinned to those addresses and does no lookup of its own. Throws UpstreamRefused.
 */
export async function envFor(state: string, remote: GateRemote, dialling: Dialling): Promise<Record<string, string | undefined>> {
  const { host, port } = upstreamHostPort(remote.upstream);
  const vetted = await vetHost(host, dialling.policy, dialling.resolve ?? systemResolve, 'the git gate', dialling.bottle);
  if (!vetted.ok) throw new UpstreamRefused(vetted.reason, vetted.refusal?.addressClass);
  return { ...process.env, ...upstreamEnv(remote, caBundlePath(state, remote), { host, port, addresses: vetted.addresses }) };
}

/** Creates the mirrors (empty until their first refresh), their hooks and CA bundles. */
export async function initMirrors(state: GateState, hookCommand: string): Promise<void> {
  mkdirSync(mirrorsDir(state.dir), { recursive: true });
  for (const remote of state.remotes) {
    const ca = caBundlePath(state.dir, remote);
    if (ca && remote.caFile) {
      mkdirSync(join(state.dir, 'ca'), { recursive: true });
      const system = existsSync(SYSTEM_CAS) ? readFileSync(SYSTEM_CAS, 'utf8') : '';
      writeFileSync(ca, `${system}\n${readFileSync(remote.caFile, 'utf8')}\n`, { mode: 0o600 });
    }
    const path = mirrorPath(state.dir, remote.name);
    if (!existsSync(join(path, 'HEAD'))) {
      const r = await run('git', ['init', '--bare', '--quiet', path]);
      if (r.code !== 0) throw new Error(`git init ${path}: ${gitMessage(r.stderr)}`);
    }
    const settings: [string, string][] = [
      ['http.uploadpack', 'true'],
      // http-backend refuses receive-pack without an authenticated user unless this is set;
      // the pre-receive hook is the gate, and a read-only remote never gets it.
      ['http.receivepack', remote.push.length > 0 ? 'true' : 'false'],
      ['receive.denyDeletes', 'true'],
      ['receive.denyNonFastForwards', 'true'],
      ['receive.fsckObjects', 'true'],
      ['gc.auto', '0'],
      ['core.logAllRefUpdates', 'false'],
    ];
    for (const [k, v] of settings) {
      const r = await run('git', ['config', k, v], { cwd: path });
      if (r.code !== 0) throw new Error(`git config ${k} in ${path}: ${gitMessage(r.stderr)}`);
    }
    const hook = join(path, 'hooks', 'pre-receive');
    mkdirSync(join(path, 'hooks'), { recursive: true });
    writeFileSync(hook, `#!/bin/sh\nexec ${hookCommand} pre-receive\n`);
    chmodSync(hook, 0o755);
  }
}

/** Serialises work per remote: refreshes and pushes never interleave on one mirror. */
export class RemoteLocks {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prior = this.tails.get(name) ?? Promise.resolve();
    const next = prior.then(fn, fn);
    this.tails.set(
      name,
      next.catch(() => undefined),
    );
    return next;
  }
}

const headKnown = new Set<string>();

/**
 * Makes the mirror equal to the upstream (branches and tags, forced and pruned). On the first
 * success it also points the mirror's HEAD at the upstream's default branch, so a clone checks
 * out what the upstream would. Throws with git's message when the upstream cannot be read.
 */
export async function refreshMirror(state: string, remote: GateRemote, dialling: Dialling): Promise<void> {
  const problem = upstreamProblem(remote);
  if (problem) throw new Error(problem);
  const path = mirrorPath(state, remote.name);
  const env = await envFor(state, remote, dialling);
  const r = await run('git', ['fetch', '--quiet', '--prune', '--no-write-fetch-head', remote.upstream, '+refs/heads/*:refs/heads/*', '+refs/tags/*:refs/tags/*'], {
    cwd: path,
    env,
    timeoutMs: UPSTREAM_TIMEOUT_MS,
  });
  if (r.code !== 0) throw new Error(gitMessage(r.stderr, 4) || `git fetch exited ${r.code}`);
  if (!headKnown.has(remote.name)) {
    const h = await run('git', ['ls-remote', '--symref', remote.upstream, 'HEAD'], { cwd: path, env, timeoutMs: UPSTREAM_TIMEOUT_MS });
    const m = /^ref: (refs\/heads\/\S+)\tHEAD$/m.exec(h.stdout);
    if (m) {
      await run('git', ['symbolic-ref', 'HEAD', m[1]!], { cwd: path });
      headKnown.add(remote.name);
    }
  }
}
