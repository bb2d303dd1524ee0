import type { Proposal } from '../../machines/bottle.machine.js';
import { unifiedDiff } from '../../machines/diff.js';
import type { BottlePlan } from '../../machines/plan.js';
import { approvedRoutes, checkIncoming, decisionsOf, routeOf } from '../../machines/proposals.js';
import { DOCKERFILE_TEMPLATE, type SuperviseCurrent, superviseFiles } from '../../machines/specs.js';
import type { StepDeps } from './deps.js';

/**
 * Capability review while the agent runs: proposals travel from the supervise sidecar's stdout
 * to the run's owner (a queue file and a mailbox command, see ProposalBoard), and the machine's
 * decisions travel back into the sidecar as files. Applying an approval is engine/steps/apply.ts.
 */

const POLL_MS = 400;

/** What the supervise sidecar shows the agent: the Dockerfile, the allowlist in force, the routes without secrets. */
export async function currentView(deps: StepDeps, plan: BottlePlan, allowlist: string[], proposals: Proposal[]): Promise<SuperviseCurrent> {
  const file = deps.paths.perBottleDockerfile(plan.identity);
  const dockerfile = (await deps.files.exists(file)) ? await deps.files.readText(file) : DOCKERFILE_TEMPLATE;
  const routes = [
    ...plan.routes.map((r) => ({ path: r.path, upstream: r.upstream, inject: r.inject, roles: r.roles })),
    ...approvedRoutes(proposals).map(routeOf),
  ];
  return { dockerfile, allowlist, routes };
}

/**
 * While the agent runs: proposals the sidecar printed go to the board (each id once; the
 * board and the machine both ignore an id they have), and the sidecar's view of the current
 * capabilities and of the decisions follows the machine's. Returns a stop function.
 */
export function watchProposals(deps: StepDeps, plan: BottlePlan, runId: string, signal: AbortSignal): () => void {
  const supervise = plan.sidecars.find((s) => s.role === 'supervise');
  const board = deps.board;
  if (!supervise || !board) return () => undefined;
  const submitted = new Set<string>();
  // Lines past the pending bound: never queued, said once. The sidecar shares the bottle with
  // the agent, so its own bound is not trusted to hold.
  const refused = new Set<string>();
  const maxPending = plan.limits.proposals.pending;
  let pushedFor: Proposal[] | undefined;
  let pushedText = '';
  let stopped = false;
  let lastProblem = '';
  let wake: (() => void) | null = null;

  const tick = async () => {
    const out = await deps.runtime.readStdout(supervise.name, signal);
    const known = new Set((board.view()?.proposals ?? []).map((p) => p.id));
    for (const line of out.split('\n')) {
      if (!line.startsWith('{') || !line.includes('"proposal"')) continue;
      let rec: { type?: unknown; proposal?: unknown };
      try {
        rec = JSON.parse(line);
      } catch {
        continue;
      }
      if (rec.type !== 'proposal') continue;
      const p = checkIncoming(rec.proposal);
      if (!p) {
        deps.progress(`supervise printed a proposal the engine does not accept; ignored: ${line.slice(0, 200)}`);
        continue;
      }
      if (submitted.has(p.id) || known.has(p.id) || refused.has(p.id)) continue;
      const proposals = board.view()?.proposals ?? [];
      const inView = new Set(proposals.map((q) => q.id));
      const pending = proposals.filter((q) => q.status === 'pending' || q.status === 'applying').length + [...submitted].filter((id) => !inView.has(id)).length;
      if (pending >= maxPending) {
        refused.add(p.id);
        deps.progress(`supervise printed proposal ${p.id} while ${pending} are pending (at most ${maxPending}); not queued. Decide some: bottle proposals ${plan.identity}`);
        continue;
      }
      if (p.kind === 'dockerfile') {
        // The human reviews the change as a diff against the Dockerfile in force now; the
        // log keeps that diff, so the audit's hash of it never depends on later approvals.
        const view = board.view();
        const base = (await currentView(deps, plan, view?.allowlist ?? plan.allowlist, view?.proposals ?? [])).dockerfile;
        p.change.diff = unifiedDiff(base, String(p.change.dockerfile), { a: 'Dockerfile (current)', b: `Dockerfile (proposal ${p.id})` });
      }
      await board.submit(plan.identity, runId, p);
      submitted.add(p.id);
      deps.progress(`proposal ${p.id} (${p.kind}): ${p.reason}  -> bottle proposals ${plan.identity}`);
    }
    // The sidecar's files follow the machine's proposals (the allowlist and the Dockerfile in
    // force change only through them): nothing to read or push while they are the ones pushed.
    const view = board.view();
    if (!view || view.proposals === pushedFor) return;
    const current = await currentView(deps, plan, view.allowlist, view.proposals);
    const decisions = decisionsOf(view.proposals);
    const text = JSON.stringify({ current, decisions });
    if (text !== pushedText) {
      await deps.runtime.putFiles(supervise.name, superviseFiles({ current, decisions }), signal);
      pushedText = text;
    }
    pushedFor = view.proposals;
  };

  // A decision reaches the sidecar as soon as the machine has it, not at the next poll.
  let dirty = false;
  const stopListening = board.onChange?.(() => {
    dirty = true;
    wake?.();
  });
  const loop = async () => {
    while (!stopped && !signal.aborted) {
      dirty = false;
      try {
        await tick();
        lastProblem = '';
      } catch (err) {
        const msg = (err as Error).message ?? String(err);
        // Said once per distinct problem, not every poll.
        if (msg !== lastProblem && !stopped && !signal.aborted) deps.progress(`supervise: ${msg}`);
        lastProblem = msg;
      }
      if (dirty) continue;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, POLL_MS);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  };
  void loop();
  return () => {
    stopped = true;
    stopListening?.();
    wake?.();
  };
}
