import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { BottleError } from '../config/errors.js';
import { stateName } from '../machines/bottle.machine.js';
import { EventLog } from '../store/event-log.js';
import { auditDir, eventsFile, logsFile } from '../store/paths.js';
import type { LogRecord } from '../store/records.js';
import { listBottles, readStateDoc } from '../store/state-doc.js';
import { openBackend } from './backend.js';
import type { EngineContext } from './context.js';
import { type Folded, foldLog, machineVersionError } from './fold.js';
import { type ReplayReport, replayFile } from './replay.js';
import { currentRun, ownerAlive } from './runs.js';

/**
 * The read-only views of the store the CLI prints: ls, status, proposals, audit, replay, logs.
 * Each folds the run's log (from its last snapshot record) and merges what the sidecars
 * audited; none of them writes anything.
 */

export interface BottleRow {
  identity: string;
  run: string | null;
  state: string;
  owner_alive: boolean;
}

/** `bottle ls`: every known bottle with its state and run id. */
export function listRows(ctx: EngineContext): BottleRow[] {
  return listBottles(ctx.home).map((b) => ({
    identity: b.identity,
    run: b.runId,
    state: b.state?.state ?? (b.problem ? 'unreadable' : 'unknown'),
    owner_alive: b.runId ? ownerAlive(ctx, b.identity, b.runId) : false,
  }));
}

export function readRun(ctx: EngineContext, identity: string, run?: string) {
  const runId = currentRun(ctx, identity, run);
  const file = eventsFile(ctx.home, identity, runId);
  const records = EventLog.read(file);
  return { runId, file, records, folded: foldLog(records, file, { fromSnapshot: true }) };
}

type FoldedSnapshot = Folded['snapshot'];
type ProposalOf = FoldedSnapshot['context']['proposals'][number];

/**
 * The hash the audit shows for a proposal's change: for a Dockerfile, of the unified diff the
 * human reviewed; otherwise of the change as JSON.
 */
export function changeDigest(p: Pick<ProposalOf, 'kind' | 'change'>): string {
  const body = p.kind === 'dockerfile' && typeof p.change.diff === 'string' ? p.change.diff : JSON.stringify(p.change);
  return createHash('sha256').update(body).digest('hex');
}

function changeSummary(p: ProposalOf): Record<string, unknown> {
  if (p.kind === 'allowlist') return { hosts: p.change.hosts };
  if (p.kind === 'route') return { route: p.change.route };
  return { diff: p.change.diff ?? null };
}

function proposalsOf(snap: FoldedSnapshot) {
  return snap.context.proposals.map((p) => ({
    id: p.id,
    kind: p.kind,
    status: p.status,
    reason: p.reason,
    received_at: p.receivedAt,
    ...(p.decision ? { decided_by: p.decision.by, decided_at: p.decidedAt } : {}),
    ...(p.decision?.reason ? { decision_reason: p.decision.reason } : {}),
    ...(p.decision?.secretRef ? { secret_ref: p.decision.secretRef } : {}),
    ...(p.error ? { error: p.error } : {}),
    change: changeSummary(p),
    change_sha256: changeDigest(p),
  }));
}

export type ProposalView = ReturnType<typeof proposalsOf>[number];

export type AuditEntry = { at: number; source: string; type: string; [k: string]: unknown };

/**
 * Other sources' audit lines (egress, cred-proxy, git-gate, supervise): what teardown kept in
 * bottles/<id>/audit/<source>.jsonl, plus, while the run is live, what the running sidecars
 * have written so far (their stdout). A line seen in both counts once.
 */
async function sidecarAudit(ctx: EngineContext, identity: string, runId: string, snap: Folded['snapshot']): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  const seen = new Set<string>();
  const take = (source: string, line: string, where: { file?: string; line?: number }) => {
    if (!line.trim() || seen.has(line)) return;
    seen.add(line);
    try {
      const rec = JSON.parse(line) as Record<string, unknown>;
      if (rec.run !== undefined && rec.run !== runId) return;
      const at = typeof rec.at === 'number' ? rec.at : Date.parse(String(rec.time ?? rec.at ?? ''));
      out.push({ ...rec, at: Number.isFinite(at) ? at : 0, source, type: String(rec.type ?? rec.decision ?? 'record') });
    } catch (err) {
      if (!(err instanceof SyntaxError)) throw err;
      out.push({ at: 0, source, type: 'unreadable', ...where });
    }
  };
  for (const source of SOURCES) {
    const file = `${auditDir(ctx.home, identity)}/${source}.jsonl`;
    if (!existsSync(file)) continue;
    const lines = readFileSync(file, 'utf8').split('\n');
    for (const [i, line] of lines.entries()) take(source, line, { file, line: i + 1 });
  }
  const live = snap.status === 'active' ? (snap.context.plan?.sidecars ?? []).filter((s) => snap.context.created.some((c) => c.name === s.name)) : [];
  if (live.length > 0) {
    try {
      const backend = await openBackend(ctx);
      for (const s of live) {
        for (const line of (await backend.runtime.readStdout(s.name)).split('\n')) if (line.startsWith('{')) take(s.role, line, { file: `docker logs ${s.name}` });
      }
    } catch (err) {
      // Without Docker the kept lines are still the audit; say what is missing.
      if (!(err instanceof BottleError)) throw err;
      out.push({ at: Date.now(), source: 'engine', type: 'audit.incomplete', reason: `${err.code}: live sidecar lines not read` });
    }
  }
  return out;
}

const SOURCES = ['egress', 'cred-proxy', 'git-gate', 'supervise'];

