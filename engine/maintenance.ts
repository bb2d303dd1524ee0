import { BottleError } from '../config/errors.js';
import { createDockerClient } from '../effects/docker/client.js';
import { prepareImages } from '../effects/docker/image-setup.js';
import { LABEL, type LabelledObject } from '../machines/ports.js';
import { ENGINE_VERSION } from '../machines/specs.js';
import { StoreRunRegistry } from './adapters.js';
import { openBackend } from './backend.js';
import type { EngineContext } from './context.js';
import { claudeCodeCache, repoRoot } from './docker-backend.js';

/** A Docker object of ours, named by the labels that say whose it is. */
export interface OurObject {
  kind: LabelledObject['kind'];
  name: string;
  identity: string | null;
  run: string | null;
}

const describe = (o: LabelledObject): OurObject => ({ kind: o.kind, name: o.name, identity: o.labels[LABEL.identity] ?? null, run: o.labels[LABEL.run] ?? null });

export interface CleanupResult {
  /** What no live run owns: removed, or with dryRun what would be. */
  orphans: OurObject[];
  removed: OurObject[];
  failures: { object: OurObject; error: string }[];
  /** Objects of ours that live runs own, left alone. */
  keptLive: number;
}

/**
 * `bottle cleanup`: removes what carries our labels and belongs to no live run. Objects
 * are found by label only, so a container that merely has a similar name is never touched.
 */
export async function cleanup(ctx: EngineContext, opts: { dryRun?: boolean }): Promise<CleanupResult> {
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
  const failures: { object: OurObject; error: string }[] = [];
  if (!opts.dryRun) {
    for (const o of orphans) {
      try {
        if (o.kind === 'container') await backend.runtime.removeContainer(o.name);
        else if (o.kind === 'network') await backend.runtime.removeNetwork(o.name);
        else await backend.runtime.removeVolume(o.name);
        removed.push(o);
      } catch (err) {
        failures.push({ object: describe(o), error: (err as Error).message });
      }
    }
  }
  return { orphans: orphans.map(describe), removed: removed.map(describe), failures, keptLive: ours.length - orphans.length };
}

export type BaseSourceOption = 'auto' | 'registry' | 'bootstrap';

/** `bottle images build`: the base (registry-less when needed), agent and sidecar images. */
export async function buildImages(ctx: EngineContext, opts: { base?: string; claudeCode?: boolean; progress: (line: string) => void }) {
  const source = opts.base ?? 'auto';
  if (source !== 'auto' && source !== 'registry' && source !== 'bootstrap') {
    throw new BottleError('USAGE', `--base must be auto, registry or bootstrap, got '${source}'`);
  }
  const docker = createDockerClient(ctx.env.DOCKER_HOST ? { dockerHost: ctx.env.DOCKER_HOST } : {});
  const result = await prepareImages(docker, {
    repoRoot: repoRoot(),
    baseSource: source,
    labels: { 'bot-bottle.version': ENGINE_VERSION },
    claudeCode: { cacheDir: claudeCodeCache(ctx), fetch: Boolean(opts.claudeCode) },
    progress: opts.progress,
  });
  return result.built.map((b) => ({ role: b.role, tag: b.tag, built: b.role === 'base' ? result.base.built : b.built }));
}
