import { existsSync, realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { BottleError } from '../../config/errors.js';
import { findManifest, loadManifest, type LoadedManifest } from '../../config/load.js';
import { writeInitManifest } from '../../config/init-template.js';
import { bottleIdentity } from '../../machines/names.js';
import { buildPlan, containerNamesToProbe, planSummary, type PlanOverrides } from '../../machines/plan.js';
import { perBottleDockerfile } from '../../store/paths.js';

import { openBackend, type CliContext } from '../../engine/wiring.js';
import { info, printJson, table } from '../output.js';

export interface ManifestOpts {
  file?: string;
  json?: boolean;
}

export async function readManifest(ctx: CliContext, opts: ManifestOpts, checkSecrets = true): Promise<LoadedManifest> {
  const file = findManifest(ctx.cwd, opts.file);
  return loadManifest(file, { env: ctx.env, homeDir: ctx.homeDir, checkSecrets });
}

export function overridesFrom(env: Record<string, string | undefined>): PlanOverrides {
  return {
    ...(env.BOTTLE_IMAGE ? { image: env.BOTTLE_IMAGE } : {}),
    ...(env.BOTTLE_DERIVED_IMAGE ? { derivedImage: env.BOTTLE_DERIVED_IMAGE } : {}),
    ...(env.BOTTLE_CONTAINER ? { container: env.BOTTLE_CONTAINER } : {}),
  };
}

/** realpath of --cwd: identity hashes the real path, so two spellings of one folder agree. */
export function resolveCwd(ctx: CliContext, dir: string | undefined): string | null {
  if (dir === undefined) return null;
  try {
    return realpathSync(resolve(ctx.cwd, dir));
  } catch (err) {
    throw new BottleError('USAGE', `--cwd ${dir}: ${(err as Error).message}`, 'pass an existing folder');
  }
}

export function agentOf(loaded: LoadedManifest, agent: string) {
  if (!loaded.manifest.agents[agent]) {
    const known = Object.keys(loaded.manifest.agents).join(', ') || '(none)';
    throw new BottleError('AGENT_UNKNOWN', `agent '${agent}' is not in ${loaded.file} (agents: ${known})`, `bottle plan <one of: ${known}>`);
  }
}

export async function cmdInit(ctx: CliContext, opts: ManifestOpts) {
  const file = await writeInitManifest(ctx.cwd);
  if (opts.json) printJson({ file });
  else info(`wrote ${file}\nnext: bottle validate && bottle plan demo`);
}

export async function cmdValidate(ctx: CliContext, opts: ManifestOpts) {
  const loaded = await readManifest(ctx, opts);
  const m = loaded.manifest;
  if (opts.json) printJson({ ok: true, file: loaded.file, bottles: Object.keys(m.bottles), agents: Object.keys(m.agents) });
  else info(`${loaded.file}: valid (${Object.keys(m.bottles).length} bottle(s), ${Object.keys(m.agents).length} agent(s))`);
}

export async function cmdPlan(ctx: CliContext, agent: string, opts: ManifestOpts & { cwd?: string }) {
  const loaded = await readManifest(ctx, opts);
  agentOf(loaded, agent);
  const cwd = resolveCwd(ctx, opts.cwd);
  const identity = bottleIdentity(agent, cwd);
  const overrides = overridesFrom(ctx.env);
  const backend = await openBackend(ctx);
  const images = await backend.imageTags();
  // Planning wants the world's facts; without a daemon the plan is still useful, with a note.
  let existing: string[] = [];
  let runtimes: string[] = [];
  let note: string | null = null;
  try {
    const [i, e] = await Promise.all([backend.runtime.info(), backend.runtime.existingContainers(containerNamesToProbe(identity, overrides))]);
    runtimes = i.runtimes;
    existing = e;
  } catch (err) {
    if (!(err instanceof BottleError) || !['DOCKER_UNREACHABLE', 'DOCKER_PERMISSION'].includes(err.code)) throw err;
    note = `${err.code}: Docker did not answer; the container name and runtime assume an empty engine`;
  }
  const plan = buildPlan(
    { manifest: loaded.manifest, manifestDir: loaded.dir, homeDir: ctx.homeDir, home: ctx.home, agent, cwd, overrides, images, runId: 'plan' },
    { existingContainers: existing, runtimes, perBottleDockerfile: existsSync(perBottleDockerfile(ctx.home, identity)) },
  );
  const summary = { ...planSummary(plan), ...(note ? { note } : {}) };
  if (opts.json) {
    printJson(summary);
    return;
  }
  info(
    table([
      ['identity', plan.identity],
      ['container', plan.container],
      ['networks', `${plan.networks.internal} (internal), ${plan.networks.egress} (egress)`],
      ['image', plan.images.runtime],
      ['runtime', plan.runtime],
      ['sidecars', plan.sidecars.map((s) => `${s.role} (${s.name})`).join(', ')],
      ['allowlist', plan.allowlist.join(', ') || '(nothing: every host is refused)'],
      ['env', summary.env.join(', ')],
    ]),
  );
  if (note) info(`note: ${note}`);
}
