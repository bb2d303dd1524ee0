import type { EngineContext } from '../../engine/context.js';
import { agentLogOf, auditOf, listRows, type ProposalView, proposalsList, replayRun, statusOf } from '../../engine/inspect.js';
import { info, printJson, table } from '../output.js';

/** The read-only commands: what engine/inspect.ts computes, as text on stderr or one JSON document. */

export async function cmdLs(ctx: EngineContext, opts: { json?: boolean }) {
  const rows = listRows(ctx);
  if (opts.json) return printJson(rows);
  if (rows.length === 0) return info(`no bottles in ${ctx.home} (start one with: bottle run AGENT)`);
  info(table([['IDENTITY', 'RUN', 'STATE', 'OWNER'], ...rows.map((r) => [r.identity, r.run ?? '-', r.state, r.owner_alive ? 'alive' : 'gone'])]));
}

export async function cmdStatus(ctx: EngineContext, identity: string, opts: { json?: boolean; run?: string }) {
  const status = await statusOf(ctx, identity, opts.run);
  if (opts.json) return printJson(status);
  info(
    table([
      ['bottle', identity],
      ['run', status.run],
      ['state', status.state],
      ['owner', status.owner_alive ? 'alive' : status.resumable ? `gone (take over with: bottle resume ${identity})` : 'gone'],
      ['containers', status.containers.map((c) => `${c.name} (${c.role})`).join(', ') || '-'],
      ['proposals', status.proposals.filter((p) => p.status === 'pending').map((p) => `${p.id} ${p.kind}: ${p.reason}`).join('; ') || 'none pending'],
      ...(status.exit_code !== null ? [['exit code', String(status.exit_code)]] : []),
      ...(status.error ? [['error', `${status.error.code}: ${status.error.message}`]] : []),
    ]),
  );
  if (status.egress_denials.length) info(`last egress denials:\n${status.egress_denials.map((d) => `  ${new Date(d.at).toISOString()} ${String(d.host ?? '')}:${String(d.port ?? '')}`).join('\n')}`);
  info(`last events:\n${status.last_events.map((e) => `  ${e.seq} ${e.type}${e.detail ? ` ${e.detail}` : ''}`).join('\n')}`);
  showPending(identity, status.proposals);
}

/** The run's history as one timeline: engine records merged with the sidecars' audit lines. */
export async function cmdAudit(ctx: EngineContext, identity: string, opts: { json?: boolean; run?: string }) {
  const all = await auditOf(ctx, identity, opts.run);
  if (opts.json) return printJson(all);
  for (const e of all) {
    const { at, source, type, ...rest } = e as { at: number; source: string; type: string; [k: string]: unknown };
    delete rest.event;
    info(`${new Date(at).toISOString()} ${source.padEnd(10)} ${type} ${Object.keys(rest).length ? JSON.stringify(rest) : ''}`);
  }
}

export async function cmdReplay(ctx: EngineContext, identity: string, opts: { json?: boolean; run?: string }): Promise<number> {
  const { runId, file, report } = replayRun(ctx, identity, opts.run);
  if (opts.json) printJson({ identity, run: runId, ...report });
  else if (report.ok) info(`replay ${identity} run ${runId}: consistent (${report.records} records, ${report.events} events, folds to ${report.finalState})`);
  else info(`error REPLAY_MISMATCH: ${file}:${report.problem!.line}: ${report.problem!.message}\nTry: bottle audit ${identity} --run ${runId}   (to read the history around it)`);
  return report.ok ? 0 : 1;
}

export async function cmdProposals(ctx: EngineContext, identity: string, opts: { json?: boolean; run?: string }) {
  const list = proposalsList(ctx, identity, opts.run);
  if (opts.json) return printJson(list);
  if (list.length === 0) return info(`bottle '${identity}' has no proposals`);
  info(table([['ID', 'KIND', 'STATUS', 'REASON'], ...list.map((p) => [p.id, p.kind, p.status, p.reason])]));
  showPending(identity, list);
}

/** Each pending proposal with its change (a Dockerfile as its diff) and how to decide it. */
function showPending(identity: string, list: ProposalView[]) {
  for (const p of list.filter((x) => x.status === 'pending')) {
    info(`\n${p.id} (${p.kind}) asks: ${p.reason}`);
    const c = p.change as { hosts?: string[]; route?: Record<string, unknown>; diff?: string | null };
    if (c.hosts) info(`  allow: ${c.hosts.join(', ')}`);
    if (c.route) info(`  route: ${JSON.stringify(c.route)}`);
    if (c.diff !== undefined) info(c.diff ? c.diff.replace(/\n$/, '') : '  (the same Dockerfile as now)');
    info(`  decide: bottle approve ${identity} ${p.id}${p.kind === 'route' ? ' --token-env NAME' : ''}  |  bottle deny ${identity} ${p.id} --reason TEXT`);
  }
}

export async function cmdLogs(ctx: EngineContext, identity: string, opts: { run?: string }) {
  const { runId, output } = agentLogOf(ctx, identity, opts.run);
  if (output === null) {
    info(`bottle '${identity}' run ${runId} has no output yet`);
    return;
  }
  process.stdout.write(output);
}
