import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { BottleError } from '../../config/errors.js';
import type {
  ContainerInfo,
  ContainerRuntime,
  ContainerSpec,
  FileToPut,
  LabelledObject,
  Labels,
  NetworkSpec,
  Readiness,
  RuntimeInfo,
  VolumeSpec,
} from '../../machines/ports.js';

/**
 * TEST HOOK. An in-memory container runtime whose world lives in a JSON file, so it survives the
 * SIGKILL of the engine process in the fault tests and a resuming process sees the
 * same containers. It counts every create, which is how the tests prove that nothing
 * was created twice.
 *
 * A fake agent is steered by its command: ["fake-agent", "--exit", "3", "--ms", "50"]
 * exits with 3 after 50 ms of running; "--ms forever" runs until stopped.
 */

interface FakeObject {
  id: string;
  labels: Labels;
}
interface FakeContainer extends FakeObject {
  image: string;
  state: ContainerInfo['state'];
  cmd: string[];
  runtime?: string;
  startedAt?: number;
  exitCode?: number;
  networks: string[];
  /** Files put into the container while it lives (path -> content). */
  files?: Record<string, string>;
  /** What the container wrote to stdout (tests put a sidecar's audit lines here). */
  stdout?: string;
  hardened: boolean;
  envNames: string[];
}
export interface FakeWorld {
  containers: Record<string, FakeContainer>;
  networks: Record<string, FakeObject & { internal: boolean }>;
  volumes: Record<string, FakeObject>;
  creates: Record<string, number>;
  ops: string[];
}

export interface FakeFailure {
  op: string;
  name?: string;
  code?: string;
  /** Fail only the first this many matching calls (of this instance). */
  times?: number;
}

/** A stable fake gateway per network name. */
function fakeGateway(name: string): string {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) % 250;
  return `10.${h + 1}.0.1`;
}

export class FakeRuntime implements ContainerRuntime {
  private readonly failed = new Map<FakeFailure, number>();
  constructor(
    private readonly file: string,
    private readonly opts: { runtimes?: string[]; fail?: FakeFailure[]; now?: () => number } = {},
  ) {
    mkdirSync(dirname(file), { recursive: true });
    if (!existsSync(file)) this.save({ containers: {}, networks: {}, volumes: {}, creates: {}, ops: [] });
  }

  static read(file: string): FakeWorld {
    return JSON.parse(readFileSync(file, 'utf8')) as FakeWorld;
  }

  world(): FakeWorld {
    return FakeRuntime.read(this.file);
  }

  private save(w: FakeWorld) {
    const tmp = `${this.file}.${randomBytes(4).toString('hex')}.tmp`;
    writeFileSync(tmp, JSON.stringify(w));
    renameSync(tmp, this.file);
  }

  private mutate<T>(op: string, name: string, fn: (w: FakeWorld) => T): T {
    const fail = this.opts.fail?.find((f) => f.op === op && (f.name === undefined || f.name === name) && (f.times === undefined || (this.failed.get(f) ?? 0) < f.times));
    if (fail) this.failed.set(fail, (this.failed.get(fail) ?? 0) + 1);
    if (fail) throw new BottleError((fail.code as 'DOCKER_ERROR') ?? 'DOCKER_ERROR', `fake failure injected into ${op} ${name}`);
    return withWorldLock(this.file, () => {
      const w = this.world();
      const out = fn(w);
      w.ops.push(`${op} ${name}`);
      this.save(w);
      return out;
    });
  }

  private now() {
    return this.opts.now?.() ?? Date.now();
  }

  async info(): Promise<RuntimeInfo> {
    this.mutate('info', '', () => undefined);
    return { runtimes: this.opts.runtimes ?? ['runc'], serverVersion: 'fake' };
  }

  async existingContainers(names: string[]): Promise<string[]> {
    const w = this.world();
    return names.filter((n) => n in w.containers);
  }

