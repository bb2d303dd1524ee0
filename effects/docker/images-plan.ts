import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { BottleError } from '../../config/errors.js';
import type { BuildProgress, ImageBuilder, Labels } from '../../machines/ports.js';
import { BASE_BOOTSTRAP_TAG } from './image-base.js';
import { claudeCodeMissingNote } from './image-claude-code.js';
import { type BuildSpec, type ContextSource, contentTag } from './image-context.js';
import { ignoreMatcher } from './image-ignore.js';
import { WORKSPACE_GIT_IGNORES, workspaceGitConfig } from '../../machines/git-gate.js';

/**
 * Which images `bottle images build` and `bottle run` need, each under a content tag
 * (repo:sha256(Dockerfile, build args, context)[:16]), in build order:
 *
 *   base     Debian bookworm (ensureBaseImage makes it; here it is only checked)
 *   agent    images/agent FROM base, or the manifest's Dockerfile, or an existing ref
 *   sidecar  images/sidecar FROM base, with the host-built dist/sidecars bundles
 *   bottle   the per-bottle Dockerfile (approved capability changes) FROM the agent
 *   derived  FROM bottle/agent: the --cwd project at /workspace and the skills at
 *            /home/agent/.claude/skills/<basename>, owned by the agent (uid 1000)
 *
 * The --cwd copy takes every file of the project, .git included, except what the
 * project's `.bottleignore` excludes (gitignore syntax: names, globs, `dir/`, `/anchored`,
 * `!negation`; see image-ignore.ts). Nothing else is excluded by default.
 */

export type ImageRole = 'base' | 'agent' | 'sidecar' | 'bottle' | 'derived';

export interface PlannedImage {
  role: ImageRole;
  /** Content tag (or the given tag for base and ref images). */
  tag: string;
  /** A stable second name to point at the result (e.g. bot-bottle/cwd:<identity>). */
  alias?: string;
  /** Image it is built FROM; it must exist locally first, so a build never pulls it. */
  parent?: string;
  /** null: not built here (base, an image ref); only checked to exist. */
  spec: BuildSpec | null;
  /** Said to the user when this image is built (e.g. Claude Code left out). */
  note?: string;
}

export interface ImageBuildPlan {
  images: PlannedImage[];
  /** The agent image before the --cwd layer: bottle ?? agent. */
  agent: string;
  /** What the agent container runs: derived ?? agent. */
  runtime: string;
  sidecar: string;
}

export interface ImageBuildPlanOptions {
  /** The checkout (or installed package) holding images/ and dist/sidecars/. */
  repoRoot: string;
  /** Tag of the base image (from ensureBaseImage / findBaseImage). */
  base?: string;
  /** The manifest's `image.dockerfile`: replaces images/agent; its folder is the context (honouring its .dockerignore). */
  agentDockerfile?: string;
  /** The manifest's `image.ref` or BOTTLE_IMAGE: an existing image used as the agent image. */
  agentRef?: string;
  /** bottles/<identity>/Dockerfile: built with an empty context and build args AGENT_IMAGE, BASE. */
  perBottleDockerfile?: string;
  /** The --cwd project folder. */
  cwd?: string;
  /** Ignore file for the --cwd copy; default <cwd>/.bottleignore (absent means nothing ignored). */
  bottleIgnore?: string;
  /**
   * The bottle's declared git remotes: the --cwd copy's .git/config is rewritten so that these
   * (and only these) point at the git gate; the project's own remotes and credentials stay out.
   */
  gitRemotes?: readonly string[];
  /** Skill folders to copy to ~/.claude/skills/<basename>. */
  skills?: readonly string[];
  /** Claude Code tarball from packClaudeCode/findCachedClaudeCode; absent leaves it out. */
  claudeCode?: string | null;
  /** Stable names to tag results with (machines/names.ts): custom/built agent, per-bottle, derived. */
  aliases?: { agent?: string; bottle?: string; derived?: string };
  /** Extra labels on every built image (e.g. bot-bottle.version). */
  labels?: Labels;
}

export const IMAGE_REPOS = {
  agent: 'bot-bottle/agent',
  custom: 'bot-bottle/custom',
  sidecar: 'bot-bottle/sidecar',
  bottle: 'bot-bottle/bottle',
  derived: 'bot-bottle/cwd',
} as const;

export const IMAGE_ROLE_LABEL = 'bot-bottle.image';

const AGENT_UID = 1000;

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new BottleError('BUILD_FAILED', `cannot read ${what} ${file}: ${reason}`, `check that ${file} exists and is readable`);
  }
}

