import { BottleError } from '../../config/errors.js';
import { createDockerClient } from '../../effects/docker/client.js';
import { prepareImages } from '../../effects/docker/image-setup.js';
import { LABEL, type LabelledObject } from '../../machines/ports.js';
import { ENGINE_VERSION } from '../../machines/specs.js';
import { claudeCodeCache, repoRoot } from '../../engine/docker-backend.js';
import { openBackend, StoreRunRegistry, type CliContext } from '../../engine/wiring.js';
import { info, printJson, table } from '../output.js';

/**
 * `bottle cleanup`: removes what carries our labels and belongs to no live run. Objects
 * are found by label only, so a container that merely has a similar name is never touched.
 */
export async function cmdCleanup(ctx: CliContext, opts: { dryRun?: boolean; json?: boolean }) {
  const backend = await openBackend(ctx);
  const runs = new StoreRunRegistry(ctx.home);
  const ours = await backend.runtime.listLabelled({ [LABEL.identity]: '' });
  const orphans: LabelledObject[] = [];
  for (const o of ours) {
    if (!(await runs.isLive(o.labels[LABEL.home], o.labels[LABEL.identity] ?? '', o.labels[LABEL.run] ?? ''))) orphans.push(o);
  }
  const rank = { container: 0, network: 1, volume: 2 } as const;
  orphans.sort((a, b) => rank[a.kind] - rank[b.kind] || a.name.localeCompare(b.name));
  const removed: LabelledObject[] = [];
  const failures: { object: LabelledObject; error: string }[] = [];
  if (!opts.dryRun) {
    for (const o of orphans) {
      try {
        if (o.kind === 'container') await backend.runtime.removeContainer(o.name);
        else if (o.kind === 'network') await backend.runtime.removeNetwork(o.name);
        else await backend.runtime.removeVolume(o.name);
        removed.push(o);
      } catch (err) {
        failures.push({ object: o, error: (err as Error).message });
      }
    }
  }
  const describe = (o: LabelledObject) => ({ kind: o.kind, name: o.name, identity: o.labels[LABEL.identity] ?? null, run: o.labels[LABEL.run] ?? null });
  if (opts.json) {
    printJson({
      dry_run: Boolean(opts.dryRun),
      [opts.dryRun ? 'would_remove' : 'removed']: (opts.dryRun ? orphans : removed).map(describe),
      kept_live: ours.length - orphans.length,
      failures: failures.map((f) => ({ ...describe(f.object), error: f.error })),
    });
  } else if (orphans.length === 0) {
    info(`nothing to clean up (${ours.length} object(s) of ours belong to live runs)`);
  } else {
    info(`${opts.dryRun ? 'would remove' : 'removed'}:`);
    info(table((opts.dryRun ? orphans : removed).map((o) => [`  ${o.kind}`, o.name, `${o.labels[LABEL.identity]} run ${o.labels[LABEL.run] ?? '?'}`])));
    for (const f of failures) info(`could not remove ${f.object.kind} ${f.object.name}: ${f.error}`);
  }
  if (failures.length > 0) {
    throw new BottleError('DOCKER_ERROR', `${failures.length} object(s) could not be removed`, 'run `bottle cleanup` again; see the messages above');
  }
}

export async function cmdImagesBuild(ctx: CliContext, opts: { base?: string; claudeCode?: boolean; json?: boolean }) {
  const source = opts.base ?? 'auto';
  if (source !== 'auto' && source !== 'registry' && source !== 'bootstrap') {
    throw new BottleError('USAGE', `--base must be auto, registry or bootstrap, got '${source}'`);
  }
  const docker = createDockerClient(ctx.env.DOCKER_HOST ? { dockerHost: ctx.env.DOCKER_HOST } : {});
  const started = Date.now();
  const result = await prepareImages(docker, {
    repoRoot: repoRoot(),
    baseSource: source,
    labels: { 'bot-bottle.version': ENGINE_VERSION },
    claudeCode: { cacheDir: claudeCodeCache(ctx), fetch: Boolean(opts.claudeCode) },
    progress: (line) => {
      if (!opts.json) info(`  ${line}`);
    },
  });
  const rows = result.built.map((b) => ({ role: b.role, tag: b.tag, built: b.role === 'base' ? result.base.built : b.built }));
  if (opts.json) {
    printJson({ images: rows, seconds: Math.round((Date.now() - started) / 100) / 10 });
    return;
  }
  info(table([['ROLE', 'TAG', ''], ...rows.map((r) => [r.role, r.tag, r.built ? 'built' : 'up to date'])]));
  info(`images ready in ${((Date.now() - started) / 1000).toFixed(1)} s; next: bottle run AGENT`);
}
