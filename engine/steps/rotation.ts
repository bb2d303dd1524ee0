import { gitGateFileRefs } from '../../machines/git-gate.js';
import type { BottlePlan } from '../../machines/plan.js';
import type { Proposal } from '../../machines/bottle.machine.js';
import { approvedRoutes } from '../../machines/proposals.js';
import { credTokenPath, egressHashesFile, SIDECAR_UID, secretHash } from '../../machines/specs.js';
import type { StepDeps } from './deps.js';

/**
 * What the egress canary must keep knowing besides the launch's tokens: the route tokens as
 * they are now, tokens rotated away (still secrets), and the secrets of routes approved at run
 * time (their hash came with the approval, never the value). Held by this process.
 */
export class CanaryHashes {
  private readonly rotated = new Set<string>();

  constructor(private readonly deps: StepDeps) {}

  rotatedAway(hash: string): void {
    this.rotated.add(hash);
  }

  /** Writes the hashes file the egress sidecar re-reads. */
  async push(plan: BottlePlan, proposals: Proposal[], signal: AbortSignal): Promise<void> {
    const egress = plan.sidecars.find((s) => s.role === 'egress');
    if (!egress) return;
    const hashes = new Set(this.rotated);
    for (const r of plan.routes) {
      try {
        hashes.add(secretHash(this.deps.secrets.read(r.token)));
      } catch {
        // Unreadable now: its launch hash is in the sidecar's environment.
      }
    }
    for (const p of approvedRoutes(proposals)) if (p.decision?.secretHash) hashes.add(p.decision.secretHash);
    await this.deps.runtime.putFiles(egress.name, [egressHashesFile(hashes)], signal);
  }
}

/**
 * Secret files rotated on the host while the agent runs are pushed into the sidecar that
 * uses them: route tokens into the cred-proxy, the git gate's keys, tokens and CAs into the
 * gate. Both read a secret file when they use it, so no restart is needed. Returns stop().
 */
export function watchRotations(deps: StepDeps, canary: CanaryHashes, plan: BottlePlan, signal: AbortSignal): () => void {
  const proxy = plan.sidecars.find((s) => s.role === 'cred-proxy');
  const gate = plan.sidecars.find((s) => s.role === 'git-gate');
  const targets = [
    ...(proxy ? plan.routes.flatMap((r, i) => ('file' in r.token ? [{ file: r.token.file, container: proxy.name, containerPath: credTokenPath(i), newline: false }] : [])) : []),
    ...(gate ? gitGateFileRefs(plan).map((t) => ({ ...t, container: gate.name })) : []),
  ];
  const files = [...new Set(targets.map((t) => t.file))];
  if (files.length === 0) return () => undefined;
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
    // The egress canary learns the new token too (and keeps the old one: still a secret).
    if (content !== '' && proxy && plan.routes.some((r) => 'file' in r.token && r.token.file === file)) {
      canary.rotatedAway(secretHash(content));
      await canary.push(plan, deps.board?.view()?.proposals ?? [], signal);
    }
    const mine = targets.filter((t) => t.file === file);
    for (const container of [...new Set(mine.map((t) => t.container))]) {
      const puts = mine
        .filter((t) => t.container === container)
        .map((t) => ({ containerPath: t.containerPath, content: t.newline && content !== '' && !content.endsWith('\n') ? `${content}\n` : content, ...own }));
      await deps.runtime.putFiles(container, puts, signal);
    }
  };
  // It runs in a file watcher: nothing may be thrown out of it (that would end this process).
  return deps.secrets.watch(files, (file) => {
    rotate(file).catch((err: unknown) => deps.progress(`could not hand the rotated secret ${file} to its sidecar: ${(err as Error).message}`));
  });
}