async function readOptional(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return null;
    throw new BottleError('BUILD_FAILED', `cannot read ${file}: ${(err as Error).message}`, `check the permissions of ${file}`);
  }
}

async function planned(
  role: ImageRole,
  repo: string,
  spec: Omit<BuildSpec, 'tag' | 'labels'>,
  extra: { labels: Labels; alias?: string | undefined; parent?: string; note?: string },
): Promise<PlannedImage> {
  const tag = await contentTag(repo, { dockerfile: spec.dockerfile, ...(spec.buildArgs ? { buildArgs: spec.buildArgs } : {}), context: spec.context });
  const image: PlannedImage = { role, tag, spec: { ...spec, tag, labels: { ...extra.labels, [IMAGE_ROLE_LABEL]: role } } };
  if (extra.alias) image.alias = extra.alias;
  if (extra.parent) image.parent = extra.parent;
  if (extra.note) image.note = extra.note;
  return image;
}

export async function imageBuildPlan(opts: ImageBuildPlanOptions): Promise<ImageBuildPlan> {
  const base = opts.base ?? BASE_BOOTSTRAP_TAG;
  const labels = opts.labels ?? {};
  const images: PlannedImage[] = [{ role: 'base', tag: base, spec: null }];

  let agent: PlannedImage;
  if (opts.agentRef) {
    agent = { role: 'agent', tag: opts.agentRef, spec: null };
  } else if (opts.agentDockerfile) {
    const dir = path.dirname(opts.agentDockerfile);
    const dockerignore = await readOptional(path.join(dir, '.dockerignore'));
    agent = await planned(
      'agent',
      IMAGE_REPOS.custom,
      {
        dockerfile: await readText(opts.agentDockerfile, 'the agent Dockerfile'),
        buildArgs: { BASE: base },
        context: { sources: [dockerignore === null ? { dir } : { dir, dockerignore }] },
      },
      { labels, alias: opts.aliases?.agent },
    );
  } else {
    const dir = path.join(opts.repoRoot, 'images', 'agent');
    const sources: ContextSource[] = [{ dir }, { content: '', at: 'extras/.keep' }];
    if (opts.claudeCode) sources.push({ file: opts.claudeCode, at: 'extras/claude-code.tgz' });
    agent = await planned(
      'agent',
      IMAGE_REPOS.agent,
      { dockerfile: await readText(path.join(dir, 'Dockerfile'), 'the agent Dockerfile'), buildArgs: { BASE: base }, context: { sources } },
      { labels, alias: opts.aliases?.agent, parent: base, ...(opts.claudeCode ? {} : { note: claudeCodeMissingNote('it was not requested') }) },
    );
  }
  images.push(agent);

  const sidecarDir = path.join(opts.repoRoot, 'images', 'sidecar');
  const bundles = path.join(opts.repoRoot, 'dist', 'sidecars');
  await requireBundles(bundles);
  const sidecar = await planned(
    'sidecar',
    IMAGE_REPOS.sidecar,
    {
      dockerfile: await readText(path.join(sidecarDir, 'Dockerfile'), 'the sidecar Dockerfile'),
      buildArgs: { BASE: base },
      context: { sources: [{ dir: sidecarDir }, { dir: bundles, at: 'sidecars' }] },
    },
    { labels, parent: base },
  );
  images.push(sidecar);

  let top = agent.tag;
  if (opts.perBottleDockerfile) {
    // The text came from the agent (approved by a human): it gets no host files to COPY.
    const bottle = await planned(
      'bottle',
      IMAGE_REPOS.bottle,
      { dockerfile: await readText(opts.perBottleDockerfile, 'the per-bottle Dockerfile'), buildArgs: { AGENT_IMAGE: agent.tag, BASE: base }, context: { sources: [] } },
      { labels, alias: opts.aliases?.bottle, parent: agent.tag },
    );
    images.push(bottle);
    top = bottle.tag;
  }

  const skills = opts.skills ?? [];
  let runtime = top;
  if (opts.cwd !== undefined || skills.length > 0) {
    const derived = await derivedImage(top, opts, skills, labels);
    images.push(derived);
    runtime = derived.tag;
  }
  return { images, agent: top, runtime, sidecar: sidecar.tag };
}

async function requireBundles(dir: string): Promise<void> {
  const names = await readdir(dir).catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') return [] as string[];
    throw err;
  });
  if (!names.some((n) => n.endsWith('.mjs'))) {
    throw new BottleError('BUILD_FAILED', `the sidecar programs are not built: no bundles in ${dir}`, 'run `npm run build` (node scripts/build.mjs), then try again');
  }
}

