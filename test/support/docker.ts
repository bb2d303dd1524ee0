import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type Docker from 'dockerode';
import type { Labels, LabelledObject } from '../../machines/ports.js';
import { createDockerClient } from '../../effects/docker/client.js';
import { DockerodeRuntime } from '../../effects/docker/runtime.js';

/**
 * Docker helpers for integration tests. Every object a test creates carries TEST_LABEL with
 * this suite's id, so afterEach/afterAll remove exactly what the suite made, even after a
 * failed assertion, and the suite can prove that nothing of it is left.
 */

export const TEST_LABEL = 'bot-bottle.test';
export const BASE_IMAGE = 'bot-bottle/base:bookworm';

/** One id per test file (vitest runs each file in its own module graph). */
export const SUITE_ID = `t${randomBytes(5).toString('hex')}`;
export const suiteLabels: Labels = { [TEST_LABEL]: SUITE_ID };

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const run = promisify(execFile);

let client: Docker | undefined;

/** The test client talks to the local daemon socket; tests never follow a DOCKER_HOST. */
export function docker(): Docker {
  client ??= createDockerClient({});
  return client;
}

export function runtime(): DockerodeRuntime {
  return new DockerodeRuntime(docker(), { pollMs: 100, drainMs: 500 });
}

/** A Docker object name unique to this suite: `bbt-<suite>-<what>`. */
export function uniqueName(what: string): string {
  return `bbt-${SUITE_ID}-${what}-${randomBytes(3).toString('hex')}`;
}

export async function listLabelled(labels: Labels = suiteLabels): Promise<LabelledObject[]> {
  return runtime().listLabelled(labels);
}

/** Removes every container, then network, then volume carrying all of `labels`. */
export async function removeAllLabelled(labels: Labels = suiteLabels): Promise<void> {
  const rt = runtime();
  const objects = await rt.listLabelled(labels);
  await Promise.all(objects.filter((o) => o.kind === 'container').map((o) => rt.removeContainer(o.id)));
  await Promise.all(objects.filter((o) => o.kind === 'network').map((o) => rt.removeNetwork(o.name)));
  await Promise.all(objects.filter((o) => o.kind === 'volume').map((o) => rt.removeVolume(o.name)));
}

export async function assertNothingLabelled(labels: Labels = suiteLabels): Promise<void> {
  const left = await listLabelled(labels);
  if (left.length > 0) {
    throw new Error(`Docker objects labelled ${JSON.stringify(labels)} were left behind: ${left.map((o) => `${o.kind} ${o.name}`).join(', ')}`);
  }
}

/** The registry-less Debian base image, built with scripts/base-image.sh when missing. */
export async function baseImage(): Promise<string> {
  try {
    await docker().getImage(BASE_IMAGE).inspect();
    return BASE_IMAGE;
  } catch (err) {
    if ((err as { statusCode?: unknown }).statusCode !== 404) throw err;
  }
  await run('bash', ['scripts/base-image.sh', BASE_IMAGE], { cwd: repoRoot, maxBuffer: 64 * 1024 * 1024 });
  return BASE_IMAGE;
}

/** Runs a command in a running container (as `user` when given); returns its exit code and output. */
export async function execIn(container: string, cmd: string[], opts: { user?: string } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const exec = await docker()
    .getContainer(container)
    .exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true, ...(opts.user ? { User: opts.user } : {}) });
  const stream = await exec.start({ Detach: false, Tty: false });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const sink = (into: Buffer[]) =>
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        into.push(chunk);
        cb();
      },
    });
  docker().modem.demuxStream(stream, sink(out), sink(err));
  await new Promise<void>((resolve, reject) => {
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  const info = await exec.inspect();
  return { code: info.ExitCode ?? -1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

/**
 * The IPv4 subnet Docker gave `network`: what a test manifest opts in with private_networks
 * when its upstream containers sit there (as a user with an internal registry would).
 */
export async function subnetOf(network: string): Promise<string> {
  const info = (await docker().getNetwork(network).inspect()) as { IPAM?: { Config?: { Subnet?: string }[] } };
  const subnet = info.IPAM?.Config?.map((c) => c.Subnet).find((s) => s?.includes('.'));
  if (!subnet) throw new Error(`network ${network} has no IPv4 subnet`);
  return subnet;
}
