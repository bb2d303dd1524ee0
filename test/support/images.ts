import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type Docker from 'dockerode';
import { createDockerClient } from '../../effects/docker/client.js';
import { ensureBaseImage, findBaseImage } from '../../effects/docker/image-base.js';
import { DockerodeImageBuilder } from '../../effects/docker/images.js';
import { buildImages, imageBuildPlan } from '../../effects/docker/images-plan.js';

/**
 * The product images every Docker test runs on, built with the product code and
 * cached by content tag: the first test file on a fresh machine builds them (the base
 * through debootstrap, never a registry pull), later ones only look them up.
 */

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface TestImages {
  base: string;
  agent: string;
  sidecar: string;
}

const run = promisify(execFile);
let images: Promise<TestImages> | undefined;

function log(line: string): void {
  console.error(`[images] ${line}`);
}

export function ensureTestImages(): Promise<TestImages> {
  images ??= buildTestImages();
  return images;
}

async function buildTestImages(): Promise<TestImages> {
  // Sidecar bundles are inputs of the sidecar image's tag: rebuild them so the tag follows the source.
  await run(process.execPath, [path.join(REPO_ROOT, 'scripts', 'build.mjs'), '--sidecars-only'], { cwd: REPO_ROOT });
  const docker = createDockerClient();
  // A base already here (registry or bootstrapped) is used as is; otherwise bootstrap: tests never pull.
  const base = (await findBaseImage(docker)) ?? (await ensureBaseImage(docker, { source: 'bootstrap', progress: log })).tag;
  const plan = await imageBuildPlan({ repoRoot: REPO_ROOT, base });
  await buildImages(plan, new DockerodeImageBuilder(docker), log);
  return { base, agent: plan.agent, sidecar: plan.sidecar };
}

/** Label on every image and container an images test creates (one value per test file); cleanup goes by it. */
export const TEST_LABEL = { 'bot-bottle.test': `images-${randomBytes(5).toString('hex')}` } as const;
const LABEL_FILTER = Object.entries(TEST_LABEL).map(([k, v]) => `${k}=${v}`);

/** Splits docker's multiplexed stdout/stderr frames (8-byte header: stream, 0, 0, 0, size). */
export function demux(buf: Buffer): { stdout: string; stderr: string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let i = 0;
  while (i + 8 <= buf.length) {
    const size = buf.readUInt32BE(i + 4);
    const frame = buf.subarray(i + 8, i + 8 + size);
    (buf[i] === 2 ? err : out).push(frame);
    i += 8 + size;
  }
  return { stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs `cmd` in a fresh container of `image` with no network, and removes the container. */
export async function runInImage(docker: Docker, image: string, cmd: string[], opts: { user?: string; env?: string[] } = {}): Promise<RunResult> {
  const container = await docker.createContainer({
    Image: image,
    Cmd: cmd,
    Labels: { ...TEST_LABEL },
    ...(opts.user ? { User: opts.user } : {}),
    ...(opts.env ? { Env: opts.env } : {}),
    HostConfig: { NetworkMode: 'none' },
  });
  try {
    await container.start();
    const { StatusCode } = (await container.wait()) as { StatusCode: number };
    const logs = (await container.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
    return { exitCode: StatusCode, ...demux(logs) };
  } finally {
    await container.remove({ force: true });
  }
}

/** Runs `cmd` inside a running container. */
export async function execIn(container: Docker.Container, cmd: string[]): Promise<RunResult> {
  const exec = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true });
  const stream = await exec.start({ hijack: true, stdin: false });
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  const info = await exec.inspect();
  return { exitCode: info.ExitCode ?? -1, ...demux(Buffer.concat(chunks)) };
}

/** Removes every container and image carrying TEST_LABEL; returns how many images went. */
export async function removeTestObjects(docker: Docker): Promise<number> {
  for (const c of await docker.listContainers({ all: true, filters: { label: LABEL_FILTER } })) {
    await docker.getContainer(c.Id).remove({ force: true });
  }
  // Newest first: a child image must go before the image it was built FROM.
  const list = (await docker.listImages({ filters: { label: LABEL_FILTER } })).sort((a, b) => b.Created - a.Created);
  for (const image of list) {
    await docker
      .getImage(image.Id)
      .remove({ force: true })
      .catch((err: unknown) => {
        // Already gone is the outcome we want.
        if ((err as { statusCode?: number }).statusCode !== 404) throw err;
      });
  }
  return list.length;
}

/** What is left with TEST_LABEL: the suite asserts this is empty at its end. */
export async function leftoverTestObjects(docker: Docker): Promise<string[]> {
  const containers = await docker.listContainers({ all: true, filters: { label: LABEL_FILTER } });
  const imgs = await docker.listImages({ filters: { label: LABEL_FILTER } });
  return [...containers.map((c) => `container ${c.Id}`), ...imgs.map((i) => `image ${i.RepoTags?.join(',') ?? i.Id}`)];
}
