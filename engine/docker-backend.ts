import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type Docker from 'dockerode';
import { BottleError } from '../config/errors.js';
import { createDockerClient } from '../effects/docker/client.js';
import { BASE_BOOTSTRAP_TAG, findBaseImage, type BaseSource } from '../effects/docker/image-base.js';
import { findCachedClaudeCode } from '../effects/docker/image-claude-code.js';
import { prepareImages, type PrepareImagesOptions } from '../effects/docker/image-setup.js';
import { imageBuildPlan } from '../effects/docker/images-plan.js';
import { DockerodeImageBuilder } from '../effects/docker/images.js';
import { DockerodeRuntime } from '../effects/docker/runtime.js';
import type { BottlePlan } from '../machines/plan.js';
import type { BuildProgress, CapabilityApplier, ImageProvider } from '../machines/ports.js';
import { ENGINE_VERSION } from '../machines/specs.js';
import type { Backend } from './backend.js';
import type { EngineContext } from './context.js';

/** The checkout or installed package: the folder holding images/ and dist/sidecars/. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'images', 'agent', 'Dockerfile'))) return dir;
    dir = dirname(dir);
  }
  throw new BottleError('INTERNAL', 'cannot find the images/ folder of this bot-bottle installation');
}

export function baseSource(ctx: EngineContext): BaseSource {
  const v = ctx.env.BOTTLE_BASE_SOURCE ?? 'auto';
  if (v !== 'auto' && v !== 'registry' && v !== 'bootstrap') {
    throw new BottleError('USAGE', `BOTTLE_BASE_SOURCE must be auto, registry or bootstrap, got '${v}'`);
  }
  return v;
}

export const claudeCodeCache = (ctx: EngineContext) => join(ctx.home, 'cache', 'claude-code');

/** Options that decide the content tags; shared by `bottle images build` and every run. */
async function planOptions(ctx: EngineContext, docker: Docker) {
  let architecture = process.arch === 'x64' ? 'x86_64' : process.arch;
  let base = BASE_BOOTSTRAP_TAG;
  try {
    base = (await findBaseImage(docker)) ?? BASE_BOOTSTRAP_TAG;
    architecture = ((await docker.info()) as { Architecture: string }).Architecture;
  } catch (err) {
    // Without a daemon `bottle plan` still shows the tags a build would give.
    if (!(err instanceof Error)) throw err;
  }
  const claudeCode = await findCachedClaudeCode(claudeCodeCache(ctx), architecture);
  return { base, claudeCode };
}

function imageOptionsFor(plan: BottlePlan, root: string) {
  const opts: Omit<PrepareImagesOptions, 'baseSource' | 'progress'> = { repoRoot: root, labels: { 'bot-bottle.version': ENGINE_VERSION } };
  const src = plan.images.source;
  if (src.kind === 'override' || src.kind === 'ref') opts.agentRef = plan.images.image;
  if (src.kind === 'dockerfile') opts.agentDockerfile = src.dockerfile;
  if (src.kind === 'per-bottle') opts.perBottleDockerfile = src.dockerfile;
  if (plan.cwd !== null) opts.cwd = plan.cwd;
  // The --cwd copy's .git/config: the declared remotes point at the git gate, nothing else is kept.
  if (plan.cwd !== null) opts.gitRemotes = plan.git.map((g) => g.name);
  if (plan.skills.length > 0) opts.skills = plan.skills;
  opts.aliases = {
    ...(src.kind === 'dockerfile' ? { agent: plan.images.image } : {}),
    ...(src.kind === 'per-bottle' ? { bottle: plan.images.image } : {}),
    ...(plan.images.derived ? { derived: plan.images.derived } : {}),
  };
  return opts;
}

class DockerImages implements ImageProvider {
  constructor(
    private readonly ctx: EngineContext,
    private readonly docker: Docker,
    private readonly perBottleDir: (identity: string) => string,
  ) {}

  async ensureForPlan(plan: BottlePlan, progress: BuildProgress, signal?: AbortSignal): Promise<{ built: string[] }> {
    const opts = imageOptionsFor(plan, repoRoot());
    if (opts.perBottleDockerfile) opts.perBottleDockerfile = join(this.perBottleDir(plan.identity), 'Dockerfile');
    const { built, plan: images } = await prepareImages(this.docker, {
      ...opts,
      baseSource: baseSource(this.ctx),
      progress,
      ...(signal ? { signal } : {}),
      claudeCode: { cacheDir: claudeCodeCache(this.ctx), fetch: false },
    });
    // The run's plan named its images before they were built (from the base known then); if
    // the build had to use another base, the plan's names are pointed at what was built.
    const builder = new DockerodeImageBuilder(this.docker);
    if (images.runtime !== plan.images.runtime) await builder.tagImage(images.runtime, plan.images.runtime, signal);
    if (images.sidecar !== plan.images.sidecar) await builder.tagImage(images.sidecar, plan.images.sidecar, signal);
    return { built: built.filter((b) => b.built).map((b) => b.tag) };
  }
}

/**
 * Builds the per-bottle image of an approved Dockerfile proposal: the text FROM the image the
 * agent runs now (build arg AGENT_IMAGE), with the --cwd layer on top again when the plan has
 * one. The text is built from a candidate file; the step makes it bottles/<identity>/Dockerfile
 * only once the build succeeded.
 */
class DockerCapabilities implements CapabilityApplier {
  constructor(
    private readonly ctx: EngineContext,
    private readonly docker: Docker,
    private readonly perBottleDir: (identity: string) => string,
  ) {}

  async buildBottleImage(plan: BottlePlan, dockerfile: string, progress: BuildProgress, signal?: AbortSignal): Promise<{ image: string }> {
    const opts = imageOptionsFor(plan, repoRoot());
    const dir = this.perBottleDir(plan.identity);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const candidate = join(dir, `Dockerfile.candidate-${process.pid}`);
    await writeFile(candidate, dockerfile, { mode: 0o600 });
    try {
      const { plan: images } = await prepareImages(this.docker, {
        ...opts,
        perBottleDockerfile: candidate,
        aliases: { ...opts.aliases, bottle: `bot-bottle/bottle:${plan.identity}` },
        baseSource: baseSource(this.ctx),
        progress,
        ...(signal ? { signal } : {}),
        claudeCode: { cacheDir: claudeCodeCache(this.ctx), fetch: false },
      });
      return { image: images.runtime };
    } finally {
      await rm(candidate, { force: true });
    }
  }
}

export async function dockerBackend(ctx: EngineContext): Promise<Backend> {
  const docker = createDockerClient(ctx.env.DOCKER_HOST ? { dockerHost: ctx.env.DOCKER_HOST } : {});
  const { bottleDir } = await import('../store/paths.js');
  return {
    kind: 'docker',
    // Readiness is polled; 50 ms keeps a launch from idling on the poll (docs/benchmarks.md).
    runtime: new DockerodeRuntime(docker, { pollMs: 50 }),
    images: new DockerImages(ctx, docker, (identity) => bottleDir(ctx.home, identity)),
    capabilities: new DockerCapabilities(ctx, docker, (identity) => bottleDir(ctx.home, identity)),
    imageTags: async () => {
      const { base, claudeCode } = await planOptions(ctx, docker);
      const plan = await imageBuildPlan({ repoRoot: repoRoot(), base, claudeCode, labels: { 'bot-bottle.version': ENGINE_VERSION } });
      return { agent: plan.agent, sidecar: plan.sidecar };
    },
  };
}

export { createDockerClient };
