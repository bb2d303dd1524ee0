import { BottleError } from '../../config/errors.js';
import type { EngineContext } from '../../engine/context.js';
import { buildImages, cleanup } from '../../engine/maintenance.js';
import { info, printJson, table } from '../output.js';

/** `bottle cleanup`: what engine/maintenance.ts removed (or would), as a table or JSON. */
export async function cmdCleanup(ctx: EngineContext, opts: { dryRun?: boolean; json?: boolean }) {
  const { orphans, removed, failures, keptLive } = await cleanup(ctx, opts);
  if (opts.json) {
    printJson({
      dry_run: Boolean(opts.dryRun),
      [opts.dryRun ? 'would_remove' : 'removed']: opts.dryRun ? orphans : removed,
      kept_live: keptLive,
      failures: failures.map((f) => ({ ...f.object, error: f.error })),
    });
  } else if (orphans.length === 0) {
    info(`nothing to clean up (${keptLive} object(s) of ours belong to live runs)`);
  } else {
    info(`${opts.dryRun ? 'would remove' : 'removed'}:`);
    info(table((opts.dryRun ? orphans : removed).map((o) => [`  ${o.kind}`, o.name, `${o.identity} run ${o.run ?? '?'}`])));
    for (const f of failures) info(`could not remove ${f.object.kind} ${f.object.name}: ${f.error}`);
  }
  if (failures.length > 0) {
    throw new BottleError('DOCKER_ERROR', `${failures.length} object(s) could not be removed`, 'run `bottle cleanup` again; see the messages above');
  }
}

export async function cmdImagesBuild(ctx: EngineContext, opts: { base?: string; claudeCode?: boolean; json?: boolean }) {
  const started = Date.now();
  const rows = await buildImages(ctx, {
    ...opts,
    progress: (line) => {
      if (!opts.json) info(`  ${line}`);
    },
  });
  if (opts.json) {
    printJson({ images: rows, seconds: Math.round((Date.now() - started) / 100) / 10 });
    return;
  }
  info(table([['ROLE', 'TAG', ''], ...rows.map((r) => [r.role, r.tag, r.built ? 'built' : 'up to date'])]));
  info(`images ready in ${((Date.now() - started) / 1000).toFixed(1)} s; next: bottle run AGENT`);
}
