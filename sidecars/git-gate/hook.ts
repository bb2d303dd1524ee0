import { spawnSync } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { type GateAuditRecord, gateAuditLine } from './audit.js';
import { type GateRemote, parseRemotes } from './config.js';
import { gitMessage } from './git.js';
import { addressPolicyFromEnv } from '../common/address-policy.js';
import { envFor, UpstreamRefused, UPSTREAM_TIMEOUT_MS } from './mirror.js';
import { decidePush, parseHookInput, type RefUpdate, ZERO } from './policy.js';

/**
 * The mirror's pre-receive hook (`git-gate.mjs pre-receive`), run by `git receive-pack` under
 * `git http-backend` with the pushed objects still in quarantine. It decides every ref of the
 * push (policy.ts), and only when all are allowed forwards them to the upstream
 * (`git push <upstream> <new>:<ref>...`, never forced). The agent's push succeeds only if the
 * upstream took it: an upstream rejection exits non-zero with the upstream's message, which
 * receive-pack relays to the agent's git. Its stderr is what the agent sees (`remote: ...`).
 *
 * env (set by the gate for each push): BOTTLE_GIT_GATE_CONFIG (remotes.json),
 * BOTTLE_GIT_GATE_STATE (state folder), BOTTLE_GIT_GATE_REMOTE (the remote's name),
 * BOTTLE_GIT_GATE_AUDIT_FILE (where its audit lines go; the gate prints them), BOTTLE_RUN.
 */
export async function runPreReceive(): Promise<number> {
  const env = process.env;
  const say = (text: string) => process.stderr.write(`${text.replace(/\n*$/, '')}\n`);
  const name = env.BOTTLE_GIT_GATE_REMOTE ?? '';
  const state = env.BOTTLE_GIT_GATE_STATE ?? '';
  const auditFile = env.BOTTLE_GIT_GATE_AUDIT_FILE;
  const runId = env.BOTTLE_RUN || undefined;
  const audit = (r: Omit<GateAuditRecord, 'at' | 'type' | 'remote'>) => {
    const line = gateAuditLine({ at: Date.now(), type: 'push', remote: name, ...r, ...(runId ? { run: runId } : {}) });
    if (auditFile) appendFileSync(auditFile, line);
    else process.stdout.write(line);
  };

  let remote: GateRemote | undefined;
  try {
    const parsed = parseRemotes(readFileSync(env.BOTTLE_GIT_GATE_CONFIG ?? '', 'utf8'));
    if (parsed.ok) remote = parsed.remotes.find((r) => r.name === name);
  } catch {
    remote = undefined;
  }
  const updates = parseHookInput(readFileSync(0, 'utf8'));
  if (!remote || !state) {
    for (const u of updates) audit({ ...u, decision: 'deny', reason: 'the git gate has no configuration for this remote' });
    say(`git-gate: no configuration for remote ${name}; push refused`);
    return 1;
  }

  const git = (args: string[]) => spawnSync('git', args, { encoding: 'utf8' });
  // The agent's view of each ref must be the mirror's: a stale one is refused before anything is decided.
  const stale = (u: RefUpdate): string | undefined => {
    const r = git(['rev-parse', '--verify', '--quiet', u.ref]);
    const current = r.status === 0 ? r.stdout.trim() : '';
    if (ZERO.test(u.old) ? current !== '' : current !== u.old) return `${u.ref} changed since you fetched (fetch, then push again)`;
    return undefined;
  };
  const isAncestor = (old: string, next: string) => git(['merge-base', '--is-ancestor', old, next]).status === 0;
  const { accepted, decisions } = decidePush(updates, remote.push, isAncestor);
  const refused = decisions.map((d) => {
    if (d.decision === 'deny') return d;
    const why = stale(d);
    return why ? { ...d, decision: 'deny' as const, reason: why } : d;
  });
  if (!accepted || refused.some((d) => d.decision === 'deny')) {
    for (const d of refused) {
      audit({ ref: d.ref, old: d.old, new: d.new, decision: 'deny', reason: d.decision === 'deny' ? d.reason : 'not forwarded: another ref of this push was refused' });
    }
    say(`git-gate: push to ${name} refused:\n${refused.filter((d) => d.decision === 'deny').map((d) => `  ${d.reason}`).join('\n')}`);
    return 1;
  }

  // The upstream's addresses are checked again now (and git pinned to them), as for every fetch.
  const addresses = addressPolicyFromEnv(env);
  let upstreamEnv: Record<string, string | undefined>;
  try {
    if (!addresses.ok) throw new UpstreamRefused(addresses.message);
    upstreamEnv = await envFor(state, remote, { policy: addresses.policy, ...(env.BOTTLE_BOTTLE ? { bottle: env.BOTTLE_BOTTLE } : {}) });
  } catch (err) {
    const message = (err as Error).message;
    const addressClass = err instanceof UpstreamRefused ? err.addressClass : undefined;
    for (const d of refused) audit({ ref: d.ref, old: d.old, new: d.new, decision: 'deny', reason: `not forwarded: ${message}`, ...(addressClass ? { address_class: addressClass } : {}) });
    say(`git-gate: push to ${name} not forwarded: ${message}`);
    return 1;
  }
  const specs = refused.map((d) => `${d.new}:${d.ref}`);
  const push = spawnSync('git', ['push', '--porcelain', ...(specs.length > 1 ? ['--atomic'] : []), remote.upstream, ...specs], {
    encoding: 'utf8',
    env: upstreamEnv,
    timeout: UPSTREAM_TIMEOUT_MS,
  });
  if (push.status !== 0) {
    const message = gitMessage(`${push.stderr ?? ''}\n${rejectedLines(push.stdout ?? '')}`) || `git push exited ${push.status ?? push.signal}`;
    for (const d of refused) audit({ ref: d.ref, old: d.old, new: d.new, decision: 'deny', reason: `upstream rejected: ${message.split('\n').join(' | ')}` });
    say(`git-gate: the upstream of ${name} refused the push:\n${message}`);
    return 1;
  }
  for (const d of refused) audit({ ref: d.ref, old: d.old, new: d.new, decision: 'allow', reason: `${d.reason}; forwarded to the upstream` });
  say(`git-gate: forwarded to the upstream of ${name}: ${refused.map((d) => d.ref).join(', ')}`);
  return 0;
}

/** `--porcelain` lines of refs the upstream refused (`!\tsrc:dst\t[rejected] (reason)`). */
function rejectedLines(porcelain: string): string {
  return porcelain
    .split('\n')
    .filter((l) => l.startsWith('!'))
    .map((l) => l.split('\t').slice(1).join(' '))
    .join('\n');
}
