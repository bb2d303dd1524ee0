import { spawn } from 'node:child_process';
import { access, constants, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type Docker from 'dockerode';
import { BottleError } from '../../config/errors.js';
import type { BuildProgress } from '../../machines/ports.js';
import { classifyDockerError, isNotFound, statusOf } from './errors.js';
import { readProgressStream } from './image-stream.js';
import { splitTag } from './images.js';

/**
 * The base image every bot-bottle image starts FROM: Debian bookworm, either the
 * registry's debian:bookworm-slim or, where no registry is reachable (air-gapped
 * hosts, CI here), a minimal root built with debootstrap from a Debian mirror and
 * `docker import`ed as bot-bottle/base:bookworm.
 */

export const BASE_REGISTRY_TAG = 'debian:bookworm-slim';
export const BASE_BOOTSTRAP_TAG = 'bot-bottle/base:bookworm';
export const DEFAULT_DEBIAN_MIRROR = 'http://deb.debian.org/debian';

/**
 * auto: a local debian:bookworm-slim, else a local bot-bottle/base:bookworm, else a pull
 * from the registry, else a bootstrap. registry: pull only. bootstrap: the local
 * bootstrapped image or a new bootstrap; never touches a registry.
 */
export type BaseSource = 'auto' | 'registry' | 'bootstrap';

export interface EnsureBaseOptions {
  source: BaseSource;
  progress: BuildProgress;
  signal?: AbortSignal;
  /** Debian mirror debootstrap downloads from. */
  mirror?: string;
  /** Tag a bootstrap produces (and looks for); default bot-bottle/base:bookworm. */
  bootstrapTag?: string;
  /** The debootstrap program; default `debootstrap` from PATH, /usr/sbin or /sbin. */
  debootstrap?: string;
}

export interface BaseImage {
  tag: string;
  built: boolean;
  via: 'local' | 'registry' | 'bootstrap';
}

async function localImage(docker: Docker, tag: string): Promise<boolean> {
  try {
    await docker.getImage(tag).inspect();
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw classifyDockerError(err, { op: 'inspect image', object: tag });
  }
}

/** The base image already present locally (registry one first), or null. Looks only; builds nothing. */
export async function findBaseImage(docker: Docker, bootstrapTag = BASE_BOOTSTRAP_TAG): Promise<string | null> {
  if (await localImage(docker, BASE_REGISTRY_TAG)) return BASE_REGISTRY_TAG;
  if (await localImage(docker, bootstrapTag)) return bootstrapTag;
  return null;
}

export async function ensureBaseImage(docker: Docker, opts: EnsureBaseOptions): Promise<BaseImage> {
  const bootstrapTag = opts.bootstrapTag ?? BASE_BOOTSTRAP_TAG;
  if (opts.source === 'registry') {
    if (await localImage(docker, BASE_REGISTRY_TAG)) return { tag: BASE_REGISTRY_TAG, built: false, via: 'local' };
    await pullBase(docker, opts);
    return { tag: BASE_REGISTRY_TAG, built: true, via: 'registry' };
  }
  if (opts.source === 'bootstrap') {
    if (await localImage(docker, bootstrapTag)) return { tag: bootstrapTag, built: false, via: 'local' };
    await bootstrapBase(docker, bootstrapTag, opts);
    return { tag: bootstrapTag, built: true, via: 'bootstrap' };
  }
  const local = await findBaseImage(docker, bootstrapTag);
  if (local) return { tag: local, built: false, via: 'local' };
  try {
    await pullBase(docker, opts);
    return { tag: BASE_REGISTRY_TAG, built: true, via: 'registry' };
  } catch (err) {
    if (!(err instanceof BottleError) || err.code !== 'BUILD_FAILED') throw err;
    opts.progress(`${err.message}; building the base without a registry (debootstrap)`);
  }
  await bootstrapBase(docker, bootstrapTag, opts);
  return { tag: bootstrapTag, built: true, via: 'bootstrap' };
}

async function pullBase(docker: Docker, opts: EnsureBaseOptions): Promise<void> {
  opts.progress(`pulling ${BASE_REGISTRY_TAG}`);
  let stream: NodeJS.ReadableStream;
  try {
    stream = await docker.pull(BASE_REGISTRY_TAG, opts.signal ? { abortSignal: opts.signal } : {});
  } catch (err) {
    const classified = classifyDockerError(err, { op: 'pull image', object: BASE_REGISTRY_TAG });
    // With an HTTP status the daemon answered: the registry is the problem, and a bootstrap can stand in.
    if (statusOf(err) === undefined) throw classified;
    throw pullFailed(classified.message);
  }
  const outcome = await readProgressStream(stream, opts.progress).catch((err: unknown) => {
    throw classifyDockerError(err, { op: 'pull image', object: BASE_REGISTRY_TAG });
  });
  if (outcome.error !== null) throw pullFailed(`pulling ${BASE_REGISTRY_TAG}: ${outcome.error}`);
}

function pullFailed(message: string): BottleError {
  return new BottleError(
    'BUILD_FAILED',
    message,
    'no registry reachable? build the base without one: `bottle images build` with the bootstrap base source (needs root and debootstrap)',
  );
}

async function findDebootstrap(given: string | undefined): Promise<string> {
  const candidates = given ? [given] : ['/usr/sbin/debootstrap', '/sbin/debootstrap', '/usr/bin/debootstrap'];
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ENOENT' && (err as { code?: unknown }).code !== 'EACCES') throw err;
    }
  }
  // Not in the usual places: leave it to PATH; a spawn ENOENT then reports it missing.
  return given ?? 'debootstrap';
}