/** `bottle status`: the CONTRACT's status shape, plus the last events and egress denials. */
export async function statusOf(ctx: EngineContext, identity: string, run?: string) {
  const { runId, records, folded } = readRun(ctx, identity, run);
  const snap = folded.snapshot;
  const doc = readStateDoc(ctx.home, identity);
  const alive = ownerAlive(ctx, identity, runId);
  const containers = snap.context.created.filter((c) => c.kind === 'container' && !snap.context.removed.some((r) => r.name === c.name));
  const denials = (await sidecarAudit(ctx, identity, runId, snap))
    .filter((a) => a.source === 'egress' && (a.decision === 'deny' || a.type === 'deny'))
    .slice(-5);
  return {
    identity,
    run: runId,
    state: stateName(snap.value),
    owner_alive: alive,
    /** The run can be taken over (its owner is gone but it has not ended). */
    resumable: !alive && snap.status === 'active',
    containers: containers.map((c) => ({ name: c.name, role: c.role ?? null })),
    proposals: proposalsOf(snap),
    exit_code: snap.context.exitCode,
    error: snap.context.error,
    last_events: records.slice(-8).map(describeRecord),
    egress_denials: denials,
    updated_at: doc?.updatedAt ?? null,
  };
}

function describeRecord(r: LogRecord): { seq: number; at: number; type: string; detail?: string } {
  switch (r.kind) {
    case 'event':
      return { seq: r.seq, at: r.at, type: r.event.type };
    case 'state':
      return { seq: r.seq, at: r.at, type: 'state', detail: r.value };
    case 'effect.intent':
      return { seq: r.seq, at: r.at, type: 'effect.intent', detail: r.key };
    case 'effect.completed':
      return { seq: r.seq, at: r.at, type: 'effect.completed', detail: r.key };
    case 'effect.failed':
      return { seq: r.seq, at: r.at, type: 'effect.failed', detail: `${r.key} ${r.error.code}: ${r.error.message}` };
    case 'command':
      return { seq: r.seq, at: r.at, type: 'command', detail: `${r.command.type} ${r.id}` };
    default:
      return { seq: r.seq, at: r.at, type: r.kind };
  }
}

/** `bottle audit`: the run's history as one timeline, engine records merged with the sidecars' audit lines. */
export async function auditOf(ctx: EngineContext, identity: string, run?: string): Promise<AuditEntry[]> {
  const { runId, records, folded } = readRun(ctx, identity, run);
  const engine = records
    .map((r) => {
      const base = { at: r.at, source: 'engine', seq: r.seq };
      switch (r.kind) {
        case 'snapshot':
          return { ...base, type: 'snapshot', events: r.eventCount };
        case 'run.started':
          return { ...base, type: 'run.started', run: r.runId, identity: r.identity, machine: r.machineVersion };
        case 'event': {
          // A decision names its proposal's kind and the hash of the change that was decided.
          const id = r.event.type.startsWith('proposal.') ? ((r.event as { id?: string; proposal?: { id?: string } }).id ?? (r.event as { proposal?: { id?: string } }).proposal?.id) : undefined;
          const p = id ? folded.snapshot.context.proposals.find((x) => x.id === id) : undefined;
          return { ...base, type: r.event.type, event: r.event, ...(p ? { proposal: p.id, kind: p.kind, change_sha256: changeDigest(p) } : {}) };
        }
        case 'state':
          return { ...base, type: 'state', state: r.value };
        case 'effect.intent':
          return { ...base, type: 'effect.intent', key: r.key, step: r.step };
        case 'effect.completed':
          return { ...base, type: 'effect.completed', key: r.key, output: r.output };
        case 'effect.failed':
          return { ...base, type: 'effect.failed', key: r.key, error: r.error };
        case 'command':
          return { ...base, type: `command.${r.command.type}`, command: r.command };
        case 'owner':
          return { ...base, type: r.takeover ? 'owner.takeover' : 'owner', pid: r.pid, host: r.host };
        default: {
          const unknown: never = r;
          return { ...base, type: String((unknown as { kind: string }).kind) };
        }
      }
    });
  return [...engine, ...(await sidecarAudit(ctx, identity, runId, folded.snapshot))].sort((a, b) => a.at - b.at);
}

/** `bottle proposals`. */
export function proposalsList(ctx: EngineContext, identity: string, run?: string): ProposalView[] {
  return proposalsOf(readRun(ctx, identity, run).folded.snapshot);
}

/**
 * `bottle replay`: the run's history folded and checked. A log recorded by another machine
 * version cannot be judged by this one: that is a MACHINE_VERSION error, not a mismatch.
 */
export function replayRun(ctx: EngineContext, identity: string, run?: string): { runId: string; file: string; report: ReplayReport } {
  const runId = currentRun(ctx, identity, run);
  const file = eventsFile(ctx.home, identity, runId);
  if (!existsSync(file)) throw new BottleError('BOTTLE_NOT_FOUND', `run ${runId} of '${identity}' has no event log at ${file}`, `bottle ls`);
  const report = replayFile(file);
  if (report.problem?.code === 'MACHINE_VERSION') {
    const first = EventLog.check(file).records[0];
    throw machineVersionError(file, first?.kind === 'run.started' ? first.machineVersion : 'unknown');
  }
  return { runId, file, report };
}

/** `bottle logs`: the agent's output so far, or null before it wrote any. */
export function agentLogOf(ctx: EngineContext, identity: string, run?: string): { runId: string; output: Buffer | null } {
  const runId = currentRun(ctx, identity, run);
  const file = logsFile(ctx.home, identity, runId);
  return { runId, output: existsSync(file) ? readFileSync(file) : null };
}
