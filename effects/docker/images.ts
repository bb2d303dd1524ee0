import type Docker from 'dockerode';
import { BottleError } from '../../config/errors.js';
import type { BuildProgress, ImageBuilder } from '../../machines/ports.js';
import { type BuildSpec, CONTEXT_DOCKERFILE, collectContext, contextTar } from './image-context.js';
import { classifyDockerError, isNotFound } from './errors.js';
import { readProgressStream, type StreamOutcome } from './image-stream.js';

export type { BuildSpec, ContextSource } from './image-context.js';
export { contentTag } from './image-context.js';

/**
 * ImageBuilder over dockerode. Tags are content hashes (see contentTag), so "is it
 * built?" is a lookup and a second ensure of unchanged inputs does no work.
 *
 * `spec.dockerfile` is the Dockerfile's text; it travels inside the context under a
 * reserved name and is hidden from COPY/ADD.
 */
export class DockerodeImageBuilder implements ImageBuilder {
  constructor(private readonly docker: Docker) {}

  async imageExists(tag: string, signal?: AbortSignal): Promise<boolean> {
    return (await this.imageId(tag, signal)) !== null;
  }

  /** The image's id, or null when no image has this tag or id. */
  async imageId(tag: string, signal?: AbortSignal): Promise<string | null> {
    signal?.throwIfAborted();
    try {
      const info = await this.docker.getImage(tag).inspect();
      return info.Id;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw classifyDockerError(err, { op: 'inspect image', object: tag });
    }
  }

  async ensureImage(spec: BuildSpec, progress: BuildProgress, signal?: AbortSignal): Promise<{ tag: string; built: boolean }> {
    if (await this.imageExists(spec.tag, signal)) return { tag: spec.tag, built: false };
    const entries = await collectContext(spec.context, spec.dockerfile);
    progress(`building ${spec.tag}`);
    let stream: NodeJS.ReadableStream;
    try {
      stream = await this.docker.buildImage(contextTar(entries), {
        t: spec.tag,
        dockerfile: CONTEXT_DOCKERFILE,
        buildargs: spec.buildArgs ?? {},
        labels: spec.labels ?? {},
        rm: true,
        forcerm: true,
        ...(signal ? { abortSignal: signal } : {}),
      });
    } catch (err) {
      throw classifyDockerError(err, { op: 'build image', object: spec.tag });
    }
    let outcome: StreamOutcome;
    try {
      outcome = await readProgressStream(stream, progress);
    } catch (err) {
      throw classifyDockerError(err, { op: 'build image', object: spec.tag });
    }
    if (outcome.error !== null) throw buildFailed(spec.tag, outcome);
    if (!(await this.imageExists(spec.tag, signal))) {
      throw new BottleError(
        'BUILD_FAILED',
        `building image ${spec.tag}: the build stream ended without an error, but no image has that tag`,
        'see the daemon log (journalctl -u docker or /var/log/dockerd.log) and run the build again',
      );
    }
    return { tag: spec.tag, built: true };
  }

  /** Adds `alias` as a second name for `tag` (moves the alias if it named another image). */
  async tagImage(tag: string, alias: string, signal?: AbortSignal): Promise<void> {
    const { repo, tag: version } = splitTag(alias);
    try {
      await this.docker.getImage(tag).tag({ repo, tag: version, ...(signal ? { abortSignal: signal } : {}) });
    } catch (err) {
      throw classifyDockerError(err, { op: `tag image ${tag} as`, object: alias });
    }
  }

  /** Removes the tag; "no such image" is success. */
  async removeImage(tag: string, signal?: AbortSignal): Promise<void> {
    try {
      await this.docker.getImage(tag).remove({ force: true, ...(signal ? { abortSignal: signal } : {}) });
    } catch (err) {
      if (isNotFound(err)) return;
      throw classifyDockerError(err, { op: 'remove image', object: tag });
    }
  }
}

/** `repo[:tag]` → parts; the colon of a registry port is not a tag separator. */
export function splitTag(ref: string): { repo: string; tag: string } {
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  if (colon > slash) return { repo: ref.slice(0, colon), tag: ref.slice(colon + 1) };
  return { repo: ref, tag: 'latest' };
}

function buildFailed(tag: string, outcome: StreamOutcome): BottleError {
  const where = outcome.step ? ` at "${outcome.step}"` : '';
  const output = outcome.tail.filter((l) => l !== outcome.error).slice(-5);
  const last = output.length > 0 ? `\nlast output:\n  ${output.join('\n  ')}` : '';
  return new BottleError(
    'BUILD_FAILED',
    `building image ${tag} failed${where}: ${outcome.error}${last}`,
    'fix that step (or what it needs, e.g. the Debian mirror for apt-get), then run `bottle images build` again',
  );
}
