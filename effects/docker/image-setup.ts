import type Docker from 'dockerode';
import type { BuildProgress } from '../../machines/ports.js';
import { type BaseImage, type BaseSource, ensureBaseImage } from './image-base.js';
import { findCachedClaudeCode, packClaudeCode } from './image-claude-code.js';
import { DockerodeImageBuilder } from './images.js';
import { type BuiltImage, buildImages, type ImageBuildPlan, type ImageBuildPlanOptions, imageBuildPlan } from './images-plan.js';

/**
 * The whole of `bottle images build` (and the image step of `bottle run`): base, then
 * Claude Code on the host when asked, then the plan, then the builds.
 */

export interface PrepareImagesOptions extends Omit<ImageBuildPlanOptions, 'base' | 'claudeCode'> {
  baseSource: BaseSource;
  progress: BuildProgress;
  signal?: AbortSignal;
  /** Debian mirror for a bootstrapped base. */
  mirror?: string;
  /**
   * Claude Code in the built-in agent image. fetch: true packs it on the host with npm
   * (`bottle images build` with the Claude Code option); fetch: false only reuses what an
   * earlier fetch cached, so other commands compute the same agent tag as that build.
   */
  claudeCode?: { cacheDir: string; fetch: boolean; version?: string };
}

export interface PreparedImages {
  base: BaseImage;
  plan: ImageBuildPlan;
  built: BuiltImage[];
}

export async function prepareImages(docker: Docker, opts: PrepareImagesOptions): Promise<PreparedImages> {
  const { baseSource, progress, signal, mirror, claudeCode, ...planOptions } = opts;
  const base = await ensureBaseImage(docker, { source: baseSource, progress, ...(signal ? { signal } : {}), ...(mirror ? { mirror } : {}) });

  let tarball: string | null = null;
  if (claudeCode && !planOptions.agentRef && !planOptions.agentDockerfile) {
    const { Architecture } = (await docker.info()) as { Architecture: string };
    if (claudeCode.fetch) {
      const packed = await packClaudeCode({
        cacheDir: claudeCode.cacheDir,
        architecture: Architecture,
        progress,
        ...(claudeCode.version ? { version: claudeCode.version } : {}),
        ...(signal ? { signal } : {}),
      });
      if (packed.note) progress(packed.note);
      tarball = packed.tarball;
    } else {
      tarball = await findCachedClaudeCode(claudeCode.cacheDir, Architecture);
    }
  }

  const plan = await imageBuildPlan({ ...planOptions, base: base.tag, claudeCode: tarball });
  const built = await buildImages(plan, new DockerodeImageBuilder(docker), progress, signal);
  return { base, plan, built };
}
