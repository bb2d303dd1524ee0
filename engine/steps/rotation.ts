import { tokenProblem } from '../../config/token-rule.js';
import { currentAllowlist, type Proposal } from '../../machines/bottle.machine.js';
import { gitGateFileRefs } from '../../machines/git-gate.js';
import type { BottlePlan } from '../../machines/plan.js';
import { approvedRoutes } from '../../machines/proposals.js';
import { allowlistFile, credTokenPath, egressHashesFile, SIDECAR_UID, secretHash } from '../../machines/specs.js';
import { credRoutesFile } from './apply.js';
import type { StepDeps } from './deps.js';

/**
 * What the egress canary must keep knowing besides the launch's tokens (which are in its
 * environment): every route token it was given while the bottle ran (rotated away, they are
 * still secrets) and the secrets of routes approved at run time (their hash came with the
 * approval, never the value).
 *
 * Durable: a learned hash is sent to the machine as `canary.learned` (written to the log
 * before the machine folds it into context.canaryHashes), and the hashes file is always built
 * from the machine's context as the proposal board follows it. So snapshots and `bottle
 * resume` carry it, and an owner killed with SIGKILL forgets nothing: the next owner's push
 * still lists every token rotated away under the previous one.
 */
export class CanaryHashes {
  /** Only for an assembly without a machine to tell (a benchmark): never durable. */
  private readonly unrecorded = new Set<string>();

  constructor(private readonly deps: StepDeps) {}

  /** The hashes the machine has (context.canaryHashes). */
  known(): Set<string> {
    return new Set([...(this.deps.board?.view()?.canaryHashes ?? []), ...this.unrecorded]);
  }

  /**
   * Records token hashes the canary must know, before any sidecar is given the token: through
   * the log when the machine is reachable (throws when it is not, so the caller hands the token
   * to no one). Returns whether any was new.
   */
  learn(hashes: readonly string[]): boolean {
    const known = this.known();
    const fresh = [...new Set(hashes)].filter((h) => !known.has(h));
    if (fresh.length === 0) return false;
    if (this.deps.events) this.deps.events.send({ type: 'canary.learned', hashes: fresh });
    else for (const h of fresh) this.unrecorded.add(h);
    return true;
  }

  /** Writes the hashes file the egress sidecar re-reads: the learned hashes and the approved routes'. */
  async push(plan: BottlePlan, proposals: Proposal[], signal: AbortSignal): Promise<void> {
    const egress = plan.sidecars.find((s) => s.role === 'egress');
    if (!egress) return;
    const hashes = this.known();
    for (const p of approvedRoutes(proposals)) if (p.decision?.secretHash) hashes.add(p.decision.secretHash);
    await this.deps.runtime.putFiles(egress.name, [egressHashesFile(hashes)], signal);
  }
}

/** The machine's view, once the board has followed a snapshot (right after the actor starts). */
async function viewOf(deps: StepDeps, signal: AbortSignal) {
  if (!deps.board) return null;
  for (let i = 0; i < 250 && !signal.aborted; i++) {
    const view = deps.board.view();
    if (view) return view;
    await new Promise((r) => setTimeout(r, 20));
  }
  return deps.board.view();
}

/**
 * Puts back into the running sidecars what they must enforce, from the machine's context: the
 * canary's hashes, the allowlist and routes approved at run time. At launch this repeats what
 * the sidecars already have; after `bottle resume` it is what makes the enforcement the same
 * as before the crash, whatever a sidecar was last given.
 */
async function restoreEnforcement(deps: StepDeps, canary: CanaryHashes, plan: BottlePlan, signal: AbortSignal): Promise<void> {
  const view = await viewOf(deps, signal);
  const proposals = view?.proposals ?? [];
  // The route tokens in force now: the canary knows them from here on, durably (at launch
  // they are also in its environment).
  const current: string[] = [];
  for (const r of plan.routes) {
    try {
      const value = deps.secrets.read(r.token);
      if (tokenProblem(value) === undefined) current.push(secretHash(value));
    } catch {
      // Unreadable now: a file ref is handled (revoked) by its rotation below.
    }
  }
  canary.learn(current);
  // Nothing to say to a canary with no token hashes at all (no routes): it has its environment's.
  if (current.length > 0 || canary.known().size > 0 || approvedRoutes(proposals).length > 0) await canary.push(plan, proposals, signal);
  const egress = plan.sidecars.find((s) => s.role === 'egress');
  if (egress && proposals.some((p) => p.kind === 'allowlist' && (p.status === 'approved' || p.status === 'applying'))) {
    await deps.runtime.putFiles(egress.name, [allowlistFile(currentAllowlist(plan, proposals))], signal);
  }
  const proxy = plan.sidecars.find((s) => s.role === 'cred-proxy');
  if (proxy && approvedRoutes(proposals).length > 0) await deps.runtime.putFiles(proxy.name, [credRoutesFile(plan, proposals).file], signal);
}