  async listLabelled(labels: Labels): Promise<LabelledObject[]> {
    return this.mutate('listLabelled', '', (w) => {
      const match = (l: Labels) => Object.entries(labels).every(([k, v]) => (v === '' ? k in l : l[k] === v));
      const out: LabelledObject[] = [];
      for (const [name, c] of Object.entries(w.containers)) if (match(c.labels)) out.push({ kind: 'container', name, id: c.id, labels: c.labels });
      for (const [name, n] of Object.entries(w.networks)) if (match(n.labels)) out.push({ kind: 'network', name, id: n.id, labels: n.labels });
      for (const [name, v] of Object.entries(w.volumes)) if (match(v.labels)) out.push({ kind: 'volume', name, id: v.id, labels: v.labels });
      return out;
    });
  }

  private countCreate(w: FakeWorld, key: string) {
    w.creates[key] = (w.creates[key] ?? 0) + 1;
  }

  /** A fixed host: the default bridge's gateway and one LAN address (documentation range). */
  async hostAddresses() {
    return ['172.17.0.1', '192.0.2.10'];
  }

  async ensureNetwork(spec: NetworkSpec) {
    return this.mutate('ensureNetwork', spec.name, (w) => {
      const existing = w.networks[spec.name];
      if (existing) return { id: existing.id, created: false, gateway: fakeGateway(spec.name) };
      const id = randomBytes(6).toString('hex');
      w.networks[spec.name] = { id, labels: spec.labels, internal: spec.internal };
      this.countCreate(w, `network:${spec.name}`);
      return { id, created: true, gateway: fakeGateway(spec.name) };
    });
  }

  async ensureVolume(spec: VolumeSpec) {
    return this.mutate('ensureVolume', spec.name, (w) => {
      if (w.volumes[spec.name]) return { created: false };
      w.volumes[spec.name] = { id: spec.name, labels: spec.labels };
      this.countCreate(w, `volume:${spec.name}`);
      return { created: true };
    });
  }

  async ensureContainer(spec: ContainerSpec) {
    return this.mutate('ensureContainer', spec.name, (w) => {
      const existing = w.containers[spec.name];
      if (existing) {
        if (existing.labels['bot-bottle.run'] !== spec.labels['bot-bottle.run']) {
          throw new BottleError('NAME_CONFLICT', `container '${spec.name}' already exists and is not this run's`, `run 'bottle cleanup' or 'docker rm -f ${spec.name}'`);
        }
        return { id: existing.id, created: false };
      }
      for (const n of spec.networks) if (!w.networks[n.name]) throw new BottleError('DOCKER_ERROR', `network ${n.name} not found`);
      const id = randomBytes(6).toString('hex');
      w.containers[spec.name] = {
        id,
        labels: spec.labels,
        image: spec.image,
        state: 'created',
        cmd: spec.cmd ?? [],
        ...(spec.runtime ? { runtime: spec.runtime } : {}),
        networks: spec.networks.map((n) => n.name),
        hardened: spec.hardened,
        envNames: Object.keys(spec.env).sort(),
      };
      this.countCreate(w, `container:${spec.name}`);
      return { id, created: true };
    });
  }

  async startContainer(name: string) {
    this.mutate('startContainer', name, (w) => {
      const c = w.containers[name];
      if (!c) throw new BottleError('DOCKER_ERROR', `no such container: ${name}`);
      if (c.state !== 'running') {
        c.state = 'running';
        c.startedAt = this.now();
      }
    });
  }

  async waitReady(name: string, _readiness: Readiness, _deadlineMs: number) {
    this.mutate('waitReady', name, (w) => {
      if (w.containers[name]?.state !== 'running') throw new BottleError('SIDECAR_UNHEALTHY', `container ${name} is not running`);
    });
  }

  async inspectContainer(name: string): Promise<ContainerInfo | null> {
    const c = this.world().containers[name];
    if (!c) return null;
    return { id: c.id, name, image: c.image, state: c.state, labels: c.labels, ...(c.runtime ? { runtime: c.runtime } : {}) };
  }

  private agentBehaviour(cmd: string[]) {
    const at = (flag: string) => {
      const i = cmd.indexOf(flag);
      return i >= 0 ? cmd[i + 1] : undefined;
    };
    const ms = at('--ms');
    return { exitCode: Number(at('--exit') ?? 0), runMs: ms === 'forever' ? Number.POSITIVE_INFINITY : Number(ms ?? 20) };
  }

