import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { BottleError } from '../../config/errors.js';
import { stateName } from '../../machines/bottle.machine.js';
import { EventLog } from '../../store/event-log.js';
import { auditDir, eventsFile, logsFile } from '../../store/paths.js';
import type { LogRecord } from '../../store/records.js';
import { listBottles, readStateDoc } from '../../store/state-doc.js';
import { foldLog, type Folded } from '../../engine/fold.js';
import { openBackend } from '../../engine/wiring.js';
import { replayFile } from '../../engine/replay.js';
import type { CliContext } from '../../engine/wiring.js';
import { info, printJson, table } from '../output.js';
import { currentRun, ownerAlive } from './run.js';

export async function cmdLs(ctx: CliContext, opts: { json?: boolean }) {
  const rows = listBottles(ctx.home).map((b) => ({
    identity: b.identity,
    run: b.runId,
    state: b.state?.state ?? (b.problem ? 'unreadable' : 'unknown'),
    owner_alive: b.runId ? ownerAlive(ctx, b.identity, b.runId) : false,
  }));
  if (opts.json) return printJson(rows);
  if (rows.length === 0) return info(`no bottles in ${ctx.home} (start one with: bottle run AGENT)`);
  info(table([['IDENTITY', 'RUN', 'STATE', 'OWNER'], ...rows.map((r) => [r.identity, r.run ?? '-', r.state, r.owner_alive ? 'alive' : 'gone'])]));
}

function readRun(ctx: CliContext, identity: string, run?: string) {
  const runId = currentRun(ctx, identity, run);
  const file = eventsFile(ctx.home, identity, runId);
  const records = EventLog.read(file);
  return { runId, file, records, folded: foldLog(records, file, { fromSnapshot: true }) };
}

type FoldedSnapshot = ReturnType<typeof readRun>['folded']['snapshot'];
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

type AuditEntry = { at: number; source: string; type: string; [k: string]: unknown };

/**
 * Other sources' audit lines (egress, cred-proxy, git-gate, supervise): what teardown kept in
 * bottles/<id>/audit/<source>.jsonl, plus, while the run is live, what the running sidecars
 * have written so far (their stdout). A line seen in both counts once.
 */