function missingDebootstrap(detail: string): BottleError {
  return new BottleError(
    'BUILD_FAILED',
    `cannot build the base image without a registry: debootstrap is not installed (${detail})`,
    'as root on Debian run `bash scripts/docker-up.sh` (installs debootstrap), or `apt-get install debootstrap`, or load debian:bookworm-slim (`docker load`)',
  );
}

/** Runs a program, passing each output line to `progress`; resolves with its exit code and last lines. */
function run(cmd: string, args: string[], progress: BuildProgress, signal?: AbortSignal): Promise<{ code: number; tail: string[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal } : {}) });
    const tail: string[] = [];
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line.trim() === '') continue;
        tail.push(line);
        if (tail.length > 10) tail.shift();
        progress(line);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, tail }));
  });
}

async function bootstrapBase(docker: Docker, tag: string, opts: EnsureBaseOptions): Promise<void> {
  const debootstrap = await findDebootstrap(opts.debootstrap);
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new BottleError(
      'BUILD_FAILED',
      `cannot build the base image ${tag} without a registry as a non-root user: debootstrap needs root (it runs chroot and creates device files)`,
      'run `sudo bash scripts/base-image.sh` once (or this command as root), or load debian:bookworm-slim (`docker load`)',
    );
  }
  const root = await mkdtemp(path.join(tmpdir(), 'bot-bottle-base-'));
  try {
    opts.progress(`bootstrapping Debian bookworm into ${root} (debootstrap, about a minute)`);
    const mirror = opts.mirror ?? DEFAULT_DEBIAN_MIRROR;
    let result: { code: number; tail: string[] };
    try {
      result = await run(debootstrap, ['--variant=minbase', 'bookworm', root, mirror], opts.progress, opts.signal);
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ENOENT') throw missingDebootstrap(`${debootstrap} not found`);
      throw err;
    }
    if (result.code !== 0) {
      throw new BottleError(
        'BUILD_FAILED',
        `debootstrap of bookworm from ${mirror} failed (exit ${result.code}):\n  ${result.tail.join('\n  ')}`,
        `check that ${mirror} is reachable from this host (or pass another Debian mirror), then run \`bottle images build\` again`,
      );
    }
    await emptyDir(path.join(root, 'var/cache/apt/archives'), (name) => name.endsWith('.deb'));
    await emptyDir(path.join(root, 'var/lib/apt/lists'), () => true);
    await importRoot(docker, root, tag, opts);
  } finally {
    await removeRoot(root, opts.progress);
  }
}

async function emptyDir(dir: string, match: (name: string) => boolean): Promise<void> {
  const names = await readdir(dir).catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') return [] as string[];
    throw err;
  });
  for (const name of names) if (match(name)) await rm(path.join(dir, name), { recursive: true, force: true });
}

async function importRoot(docker: Docker, root: string, tag: string, opts: EnsureBaseOptions): Promise<void> {
  opts.progress(`importing ${root} as ${tag}`);
  const tar = spawn('tar', ['--numeric-owner', '-C', root, '-c', '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const tarDone = new Promise<{ code: number; stderr: string }>((resolve, reject) => {
    let stderr = '';
    tar.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    tar.on('error', reject);
    tar.on('close', (code) => resolve({ code: code ?? 1, stderr }));
  });
  const { repo, tag: version } = splitTag(tag);
  let error: string | null;
  try {
    const stream = await docker.importImage(tar.stdout, {
      repo,
      tag: version,
      changes: ['CMD ["/bin/bash"]', 'LABEL bot-bottle.image=base'],
      ...(opts.signal ? { abortSignal: opts.signal } : {}),
    });
    error = (await readProgressStream(stream, opts.progress)).error;
  } catch (err) {
    tar.kill();
    throw classifyDockerError(err, { op: 'import the bootstrapped root as image', object: tag });
  }
  const tarResult = await tarDone;
  if (tarResult.code !== 0) throw new BottleError('BUILD_FAILED', `archiving the bootstrapped root ${root} failed: ${tarResult.stderr.trim()}`, 'check free space in the temp folder and run again');
  if (error !== null) throw new BottleError('BUILD_FAILED', `docker import of ${tag} failed: ${error}`, 'check free space for Docker and the daemon log');
}

/**
 * debootstrap bind-mounts /proc, /sys (and in containers /dev) inside the root while it
 * works and unmounts them when it finishes. If a failure left one mounted, a recursive
 * delete would reach through it into the host's /dev or /sys, so the root is left for
 * the user to inspect instead.
 */
async function removeRoot(root: string, progress: BuildProgress): Promise<void> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8').catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') return '';
    throw err;
  });
  const mounted = mountinfo
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .map((p) => p.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(Number.parseInt(oct, 8))))
    .filter((p) => p === root || p.startsWith(`${root}/`));
  if (mounted.length > 0) {
    progress(`not removing ${root}: still mounted inside it: ${mounted.join(', ')}; unmount them (umount -R) and delete it by hand`);
    return;
  }
  await rm(root, { recursive: true, force: true });
}