async function derivedImage(from: string, opts: ImageBuildPlanOptions, skills: readonly string[], labels: Labels): Promise<PlannedImage> {
  const sources: ContextSource[] = [];
  const lines = [`FROM ${from}`];
  if (opts.cwd !== undefined) {
    const ignoreFile = opts.bottleIgnore ?? path.join(opts.cwd, '.bottleignore');
    const ignore = await readOptional(ignoreFile);
    const ignoreLines = ignore === null ? [] : ignore.split('\n');
    const gitConfig = await workspaceGitConfigFor(opts.cwd, ignoreLines, opts.gitRemotes ?? []);
    sources.push({ dir: opts.cwd, at: 'workspace', ignore: gitConfig === null ? ignoreLines : [...ignoreLines, ...WORKSPACE_GIT_IGNORES] });
    if (gitConfig !== null) sources.push({ content: gitConfig, at: 'workspace/.git/config' });
    lines.push(`COPY --chown=${AGENT_UID}:${AGENT_UID} workspace/ /workspace/`);
  }
  if (skills.length > 0) {
    const seen = new Map<string, string>();
    for (const skill of skills) {
      const name = path.basename(path.resolve(skill));
      const prior = seen.get(name);
      if (prior !== undefined) {
        throw new BottleError(
          'MANIFEST_INVALID',
          `skills ${prior} and ${skill} would both be copied to ~/.claude/skills/${name}`,
          'rename one of the skill folders so each basename is unique',
        );
      }
      seen.set(name, skill);
      sources.push({ dir: skill, at: `skills/${name}` });
    }
    lines.push(`COPY --chown=${AGENT_UID}:${AGENT_UID} skills/ /home/agent/.claude/skills/`);
  }
  return planned('derived', IMAGE_REPOS.derived, { dockerfile: `${lines.join('\n')}\n`, context: { sources } }, { labels, alias: opts.aliases?.derived, parent: from });
}

/**
 * The workspace's .git/config (see machines/git-gate.ts), or null when the project has no
 * .git/config of its own that the copy would take.
 */
async function workspaceGitConfigFor(cwd: string, ignoreLines: readonly string[], remotes: readonly string[]): Promise<string | null> {
  const matcher = ignoreMatcher(ignoreLines);
  if (matcher.ignores('.git', true) || matcher.ignores('.git/config', false)) return null;
  const original = await readOptional(path.join(cwd, '.git', 'config')).catch(() => null);
  return original === null ? null : workspaceGitConfig(original, remotes);
}

/** An ImageBuilder that can also give an image a second name. */
export interface TaggingImageBuilder extends ImageBuilder {
  ensureImage(spec: BuildSpec, progress: BuildProgress, signal?: AbortSignal): Promise<{ tag: string; built: boolean }>;
  tagImage(tag: string, alias: string, signal?: AbortSignal): Promise<void>;
}

export interface BuiltImage {
  role: ImageRole;
  tag: string;
  built: boolean;
}

/**
 * Builds what the plan lists, in order, skipping what exists. Progress lines carry the
 * image role (`[agent] Step 2/9 : RUN ...`). Images not built here must already exist.
 */
export async function buildImages(plan: ImageBuildPlan, builder: TaggingImageBuilder, progress: BuildProgress, signal?: AbortSignal): Promise<BuiltImage[]> {
  const results: BuiltImage[] = [];
  for (const image of plan.images) {
    if (image.spec === null) {
      if (!(await builder.imageExists(image.tag, signal))) throw missing(image.tag, image.role, image.role === 'base');
      results.push({ role: image.role, tag: image.tag, built: false });
      continue;
    }
    if (image.parent && !(await builder.imageExists(image.parent, signal))) throw missing(image.parent, image.role, image.parent === plan.images[0]?.tag);
    const { built } = await builder.ensureImage(image.spec, (line) => progress(`[${image.role}] ${line}`), signal);
    if (built && image.note) progress(image.note);
    if (image.alias) await builder.tagImage(image.tag, image.alias, signal);
    results.push({ role: image.role, tag: image.tag, built });
  }
  return results;
}

function missing(tag: string, role: ImageRole, isBase: boolean): BottleError {
  const hint = isBase
    ? 'run `bottle images build` (it builds the base without a registry when none is reachable)'
    : `build or load ${tag} first (\`docker image ls\` shows what exists)`;
  return new BottleError('IMAGE_MISSING', `image ${tag} (needed for the ${role} image) does not exist locally`, hint);
}