async function sidecarAudit(ctx: CliContext, identity: string, runId: string, snap: Folded['snapshot']): Promise<AuditEntry[]> {
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

export async function cmdStatus(ctx: CliContext, identity: string, opts: { json?: boolean; run?: string }) {
  const { runId, records, folded } = readRun(ctx, identity, opts.run);
  const snap = folded.snapshot;
  const doc = readStateDoc(ctx.home, identity);
  const alive = ownerAlive(ctx, identity, runId);
  const containers = snap.context.created.filter((c) => c.kind === 'container' && !snap.context.removed.some((r) => r.name === c.name));
  const last = records.slice(-8).map(describeRecord);
  const denials = (await sidecarAudit(ctx, identity, runId, snap))
    .filter((a) => a.source === 'egress' && (a.decision === 'deny' || a.type === 'deny'))
    .slice(-5);
  const status = {
    identity,
    run: runId,
    state: stateName(snap.value),
    owner_alive: alive,
    containers: containers.map((c) => ({ name: c.name, role: c.role ?? null })),
    proposals: proposalsOf(snap),
    exit_code: snap.context.exitCode,
    error: snap.context.error,
    last_events: last,
    egress_denials: denials,
    updated_at: doc?.updatedAt ?? null,
  };
  if (opts.json) return printJson(status);
  info(
    table([
      ['bottle', identity],
      ['run', runId],
      ['state', status.state],
      ['owner', alive ? 'alive' : snap.status === 'active' ? `gone (take over with: bottle resume ${identity})` : 'gone'],
      ['containers', status.containers.map((c) => `${c.name} (${c.role})`).join(', ') || '-'],
      ['proposals', status.proposals.filter((p) => p.status === 'pending').map((p) => `${p.id} ${p.kind}: ${p.reason}`).join('; ') || 'none pending'],
      ...(status.exit_code !== null ? [['exit code', String(status.exit_code)]] : []),
      ...(status.error ? [['error', `${status.error.code}: ${status.error.message}`]] : []),
    ]),
  );
  if (denials.length) info(`last egress denials:\n${denials.map((d) => `  ${new Date(d.at).toISOString()} ${String(d.host ?? '')}:${String(d.port ?? '')}`).join('\n')}`);
  info(`last events:\n${last.map((e) => `  ${e.seq} ${e.type}${e.detail ? ` ${e.detail}` : ''}`).join('\n')}`);
  showPending(identity, status.proposals);
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

/** The run's history as one timeline: engine records merged with the sidecars' audit lines. */
export async function cmdAudit(ctx: CliContext, identity: string, opts: { json?: boolean; run?: string }) {
  const { runId, records, folded } = readRun(ctx, identity, opts.run);
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
  const all = [...engine, ...(await sidecarAudit(ctx, identity, runId, folded.snapshot))].sort((a, b) => a.at - b.at);
  if (opts.json) return printJson(all);
  for (const e of all) {
    const { at, source, type, ...rest } = e as { at: number; source: string; type: string; [k: string]: unknown };
    delete rest.event;
    info(`${new Date(at).toISOString()} ${source.padEnd(10)} ${type} ${Object.keys(rest).length ? JSON.stringify(rest) : ''}`);
  }
}

export async function cmdReplay(ctx: CliContext, identity: string, opts: { json?: boolean; run?: string }): Promise<number> {
  const runId = currentRun(ctx, identity, opts.run);
  const file = eventsFile(ctx.home, identity, runId);
  if (!existsSync(file)) throw new BottleError('BOTTLE_NOT_FOUND', `run ${runId} of '${identity}' has no event log at ${file}`, `bottle ls`);
  const report = replayFile(file);
  if (opts.json) printJson({ identity, run: runId, ...report });
  else if (report.ok) info(`replay ${identity} run ${runId}: consistent (${report.records} records, ${report.events} events, folds to ${report.finalState})`);
  else info(`error REPLAY_MISMATCH: ${file}:${report.problem!.line}: ${report.problem!.message}\nTry: bottle audit ${identity} --run ${runId}   (to read the history around it)`);
  return report.ok ? 0 : 1;
}

export async function cmdProposals(ctx: CliContext, identity: string, opts: { json?: boolean; run?: string }) {
  const { folded } = readRun(ctx, identity, opts.run);
  const list = proposalsOf(folded.snapshot);
  if (opts.json) return printJson(list);
  if (list.length === 0) return info(`bottle '${identity}' has no proposals`);
  info(table([['ID', 'KIND', 'STATUS', 'REASON'], ...list.map((p) => [p.id, p.kind, p.status, p.reason])]));
  showPending(identity, list);
}

/** Each pending proposal with its change (a Dockerfile as its diff) and how to decide it. */
function showPending(identity: string, list: ReturnType<typeof proposalsOf>) {
  for (const p of list.filter((x) => x.status === 'pending')) {
    info(`\n${p.id} (${p.kind}) asks: ${p.reason}`);
    const c = p.change as { hosts?: string[]; route?: Record<string, unknown>; diff?: string | null };
    if (c.hosts) info(`  allow: ${c.hosts.join(', ')}`);
    if (c.route) info(`  route: ${JSON.stringify(c.route)}`);
    if (c.diff !== undefined) info(c.diff ? c.diff.replace(/\n$/, '') : '  (the same Dockerfile as now)');
    info(`  decide: bottle approve ${identity} ${p.id}${p.kind === 'route' ? ' --token-env NAME' : ''}  |  bottle deny ${identity} ${p.id} --reason TEXT`);
  }
}

export async function cmdLogs(ctx: CliContext, identity: string, opts: { run?: string }) {
  const runId = currentRun(ctx, identity, opts.run);
  const file = logsFile(ctx.home, identity, runId);
  if (!existsSync(file)) {
    info(`bottle '${identity}' run ${runId} has no output yet`);
    return;
  }
  process.stdout.write(readFileSync(file));
}
