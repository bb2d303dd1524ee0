import { realpath, stat } from 'node:fs/promises';
import { basename, resolve, sep } from 'node:path';
import type Docker from 'dockerode';
import { BottleError } from '../../config/errors.js';
import { type ContainerSpec, LABEL } from '../../machines/ports.js';

export const DEFAULT_PIDS_LIMIT = 512;
export const DEFAULT_MEMORY_BYTES = 2 * 1024 ** 3;

/** Where Docker daemons put their API socket, besides the one this client talks to. */
const WELL_KNOWN_SOCKETS = ['/var/run/docker.sock', '/run/docker.sock', '/run/containerd/containerd.sock', '/var/run/containerd/containerd.sock'];

/**
 * The body of `POST /containers/create`. Env values travel only here (the request body),
 * never on a command line and never in the query string.
 */
export function createBody(spec: ContainerSpec, env: string[]): Docker.ContainerCreateOptions {
  const [primary] = spec.networks;
  const hostConfig: Docker.HostConfig = {
    // No network at all rather than Docker's default bridge, which routes to the world.
    NetworkMode: spec.networkMode ? `container:${spec.networkMode.container}` : (primary?.name ?? 'none'),
    Mounts: spec.mounts.map((m) => ({ Type: m.type, Source: m.source, Target: m.target, ReadOnly: m.readOnly })),
    Privileged: false,
    ...(spec.runtime ? { Runtime: spec.runtime } : {}),
    ...(spec.extraHosts?.length ? { ExtraHosts: spec.extraHosts } : {}),
    ...(spec.dns?.length ? { Dns: spec.dns } : {}),
    ...(spec.dnsOptions?.length ? { DnsOptions: spec.dnsOptions } : {}),
    ...(spec.cpus !== undefined ? { NanoCpus: Math.round(spec.cpus * 1e9) } : {}),
    ...(spec.tmpfs && Object.keys(spec.tmpfs).length > 0 ? { Tmpfs: tmpfsOptions(spec.tmpfs) } : {}),
    ...(spec.rootBytes !== undefined ? { StorageOpt: { size: String(spec.rootBytes) } } : {}),
    // Docker keeps a container's output in these files; rotated, so a flood cannot fill the host.
    ...(spec.log ? { LogConfig: { Type: 'json-file', Config: { 'max-size': String(spec.log.maxBytes), 'max-file': String(spec.log.files) } } } : {}),
  };
  if (spec.hardened) {
    hostConfig.CapDrop = ['ALL'];
    if (spec.capAdd?.length) hostConfig.CapAdd = spec.capAdd;
    hostConfig.SecurityOpt = ['no-new-privileges'];
    hostConfig.PidsLimit = spec.pidsLimit ?? DEFAULT_PIDS_LIMIT;
    hostConfig.Memory = spec.memoryBytes ?? DEFAULT_MEMORY_BYTES;
  } else {
    if (spec.pidsLimit !== undefined) hostConfig.PidsLimit = spec.pidsLimit;
    if (spec.memoryBytes !== undefined) hostConfig.Memory = spec.memoryBytes;
  }
  return {
    Image: spec.image,
    Labels: { ...spec.labels, [LABEL.role]: spec.role },
    Env: env,
    ...(spec.cmd ? { Cmd: spec.cmd } : {}),
    ...(spec.entrypoint ? { Entrypoint: spec.entrypoint } : {}),
    ...(spec.user ? { User: spec.user } : {}),
    ...(spec.workingDir ? { WorkingDir: spec.workingDir } : {}),
    Tty: spec.tty,
    OpenStdin: spec.openStdin,
    // StdinOnce would close the agent's stdin when one attacher goes away, so a CLI that
    // died would leave an agent that can never be re-attached.
    StdinOnce: false,
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    HostConfig: hostConfig,
    ...(primary && !spec.networkMode ? { NetworkingConfig: { EndpointsConfig: { [primary.name]: { Aliases: primary.aliases } } } } : {}),
  };
}

/** `{"/tmp": 512 MiB}` → `{"/tmp": "rw,nosuid,nodev,size=536870912,mode=1777"}`. */
export function tmpfsOptions(tmpfs: Record<string, number>): Record<string, string> {
  return Object.fromEntries(Object.entries(tmpfs).map(([target, bytes]) => [target, `rw,nosuid,nodev,size=${bytes},mode=1777`]));
}

/** The local driver's options for a tmpfs volume of `bytes`: the kernel refuses a write past it (ENOSPC). */
export function tmpfsVolumeOptions(bytes: number, owner: { uid?: number; gid?: number }): Record<string, string> {
  const o = [`size=${bytes}`, 'mode=0755', ...(owner.uid !== undefined ? [`uid=${owner.uid}`] : []), ...(owner.gid !== undefined ? [`gid=${owner.gid}`] : [])];
  return { type: 'tmpfs', device: 'tmpfs', o: o.join(',') };
}

/**
 * Refuses any bind mount that would hand the container a container-engine socket: the socket
 * itself (by name, by target of a symlink, or any unix socket at all) or a directory above
 * one (`/var/run`, `/run`, `/`). Whoever holds the socket controls the host.
 */
export async function assertNoEngineSocket(spec: ContainerSpec, daemonSocket: string | undefined): Promise<void> {
  const sockets = [...WELL_KNOWN_SOCKETS, ...(daemonSocket ? [daemonSocket] : [])];
  const socketPaths = new Set<string>();
  for (const socket of sockets) {
    socketPaths.add(resolve(socket));
    const real = await realpathOrNull(socket);
    if (real) socketPaths.add(real);
  }
  for (const mount of spec.mounts) {
    if (mount.type !== 'bind') continue;
    const candidates = [resolve(mount.source)];
    const real = await realpathOrNull(mount.source);
    if (real) candidates.push(real);
    for (const path of candidates) {
      const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return null;
        throw err;
      });
      const isSocketName = /(^|[.-])(docker|containerd|podman)\.sock$/.test(basename(path));
      const aboveSocket = [...socketPaths].some((socket) => socket === path || socket.startsWith(path === sep ? sep : path + sep));
      if (isSocketName || aboveSocket || info?.isSocket()) {
        throw new BottleError(
          'INTERNAL',
          `refusing to mount ${mount.source} into container ${spec.name}: it is or contains a container-engine socket, which would give the container control of the host`,
          'Remove this mount; bottles never get the Docker socket.',
        );
      }
    }
  }
}

async function realpathOrNull(path: string): Promise<string | null> {
  try {
    return await realpath(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EACCES') return null;
    throw err;
  }
}