/**
 * Secret files rotated on the host while the agent runs are pushed into the sidecar that
 * uses them: route tokens into the cred-proxy, the git gate's keys, tokens and CAs into the
 * gate. Both read a secret file when they use it, so no restart is needed. First (at launch
 * and again after a resume) every sidecar is given what it must enforce and every watched
 * file as it is now: a file rotated while no owner ran is not missed. Returns stop().
 *
 * A rotated route token must pass the token rule (config/token-rule.ts). One that does not
 * (a space, a tab, a line break inside, a control character) is refused: it is never put into
 * the cred-proxy, because the egress canary could not recognise it in a request and it would
 * leave unseen. Refusing fails closed: the route is revoked (its token file emptied, so it
 * answers 503, as for a removed file) rather than left with the old token, which the user
 * rotated away and may be retiring for a reason. The refusal names the ref, never the value,
 * and is recorded in the log (`secret.refused`, shown by `bottle audit`).
 */
export function watchRotations(deps: StepDeps, canary: CanaryHashes, plan: BottlePlan, signal: AbortSignal): () => void {
  const proxy = plan.sidecars.find((s) => s.role === 'cred-proxy');
  const gate = plan.sidecars.find((s) => s.role === 'git-gate');
  const targets = [
    ...(proxy ? plan.routes.flatMap((r, i) => ('file' in r.token ? [{ file: r.token.file, container: proxy.name, containerPath: credTokenPath(i), newline: false, route: r.path }] : [])) : []),
    ...(gate ? gitGateFileRefs(plan).map((t) => ({ ...t, container: gate.name, route: undefined })) : []),
  ];
  const files = [...new Set(targets.map((t) => t.file))];
  const own = { mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID };
  // Only the changed file is read, so one unreadable ref never holds back another's rotation.
  const rotate = async (file: string) => {
    let content: string;
    try {
      content = deps.secrets.read({ file });
    } catch (err) {
      // Caught mid-write: the next change brings the new secret. Removed on the host: it is
      // revoked in the sidecar too (an empty token file makes its route answer 503).
      if (await deps.files.exists(file)) {
        deps.progress(`could not read the rotated secret ${file} yet: ${(err as Error).message}`);
        return;
      }
      deps.progress(`secret file ${file} was removed on the host: what uses it is revoked until it returns`);
      content = '';
    }
    const routes = targets.filter((t) => t.file === file && t.route !== undefined).map((t) => t.route!);
    if (content !== '' && routes.length > 0) {
      const problem = tokenProblem(content);
      if (problem !== undefined) {
        const ref = `file:${file}`;
        const use = `the token of route ${routes.join(', ')}`;
        deps.events?.send({ type: 'secret.refused', ref, use, problem });
        deps.progress(`refused the rotated secret ${ref} (${use}): it ${problem}; the route is revoked (it answers 503) until the file holds a valid token`);
        content = '';
      } else if (canary.learn([secretHash(content)])) {
        // The egress canary learns the new token (recorded first, and it keeps the old one:
        // still a secret) before the cred-proxy is given it.
        await canary.push(plan, deps.board?.view()?.proposals ?? [], signal);
      }
    }
    const mine = targets.filter((t) => t.file === file);
    for (const container of [...new Set(mine.map((t) => t.container))]) {
      const puts = mine
        .filter((t) => t.container === container)
        .map((t) => ({ containerPath: t.containerPath, content: t.newline && content !== '' && !content.endsWith('\n') ? `${content}\n` : content, ...own }));
      await deps.runtime.putFiles(container, puts, signal);
    }
  };
  // One at a time, in order: a rotation never overtakes the restore or an earlier rotation.
  let chain: Promise<void> = Promise.resolve();
  let stopped = false;
  const enqueue = (what: string, work: () => Promise<void>) => {
    chain = chain
      .then(() => (stopped || signal.aborted ? undefined : work()))
      .catch((err: unknown) => {
        if (!stopped && !signal.aborted) deps.progress(`could not hand ${what} to its sidecar: ${(err as Error).message ?? String(err)}`);
      });
  };
  enqueue('what the sidecars enforce', async () => {
    await restoreEnforcement(deps, canary, plan, signal);
    for (const file of files) await rotate(file);
  });
  // It runs in a file watcher: nothing may be thrown out of it (that would end this process).
  const unwatch = files.length > 0 ? deps.secrets.watch(files, (file) => enqueue(`the rotated secret ${file}`, () => rotate(file))) : () => undefined;
  return () => {
    stopped = true;
    unwatch();
  };
}