  async waitExit(name: string, _opts: unknown, signal?: AbortSignal): Promise<{ exitCode: number }> {
    this.mutate('waitExit', name, () => undefined);
    for (;;) {
      if (signal?.aborted) throw new BottleError('DOCKER_ERROR', 'wait aborted');
      const w = this.world();
      const c = w.containers[name];
      if (!c) throw new BottleError('DOCKER_ERROR', `no such container: ${name}`);
      if (c.state === 'exited') return { exitCode: c.exitCode ?? 0 };
      const b = this.agentBehaviour(c.cmd);
      if (c.state === 'running' && c.startedAt !== undefined && this.now() - c.startedAt >= b.runMs) {
        this.mutate('exit', name, (w2) => {
          const c2 = w2.containers[name]!;
          c2.state = 'exited';
          c2.exitCode = b.exitCode;
        });
        return { exitCode: b.exitCode };
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async stopContainer(name: string) {
    this.mutate('stopContainer', name, (w) => {
      const c = w.containers[name];
      if (c && c.state === 'running') {
        c.state = 'exited';
        c.exitCode = 137;
      }
    });
  }

  async putFiles(name: string, files: FileToPut[]) {
    this.mutate('putFiles', name, (w) => {
      const c = w.containers[name];
      if (!c) throw new BottleError('DOCKER_ERROR', `no such container: ${name}`);
      c.files ??= {};
      for (const f of files) c.files[f.containerPath] = f.content.toString();
    });
  }

  async readArchive(name: string, path: string): Promise<Buffer | null> {
    const files = this.world().containers[name]?.files ?? {};
    const inside = Object.entries(files).filter(([p]) => p === path || p.startsWith(`${path}/`));
    return inside.length === 0 ? null : Buffer.from(JSON.stringify({ path, files: Object.fromEntries(inside) }));
  }

  /** The fake's "tar" is the JSON readArchive made; the files come back under `dir`. */
  async writeArchive(name: string, dir: string, tar: Buffer) {
    const { path, files } = JSON.parse(tar.toString()) as { path: string; files: Record<string, string> };
    const parent = path.slice(0, path.lastIndexOf('/')) || '/';
    this.mutate('writeArchive', name, (w) => {
      const c = w.containers[name];
      if (!c) throw new BottleError('DOCKER_ERROR', `no such container: ${name}`);
      c.files ??= {};
      for (const [p, content] of Object.entries(files)) c.files[`${dir.replace(/\/$/, '')}${p.slice(parent.length)}`] = content;
    });
  }

  async readStdout(name: string): Promise<string> {
    return this.world().containers[name]?.stdout ?? '';
  }

  async removeContainer(name: string) {
    this.mutate('removeContainer', name, (w) => {
      delete w.containers[name];
    });
  }

  async removeNetwork(name: string) {
    this.mutate('removeNetwork', name, (w) => {
      for (const c of Object.values(w.containers)) {
        if (c.networks.includes(name)) throw new BottleError('DOCKER_ERROR', `network ${name} has active endpoints`);
      }
      delete w.networks[name];
    });
  }

  async removeVolume(name: string) {
    this.mutate('removeVolume', name, (w) => {
      delete w.volumes[name];
    });
  }
}

/** A lock holder killed (the fault tests SIGKILL owners) leaves its lock: past this age it is stale. */
const STALE_LOCK_MS = 2000;
const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * The world file is changed by several processes at once (the run's owner, the CLI, the test):
 * each change is a read, an edit and a rename, so without this two of them could each write
 * their own edit over the other's. A lock directory (mkdir is atomic) makes changes one at a time.
 */
function withWorldLock<T>(file: string, fn: () => T): T {
  const lock = `${file}.lock`;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      try {
        if (Date.now() - statSync(lock).mtimeMs > STALE_LOCK_MS) rmdirSync(lock);
      } catch (gone) {
        // Released (or taken over) meanwhile: try again.
        if ((gone as NodeJS.ErrnoException).code !== 'ENOENT') throw gone;
      }
      Atomics.wait(pause, 0, 0, 1);
    }
  }
  try {
    return fn();
  } finally {
    rmdirSync(lock);
  }
}
