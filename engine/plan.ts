import { limitsAccount, limitsLines, resourceLimits } from '../machines/limits.js';
import { existsSync, realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { BottleError } from '../config/errors.js';
import { findManifest, type LoadedManifest, loadManifest } from '../config/load.js';
import { bottleIdentity } from '../machines/names.js';
import { type BottlePlan, buildPlan, containerNamesToProbe, type PlanOverrides, planSummary } from '../machines/plan.js';
import { perBottleDockerfile } from '../store/paths.js';
import { openBackend } from './backend.js';
import type { EngineContext } from './context.js';
import { checkManifestUpstreams } from './upstream-addresses.js';

/** The manifest a command means: -f FILE, else bottle.yaml found from the working folder. */
export async function readManifest(ctx: EngineContext, file: string | undefined, checkSecrets = true): Promise<LoadedManifest> {
  return loadManifest(findManifest(ctx.cwd, file), { env: ctx.env, homeDir: ctx.homeDir, checkSecrets });
}

/** BOTTLE_IMAGE, BOTTLE_DERIVED_IMAGE, BOTTLE_CONTAINER (CONTRACT.md's overrides). */
export function overridesFrom(env: Record<string, string | undefined>): PlanOverrides {
  return {
    ...(env.BOTTLE_IMAGE ? { image: env.BOTTLE_IMAGE } : {}),
    ...(env.BOTTLE_DERIVED_IMAGE ? { derivedImage: env.BOTTLE_DERIVED_IMAGE } : {}),
    ...(env.BOTTLE_CONTAINER ? { container: env.BOTTLE_CONTAINER } : {}),
  };
}

/** realpath of --cwd: identity hashes the real path, so two spellings of one folder agree. */
export function resolveCwd(ctx: EngineContext, dir: string | undefined): string | null {
  if (dir === undefined) return null;
  try {
    return realpathSync(resolve(ctx.cwd, dir));
  } catch (err) {
    throw new BottleError('USAGE', `--cwd ${dir}: ${(err as Error).message}`, 'pass an existing folder');
  }
}

export function checkAgent(loaded: LoadedManifest, agent: string): void {
  if (!loaded.manifest.agents[agent]) {
    const known = Object.keys(loaded.manifest.agents).join(', ') || '(none)';
    throw new BottleError('AGENT_UNKNOWN', `agent '${agent}' is not in ${loaded.file} (agents: ${known})`, `bottle plan <one of: ${known}>`);
  }
}

export interface PlanResult {
  plan: BottlePlan;
  /** The CONTRACT's `plan --json` shape. */
  summary: ReturnType<typeof planSummary> & { note?: string };
  /** Set when Docker did not answer: the names and runtime assume an empty engine. */
  note: string | null;
  /** The resource limits in words, what is not bounded among them. */
  limits: string[];
}

/** `bottle plan`: the resolved plan against the world as it is now; creates nothing. */
export async function planAgent(ctx: EngineContext, loaded: LoadedManifest, agent: string, cwdOption: string | undefined): Promise<PlanResult> {
  checkAgent(loaded, agent);
  await checkManifestUpstreams(loaded, agent);
  const cwd = resolveCwd(ctx, cwdOption);
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
  return { plan, summary: { ...planSummary(plan), ...(note ? { note } : {}) }, note, limits: limitsLines(plan.limits) };
}

/** What the bottle of `agent` leaves unbounded, one line each (a detached `bottle run` prints them; an attached one says them as it starts the agent). */
export function unboundedLines(loaded: LoadedManifest, agent: string): string[] {
  const bottle = loaded.manifest.bottles[loaded.manifest.agents[agent]?.bottle ?? ''];
  if (!bottle) return [];
  return limitsAccount(resourceLimits(bottle.resources, 'runc')).notEnforced.map((u) => `NOT bounded: ${u.what}: ${u.why}`);
}
