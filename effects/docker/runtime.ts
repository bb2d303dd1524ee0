import { readFile, stat } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import type { Duplex, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { setTimeout as delay } from 'node:timers/promises';
import type Docker from 'dockerode';
import { BottleError } from '../../config/errors.js';
import {
  type AgentIO,
  type ContainerInfo,
  type ContainerRuntime,
  type ContainerSpec,
  type FileToPut,
  LABEL,
  type LabelledObject,
  type Labels,
  type NetworkSpec,
  type Readiness,
  type RuntimeInfo,
  type VolumeSpec,
} from '../../machines/ports.js';
import { classifyDockerError, type DockerErrorContext, HINTS, statusOf } from './errors.js';
import { envList, readEnvFile } from './runtime-env.js';
import { describeReadiness, probeCommand } from './runtime-ready.js';
import { assertNoEngineSocket, createBody, tmpfsVolumeOptions } from './runtime-spec.js';
import { demuxBuffer, dockerTime, recordedUntil, withoutRecorded, isUnrecorded, logLines, openSinks } from './runtime-streams.js';
import { tarFiles } from './tar.js';

export interface DockerodeRuntimeOptions {
  /** Pause between readiness probes. */
  pollMs?: number;
  /** How long an attach stream may keep delivering output after the container exited. */
  drainMs?: number;
  /** Log lines quoted in a SIDECAR_UNHEALTHY message. */
  logTail?: number;
}

/**
 * Docker before 25 gives containers on an internal network a default route to a gateway
 * address that the host holds on the bridge; the host's own services (INPUT chain) are then
 * reachable from the bottle (moby/libnetwork#1151). Without an address on the bridge the
 * gateway is nobody, and the only peers are the containers on the network.
 */
const INHIBIT_IPV4 = 'com.docker.network.bridge.inhibit_ipv4';

type ContainerState = ContainerInfo['state'];
const STATES: readonly ContainerState[] = ['created', 'running', 'exited', 'dead', 'paused', 'restarting', 'removing'];

/**
 * ContainerRuntime over the Docker Engine API (dockerode). Every method is idempotent or
 * reconciles, because a resumed run re-invokes whatever step was in flight: `ensure*` adopts
 * what an earlier attempt created, `remove*` and `stop*` treat "already gone" as done.
 */
export class DockerodeRuntime implements ContainerRuntime {
  private readonly pollMs: number;
  private readonly drainMs: number;
  private readonly logTail: number;

  constructor(
    private readonly docker: Docker,
    options: DockerodeRuntimeOptions = {},
  ) {
    this.pollMs = options.pollMs ?? 250;
    this.drainMs = options.drainMs ?? 1000;
    this.logTail = options.logTail ?? 20;
  }

  async info(signal?: AbortSignal): Promise<RuntimeInfo> {
    const readInfo = this.docker.info.bind(this.docker) as (opts: object) => Promise<{ Runtimes?: Record<string, unknown>; ServerVersion?: string }>;
    const info = await this.call({ op: 'read daemon info' }, signal, () => readInfo({ abortSignal: signal }));
    return { runtimes: Object.keys(info.Runtimes ?? {}), serverVersion: String(info.ServerVersion ?? '') };
  }

  async existingContainers(names: string[], signal?: AbortSignal): Promise<string[]> {
    // The daemon also resolves ID prefixes; only a container of exactly that name counts.
    const found = await Promise.all(names.map(async (name) => ((await this.inspectRaw(name, signal))?.Name === `/${name}` ? name : null)));
    return found.filter((name): name is string => name !== null);
  }

  async listLabelled(labels: Labels, signal?: AbortSignal): Promise<LabelledObject[]> {
    const filters = { label: labelFilter(labels) };
    const [containers, networks, volumes] = await Promise.all([
      this.call({ op: 'list containers' }, signal, () => this.docker.listContainers({ all: true, filters, abortSignal: signal })),
      this.call({ op: 'list networks' }, signal, () => this.docker.listNetworks({ filters, abortSignal: signal })),
      this.call({ op: 'list volumes' }, signal, () => this.docker.listVolumes({ filters, abortSignal: signal })),
    ]);
    return [
      ...containers.map((c) => ({ kind: 'container' as const, name: (c.Names[0] ?? c.Id).replace(/^\//, ''), id: c.Id, labels: c.Labels ?? {} })),
      ...networks.map((n) => ({ kind: 'network' as const, name: n.Name, id: n.Id, labels: n.Labels ?? {} })),
      ...(volumes.Volumes ?? []).map((v) => ({ kind: 'volume' as const, name: v.Name, id: v.Name, labels: v.Labels ?? {} })),
    ];
  }

  async hostAddresses(signal?: AbortSignal): Promise<string[]> {
    const networks = await this.call({ op: 'list networks' }, signal, () => this.docker.listNetworks({ abortSignal: signal }));
    const gateways = networks.flatMap((n) => (n.IPAM?.Config ?? []).flatMap((c) => (c.Gateway ? [c.Gateway] : [])));
    // The engine runs on the Docker host (a local socket); with a remote DOCKER_HOST these are
    // the CLI machine's addresses, refused too, and the daemon's are its networks' gateways.
    const own = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address.replace(/%.*$/, '')));
    return [...new Set([...gateways, ...own])].sort();
  }

  async ensureNetwork(spec: NetworkSpec, signal?: AbortSignal): Promise<{ id: string; created: boolean; gateway?: string }> {
    const found = await this.ensureNetworkObject(spec, signal);
    const info = await this.inspectNetworkRaw(spec.name, signal);
    const gateway = info?.IPAM?.Config?.find((c) => c.Gateway)?.Gateway;
    return gateway ? { ...found, gateway } : found;
  }

  private async ensureNetworkObject(spec: NetworkSpec, signal?: AbortSignal): Promise<{ id: string; created: boolean }> {
    const existing = await this.inspectNetworkRaw(spec.name, signal);
    if (existing) return { id: adoptableNetwork(existing, spec), created: false };
    try {
      const network = await this.docker.createNetwork({
        Name: spec.name,
        Driver: 'bridge',
        Internal: spec.internal,
        Labels: spec.labels,
        ...(spec.internal ? { Options: { [INHIBIT_IPV4]: 'true' } } : {}),
        // Without it Docker happily creates a second network of the same name.
        CheckDuplicate: true,
        abortSignal: signal,
      });
      return { id: network.id, created: true };
    } catch (err) {
      if (statusOf(err) !== 409 || signal?.aborted) throw this.fail(err, { op: 'create network', object: spec.name }, signal);
    }
    // Lost a race with a concurrent ensure: adopt the winner's network if it is ours.
    const raced = await this.inspectNetworkRaw(spec.name, signal);
    if (!raced) throw new BottleError('DOCKER_ERROR', `Docker could not create network ${spec.name}: it was reported as existing and then vanished`);
    return { id: adoptableNetwork(raced, spec), created: false };
  }

  async ensureVolume(spec: VolumeSpec, signal?: AbortSignal): Promise<{ created: boolean }> {
    const volume = this.docker.getVolume(spec.name);
    const existing = await this.tolerate({ op: 'inspect volume', object: spec.name }, signal, [404], () => volume.inspect({ abortSignal: signal }));
    if (existing) {
      assertSameIdentity('volume', spec.name, existing.Labels ?? {}, spec.labels);
      return { created: false };
    }
    await this.call({ op: 'create volume', object: spec.name }, signal, () =>
      this.docker.createVolume({
        Name: spec.name,
        Labels: spec.labels,
        ...(spec.sizeBytes !== undefined ? { Driver: 'local', DriverOpts: tmpfsVolumeOptions(spec.sizeBytes, spec) } : {}),
        abortSignal: signal,
      }),
    );
    return { created: true };
  }

  async ensureContainer(spec: ContainerSpec, signal?: AbortSignal): Promise<{ id: string; created: boolean }> {
    signal?.throwIfAborted();
    await assertNoEngineSocket(spec, this.socketPath());
    const fileEnv = spec.envFile === undefined ? {} : await readEnvFile(spec.envFile, signal);
    const body = createBody(spec, envList(fileEnv, spec.env));

    const { id, created, state } = await this.createOrAdopt(spec, body, signal);
    // An earlier attempt may have died between create and start: finish its work.
    await this.connectNetworks(id, spec, signal);
    if (state === 'created') await this.copyIn(id, spec, signal);
    return { id, created };
  }

  async startContainer(name: string, signal?: AbortSignal): Promise<void> {
    // 304: already running.
    await this.tolerate({ op: 'start container', object: name }, signal, [304], () => this.docker.getContainer(name).start({ abortSignal: signal }));
  }

  async waitReady(name: string, readiness: Readiness, deadlineMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    const check = describeReadiness(readiness);
    for (;;) {
      const info = await this.inspectRaw(name, signal);
      if (!info) {
        throw new BottleError('SIDECAR_UNHEALTHY', `container ${name} does not exist (waiting for ${check})`, 'Run `bottle cleanup`, then run the bottle again.');
      }
      if (hasStopped(info)) {
        const lines = await this.lastLogLines(name, signal);
        throw new BottleError(
          'SIDECAR_UNHEALTHY',
          `container ${name} exited with code ${info.State.ExitCode} before it was ready (${check})${quoteLines(lines)}`,
          `See \`docker logs ${name}\`; fix the cause and run the bottle again.`,
        );
      }
      if (info.State.Running && (await this.probe(info, readiness, signal))) return;
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        const lines = await this.lastLogLines(name, signal);
        throw new BottleError(
          'SIDECAR_UNHEALTHY',
          `container ${name} was not ready within ${deadlineMs} ms (${check}; state ${info.State.Status})${quoteLines(lines)}`,
          `See \`docker logs ${name}\`; fix the cause and run the bottle again.`,
        );
      }
      await sleep(Math.min(this.pollMs, remaining), signal);
    }
  }

  async inspectContainer(name: string, signal?: AbortSignal): Promise<ContainerInfo | null> {
    const info = await this.inspectRaw(name, signal);
    if (!info) return null;
    const status = info.State.Status as ContainerState;
    return {
      id: info.Id,
      name: info.Name.replace(/^\//, ''),
      image: info.Config.Image,
      state: STATES.includes(status) ? status : 'dead',
      labels: info.Config.Labels ?? {},
      ...(info.HostConfig.Runtime ? { runtime: info.HostConfig.Runtime } : {}),
    };
  }

  async waitExit(name: string, opts: { io?: AgentIO; logFile?: string }, signal?: AbortSignal): Promise<{ exitCode: number }> {
    const container = this.docker.getContainer(name);
    const info = await this.call({ op: 'inspect container', object: name }, signal, () => container.inspect({ abortSignal: signal }));
    const wantsOutput = opts.io !== undefined || opts.logFile !== undefined;
    // Output nobody recorded yet (the container ran before anyone attached, or exited already)
    // is replayed from the daemon's log once. A re-attach after the previous attacher died
    // first replays what the daemon logged since the log file's last write, so output written
    // while no CLI was attached is not lost.
    const replay = wantsOutput && (await isUnrecorded(opts.logFile));
    const since = wantsOutput && !replay ? await recordedUntil(opts.logFile) : null;

    if (hasStopped(info)) {
      if (replay || since) await this.replayLogs(container, name, opts, signal, since ? { since: since.since, recorded: since.tail } : {});
      return { exitCode: await this.exitCode(container, name, signal) };
    }
    if (!wantsOutput) {
      if (info.State.Status === 'created') await this.startContainer(name, signal);
      return { exitCode: await this.exitCode(container, name, signal) };
    }
    return this.attachAndWait(container, info, opts, replay, signal, since);
  }

  async stopContainer(name: string, timeoutSec: number, signal?: AbortSignal): Promise<void> {
    // 304: not running; 404: gone. Both are what "stopped" means to the caller.
    await this.tolerate({ op: 'stop container', object: name }, signal, [304, 404], () =>
      this.docker.getContainer(name).stop({ t: timeoutSec, abortSignal: signal }),
    );
  }

  async removeContainer(name: string, signal?: AbortSignal): Promise<void> {
    try {
      await this.docker.getContainer(name).remove({ force: true, v: false, abortSignal: signal } as Docker.ContainerRemoveOptions);
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      const status = statusOf(err);
      if (status === 404) return;
      // A removal already under way ends where this one would.
      if (status === 409 && /already in progress/i.test(String((err as Error).message))) return;
      throw classifyDockerError(err, { op: 'remove container', object: name });
    }
  }

  async removeNetwork(name: string, signal?: AbortSignal): Promise<void> {
    const network = this.docker.getNetwork(name);
    for (let attempt = 0; ; attempt++) {
      const info = await this.inspectNetworkRaw(name, signal);
      if (!info) return;
      // A network with endpoints cannot be removed; disconnect whatever is still on it.
      await Promise.all(
        Object.keys(info.Containers ?? {}).map((container) =>
          this.tolerate({ op: 'disconnect a container from network', object: name }, signal, [404], () =>
            network.disconnect({ Container: container, Force: true, abortSignal: signal }),
          ),
        ),
      );
      try {
        await network.remove({ abortSignal: signal });
        return;
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        const status = statusOf(err);
        if (status === 404) return;
        // 403 "has active endpoints": something joined between inspect and remove.
        if (status !== 403 || attempt >= 2) throw classifyDockerError(err, { op: 'remove network', object: name });
      }
    }
  }

  async removeVolume(name: string, signal?: AbortSignal): Promise<void> {
    await this.tolerate({ op: 'remove volume', object: name }, signal, [404], () =>
      this.docker.getVolume(name).remove({ force: false, abortSignal: signal }),
    );
  }

  // ---- containers: create-time helpers ----

  private async createOrAdopt(
    spec: ContainerSpec,
    body: Docker.ContainerCreateOptions,
    signal: AbortSignal | undefined,
  ): Promise<{ id: string; created: boolean; state: string }> {
    const ctx = { op: 'create container', object: spec.name };
    try {
      // dockerode serializes its whole options object into the query string unless given
      // `_query`/`_body`: Env values would end up in the request URL (and dockerd's debug log).
      const options = { _query: { name: spec.name }, _body: body, abortSignal: signal } as unknown as Docker.ContainerCreateOptions;
      const container = await this.docker.createContainer(options);
      return { id: container.id, created: true, state: 'created' };
    } catch (err) {
      if (statusOf(err) !== 409 || signal?.aborted) throw this.fail(err, ctx, signal);
      const existing = await this.inspectRaw(spec.name, signal);
      if (!existing) throw this.fail(err, ctx, signal);
      assertSameRun(spec, existing);
      return { id: existing.Id, created: false, state: existing.State.Status };
    }
  }

  private async connectNetworks(id: string, spec: ContainerSpec, signal: AbortSignal | undefined): Promise<void> {
    if (spec.networks.length <= 1) return;
    const info = await this.call({ op: 'inspect container', object: spec.name }, signal, () => this.docker.getContainer(id).inspect({ abortSignal: signal }));
    const joined = new Set(Object.keys(info.NetworkSettings?.Networks ?? {}));
    for (const net of spec.networks.slice(1)) {
      if (joined.has(net.name)) continue;
      try {
        const options = { Container: id, EndpointConfig: { Aliases: net.aliases }, abortSignal: signal };
        await this.docker.getNetwork(net.name).connect(options as Docker.NetworkConnectOptions);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        // Joined meanwhile by a concurrent attempt: the endpoint is there, which is the goal.
        if (statusOf(err) === 403 && /already exists/i.test(String((err as Error).message))) continue;
        throw classifyDockerError(err, { op: `connect container ${spec.name} to network`, object: net.name });
      }
    }
  }

  async putFiles(name: string, files: FileToPut[], signal?: AbortSignal): Promise<void> {
    const now = Math.floor(Date.now() / 1000);
    const archive = await tarFiles(
      files.map((f) => ({ path: f.containerPath, mode: f.mode, body: Buffer.from(f.content), uid: f.uid ?? 0, gid: f.gid ?? 0, mtime: now })),
    );
    await this.call({ op: 'copy files into container', object: name }, signal, () =>
      this.docker.getContainer(name).putArchive(archive, { path: '/', noOverwriteDirNonDir: true, abortSignal: signal }),
    );
  }

  async readStdout(name: string, signal?: AbortSignal): Promise<string> {
    const buf = await this.tolerate({ op: 'read logs of container', object: name }, signal, [404], () =>
      this.docker.getContainer(name).logs({ stdout: true, stderr: false, follow: false, abortSignal: signal }),
    );
    return buf ? demuxBuffer(buf as Buffer).stdout.toString('utf8') : '';
  }

  async readArchive(name: string, path: string, signal?: AbortSignal): Promise<Buffer | null> {
    const stream = await this.tolerate({ op: `read ${path} from container`, object: name }, signal, [404], () =>
      this.docker.getContainer(name).getArchive({ path, abortSignal: signal } as never),
    );
    if (!stream) return null;
    const chunks: Buffer[] = [];
    for await (const chunk of stream as unknown as AsyncIterable<Buffer>) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  async writeArchive(name: string, dir: string, tar: Buffer, signal?: AbortSignal): Promise<void> {
    await this.call({ op: `copy into ${dir} of container`, object: name }, signal, () =>
      this.docker.getContainer(name).putArchive(tar, { path: dir, abortSignal: signal }),
    );
  }

  private async copyIn(id: string, spec: ContainerSpec, signal: AbortSignal | undefined): Promise<void> {
    for (const file of spec.copyIn ?? []) {
      const [body, meta] = await Promise.all([readFile(file.hostPath, signal ? { signal } : {}), stat(file.hostPath)]).catch((err: unknown) => {
        if (signal?.aborted) throw signal.reason;
        throw new BottleError(
          'SECRET_UNREADABLE',
          `cannot read ${file.hostPath} to copy into container ${spec.name}: ${String((err as { code?: unknown }).code ?? err)}`,
          'The file is staged for each run; run the bottle again, and check that BOTTLE_HOME is readable.',
        );
      });
      const owned = file.uid !== undefined || file.gid !== undefined;
      const archive = await tarFiles([
        { path: file.containerPath, mode: file.mode, body, uid: file.uid ?? 0, gid: file.gid ?? 0, mtime: Math.floor(meta.mtimeMs / 1000) },
      ]);
      await this.call({ op: `copy ${file.containerPath} into container`, object: spec.name }, signal, () =>
        this.docker.getContainer(id).putArchive(archive, {
          path: '/',
          noOverwriteDirNonDir: true,
          // Without an explicit owner the file belongs to the container's user, who must read it.
          ...(owned || !spec.user ? {} : { copyUIDGID: true }),
          abortSignal: signal,
        }),
      );
    }
  }

  // ---- containers: waiting and attaching ----

  private async attachAndWait(
    container: Docker.Container,
    info: Docker.ContainerInspectInfo,
    opts: { io?: AgentIO; logFile?: string },
    replay: boolean,
    signal: AbortSignal | undefined,
    since: { since: string; tail: Buffer } | null = null,
  ): Promise<{ exitCode: number }> {
    const name = info.Name.replace(/^\//, '');
    const tty = info.Config.Tty;
    const stdin = info.Config.OpenStdin ? opts.io?.stdin : undefined;
    const sinks = openSinks(opts.io, opts.logFile);
    let stream: Duplex | Readable | undefined;
    let unsubscribeResize: (() => void) | undefined;
    try {
      // Attach before anything can produce output we would miss: before start for a created
      // container, before wait for a running one.
      stream = (await this.call({ op: 'attach to container', object: name }, signal, () =>
        container.attach({ stream: true, stdout: true, stderr: true, stdin: stdin !== undefined, hijack: stdin !== undefined, logs: replay, abortSignal: signal }),
      )) as unknown as Duplex;
      const attached = stream;
      const ended = finished(attached, { readable: true, writable: false }).catch((err: unknown) => err);
      if (since) {
        // The attach stream holds its output (no reader yet) while the gap is filled in, so
        // the log stays in order: [recorded][logged while detached][live].
        const attachedAt = dockerTime(BigInt(Date.now()) * 1_000_000n);
        await this.replayLogs(container, name, { ...(opts.logFile ? { logFile: opts.logFile } : {}), ...(opts.io ? { io: opts.io } : {}) }, signal, {
          since: since.since,
          until: attachedAt,
          recorded: since.tail,
        });
      }
      if (tty) attached.on('data', (chunk: Buffer) => sinks.stdout.write(chunk));
      else this.docker.modem.demuxStream(attached, sinks.stdout, sinks.stderr);
      // end: false: the user's stdin closing must not end the session for a later re-attach.
      if (stdin) stdin.pipe(attached as Duplex, { end: false });

      if (info.State.Status === 'created') await this.startContainer(name, signal);
      const size = tty ? opts.io?.tty : undefined;
      if (size) {
        await this.resize(container, size, signal);
        unsubscribeResize = size.onResize((next) => void this.resize(container, next, signal));
      }

      const exitCode = await this.exitCode(container, name, signal);
      // The exit can overtake the last output still in flight; let the stream deliver it.
      // When the container exited before our attach, the stream never ends on its own.
      await Promise.race([ended, sleep(this.drainMs, signal)]);
      return { exitCode };
    } finally {
      unsubscribeResize?.();
      if (stdin && stream) stdin.unpipe(stream as Duplex);
      stream?.destroy();
      await sinks.close();
    }
  }

  /**
   * Best effort by design: a resize that races the container's exit is refused by the daemon,
   * and a lost resize only changes the layout. Real trouble with the daemon surfaces from the
   * wait that runs alongside, so a failure here is dropped, not thrown.
   */
  private async resize(container: Docker.Container, size: { columns: number; rows: number }, signal: AbortSignal | undefined): Promise<boolean> {
    if (signal?.aborted) return false;
    return container.resize({ h: size.rows, w: size.columns, abortSignal: signal }).then(
      () => true,
      () => false,
    );
  }

  private async replayLogs(
    container: Docker.Container,
    name: string,
    opts: { io?: AgentIO; logFile?: string },
    signal: AbortSignal | undefined,
    window: { since?: string; until?: string; recorded?: Buffer } = {},
  ): Promise<void> {
    const { recorded, ...range } = window;
    // since/until go to the daemon as strings ("seconds.nanoseconds"), which it parses exactly.
    const buf = await this.call({ op: 'read logs of container', object: name }, signal, () =>
      container.logs({ stdout: true, stderr: true, follow: false, ...(range as object), abortSignal: signal } as Docker.ContainerLogsOptions & { follow: false }),
    );
    const sinks = openSinks(opts.io, opts.logFile);
    try {
      const demuxed = demuxBuffer(buf);
      const stdout = recorded ? withoutRecorded(recorded, demuxed.stdout) : demuxed.stdout;
      const stderr = recorded ? withoutRecorded(recorded, demuxed.stderr) : demuxed.stderr;
      if (stdout.length > 0) sinks.stdout.write(stdout);
      if (stderr.length > 0) sinks.stderr.write(stderr);
    } finally {
      await sinks.close();
    }
  }

  private async exitCode(container: Docker.Container, name: string, signal: AbortSignal | undefined): Promise<number> {
    // Default condition "not-running": answers at once for a container that already exited.
    const result = (await this.call({ op: 'wait for container', object: name }, signal, () => container.wait({ abortSignal: signal }))) as {
      StatusCode: number;
      Error?: { Message?: string } | null;
    };
    if (result.Error?.Message) throw new BottleError('DOCKER_ERROR', `Docker could not wait for container ${name}: ${result.Error.Message}`);
    return result.StatusCode;
  }

  // ---- readiness ----

  private async probe(info: Docker.ContainerInspectInfo, readiness: Readiness, signal: AbortSignal | undefined): Promise<boolean> {
    if (readiness.kind === 'running') return info.State.Running;
    const name = info.Name.replace(/^\//, '');
    if (readiness.kind === 'log') {
      const pattern = new RegExp(readiness.pattern);
      const buf = await this.call({ op: 'read logs of container', object: name }, signal, () =>
        this.docker.getContainer(info.Id).logs({ stdout: true, stderr: true, follow: false, abortSignal: signal }),
      );
      return logLines(buf).some((line) => pattern.test(line));
    }
    const cmd = probeCommand(readiness);
    if (!cmd) return false;
    return (await this.execStatus(info.Id, name, cmd, signal)) === 0;
  }

  /** Runs a command in the container and returns its exit code; null when it could not run. */
  private async execStatus(id: string, name: string, cmd: string[], signal: AbortSignal | undefined): Promise<number | null> {
    const container = this.docker.getContainer(id);
    try {
      const exec = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true, abortSignal: signal } as Docker.ExecCreateOptions);
      const output = await exec.start({ Detach: false, Tty: false, abortSignal: signal });
      output.resume();
      await finished(output);
      const result = await exec.inspect({ abortSignal: signal });
      return typeof result.ExitCode === 'number' ? result.ExitCode : null;
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      // 409: the container stopped between inspect and exec; the caller's next inspect says so.
      if (statusOf(err) === 409) return null;
      throw classifyDockerError(err, { op: 'run a readiness probe in container', object: name });
    }
  }

  private async lastLogLines(name: string, signal: AbortSignal | undefined): Promise<string[]> {
    const buf = await this.tolerate({ op: 'read logs of container', object: name }, signal, [404], () =>
      this.docker.getContainer(name).logs({ stdout: true, stderr: true, follow: false, tail: this.logTail, abortSignal: signal }),
    );
    return buf ? logLines(buf).slice(-this.logTail) : [];
  }

  // ---- plumbing ----

  private socketPath(): string | undefined {
    const path = (this.docker.modem as { socketPath?: unknown }).socketPath;
    return typeof path === 'string' ? path : undefined;
  }

  private async inspectRaw(name: string, signal: AbortSignal | undefined): Promise<Docker.ContainerInspectInfo | null> {
    return this.tolerate({ op: 'inspect container', object: name }, signal, [404], () => this.docker.getContainer(name).inspect({ abortSignal: signal }));
  }

  private async inspectNetworkRaw(name: string, signal: AbortSignal | undefined): Promise<Docker.NetworkInspectInfo | null> {
    // dockerode does not wire a signal into network inspect; it is one short request.
    const info = await this.tolerate({ op: 'inspect network', object: name }, signal, [404], () => this.docker.getNetwork(name).inspect());
    // The daemon also resolves ID prefixes; only an exact name is this network.
    return info && info.Name === name ? (info as Docker.NetworkInspectInfo) : null;
  }

  private async call<T>(ctx: DockerErrorContext, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    signal?.throwIfAborted();
    try {
      return await fn();
    } catch (err) {
      throw this.fail(err, ctx, signal);
    }
  }

  /** Like `call`, but the listed HTTP statuses mean "nothing to do" and yield null. */
  private async tolerate<T>(ctx: DockerErrorContext, signal: AbortSignal | undefined, statuses: number[], fn: () => Promise<T>): Promise<T | null> {
    signal?.throwIfAborted();
    try {
      return await fn();
    } catch (err) {
      const status = statusOf(err);
      if (!signal?.aborted && status !== undefined && statuses.includes(status)) return null;
      throw this.fail(err, ctx, signal);
    }
  }

  /** An aborted call surfaces the caller's abort reason, not a Docker error. */
  private fail(err: unknown, ctx: DockerErrorContext, signal: AbortSignal | undefined): unknown {
    if (signal?.aborted) return signal.reason;
    return classifyDockerError(err, ctx);
  }
}

/** A pause that ends early with the caller's abort reason (timers/promises would give its own AbortError). */
async function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await delay(ms, undefined, signal ? { signal } : {});
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw err;
  }
}

function labelFilter(labels: Labels): string[] {
  const entries = Object.entries(labels);
  // An empty filter matches every object on the daemon; cleanup by label must never see that.
  if (entries.length === 0) throw new BottleError('INTERNAL', 'a label query needs at least one label');
  // An empty value asks for the label's presence, whatever its value (cleanup: any identity).
  return entries.map(([key, value]) => (value === '' ? key : `${key}=${value}`));
}

function hasStopped(info: Docker.ContainerInspectInfo): boolean {
  const status = info.State.Status;
  return status === 'exited' || status === 'dead' || status === 'removing';
}

function quoteLines(lines: string[]): string {
  return lines.length === 0 ? '; it logged nothing' : `; its last log lines:\n  ${lines.join('\n  ')}`;
}

function assertSameRun(spec: ContainerSpec, existing: Docker.ContainerInspectInfo): void {
  const wanted = spec.labels[LABEL.run];
  const found = existing.Config.Labels?.[LABEL.run];
  if (wanted !== undefined && found === wanted) return;
  throw new BottleError(
    'NAME_CONFLICT',
    `container name ${spec.name} is taken by a container that is not part of this run (${found === undefined ? 'no run label' : `run ${found}`})`,
    HINTS.nameConflict(spec.name),
  );
}

/**
 * Networks and volumes outlive a run, so they are matched on the bottle's identity (or, for
 * objects without one, on every label but the run id), never adopted from a stranger.
 */
function assertSameIdentity(kind: 'network' | 'volume', name: string, found: Labels, wanted: Labels): void {
  const keys = wanted[LABEL.identity] !== undefined ? [LABEL.identity] : Object.keys(wanted).filter((key) => key !== LABEL.run);
  if (keys.every((key) => found[key] === wanted[key])) return;
  throw new BottleError(
    'NAME_CONFLICT',
    `${kind} ${name} exists but belongs to ${found[LABEL.identity] === undefined ? 'something other than bot-bottle' : `bottle ${found[LABEL.identity]}`}`,
    kind === 'network' ? `Run \`bottle cleanup\`, or \`docker network rm ${name}\` if it is not needed.` : `Run \`bottle cleanup\`, or \`docker volume rm ${name}\` if it is not needed.`,
  );
}

/** An existing network is adopted only when it is ours and isolates the way the spec says. */
function adoptableNetwork(existing: Docker.NetworkInspectInfo, spec: NetworkSpec): string {
  assertSameIdentity('network', spec.name, existing.Labels ?? {}, spec.labels);
  // A non-internal network under an internal network's name would give the agent a route out.
  if (Boolean(existing.Internal) !== spec.internal) {
    throw new BottleError(
      'NAME_CONFLICT',
      `network ${spec.name} exists but is ${existing.Internal ? 'internal' : 'not internal'}, and this bottle needs it ${spec.internal ? 'internal' : 'with a route out'}`,
      `Run \`bottle cleanup\`, or \`docker network rm ${spec.name}\`, then run the bottle again.`,
    );
  }
  if (spec.internal && existing.Options?.[INHIBIT_IPV4] !== 'true') {
    throw new BottleError(
      'NAME_CONFLICT',
      `network ${spec.name} exists but gives the host an address on it, so a bottle could reach the host's services`,
      `Run \`bottle cleanup\`, or \`docker network rm ${spec.name}\`, then run the bottle again.`,
    );
  }
  return existing.Id;
}
