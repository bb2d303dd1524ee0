/**
 * The ports: everything the bottle machine needs from the world, declared here and
 * implemented in effects/ (Docker through dockerode, files, clock, ids) or by the
 * in-memory fakes the tests use. Nothing in machines/ imports effects/.
 *
 * Methods are small, keyed by names the caller chose, idempotent (`ensure*` looks up
 * by name/label before creating and adopts what it finds; `remove*` treats "not
 * found" as success), and take an AbortSignal.
 */

/** Roles carried in the `bot-bottle.role` label. */
export type Role = 'agent' | 'egress' | 'cred-proxy' | 'git-gate' | 'supervise' | 'network' | 'volume';

export const LABEL = {
  identity: 'bot-bottle.identity',
  run: 'bot-bottle.run',
  role: 'bot-bottle.role',
  version: 'bot-bottle.version',
  /** The BOTTLE_HOME whose store owns the object: liveness is judged in that store. */
  home: 'bot-bottle.home',
} as const;

export type Labels = Record<string, string>;

export interface NetworkSpec {
  name: string;
  /** internal: true means no gateway, no route out of the network. */
  internal: boolean;
  labels: Labels;
}

export interface VolumeSpec {
  name: string;
  labels: Labels;
  /**
   * A memory-backed (tmpfs) volume of this size: a write past it fails with ENOSPC. Its content
   * lives only while some container has it mounted, so a bottle keeps one mounted for the run.
   */
  sizeBytes?: number;
  /** Owner of the tmpfs root (the agent user), so the agent can write into an empty volume. */
  uid?: number;
  gid?: number;
}

export interface Mount {
  type: 'volume' | 'bind';
  source: string;
  target: string;
  readOnly: boolean;
}

export type Readiness =
  | { kind: 'tcp'; port: number }
  | { kind: 'http'; port: number; path: string }
  | { kind: 'log'; pattern: string }
  | { kind: 'running' };

export interface ContainerSpec {
  name: string;
  image: string;
  role: Role;
  labels: Labels;
  /** Networks to join, with the DNS aliases the container answers to on each. First is primary. */
  networks: { name: string; aliases: string[] }[];
  /** Share another container's network namespace instead (then `networks` is empty). */
  networkMode?: { container: string };
  /** Capabilities added after dropping all (only the one-shot route fixer uses this). */
  capAdd?: string[];
  /** Upstream DNS servers for names Docker's embedded DNS does not know itself. */
  dns?: string[];
  /** resolv.conf options (e.g. timeout:1). */
  dnsOptions?: string[];
  /**
   * Environment as NAME=VALUE through the Docker API (never argv, never a file).
   * Forwarded host values arrive here only inside the adapter call, never in the log.
   */
  env: Record<string, string>;
  /** A staged env-file (mode 0600) of literal values, read by the adapter. */
  envFile?: string;
  cmd?: string[];
  entrypoint?: string[];
  user?: string;
  workingDir?: string;
  runtime?: 'runsc' | 'runc';
  mounts: Mount[];
  /** Files copied into the container before it starts (prompt, sidecar config), by host path. */
  copyIn?: { hostPath: string; containerPath: string; mode: number; uid?: number; gid?: number }[];
  tty: boolean;
  openStdin: boolean;
  /** Drop every capability, no-new-privileges, pids and memory limits. Always set for the agent. */
  hardened: boolean;
  pidsLimit?: number;
  memoryBytes?: number;
  /** CPU quota in cores (NanoCpus = cpus * 1e9). */
  cpus?: number;
  /** tmpfs mounts: target -> size in bytes (mode 1777, nosuid, nodev). */
  tmpfs?: Record<string, number>;
  /** A size for the container's writable layer (storage-opt size; only drivers with quotas take it). */
  rootBytes?: number;
  /** Docker's json-file log of the container's output, rotated: at most files x maxBytes kept. */
  log?: { maxBytes: number; files: number };
  /** Extra /etc/hosts lines (tests give a sidecar a hosts entry). */
  extraHosts?: string[];
}

export interface FileToPut {
  containerPath: string;
  content: string | Buffer;
  mode: number;
  uid?: number;
  gid?: number;
}

export interface ContainerInfo {
  id: string;
  name: string;
  image: string;
  state: 'created' | 'running' | 'exited' | 'dead' | 'paused' | 'restarting' | 'removing';
  labels: Labels;
  runtime?: string;
}

export interface LabelledObject {
  kind: 'container' | 'network' | 'volume';
  name: string;
  id: string;
  labels: Labels;
}

export interface RuntimeInfo {
  /** Runtimes the daemon lists (`docker info`), e.g. ["io.containerd.runc.v2", "runc", "runsc"]. */
  runtimes: string[];
  serverVersion: string;
}

/** Standard streams of an attached agent. */
export interface AgentIO {
  stdin?: NodeJS.ReadableStream;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** When set, the container has a TTY; the adapter resizes it on changes. */
  tty?: { columns: number; rows: number; onResize(cb: (size: { columns: number; rows: number }) => void): () => void };
}

export interface ContainerRuntime {
  info(signal?: AbortSignal): Promise<RuntimeInfo>;
  /** Names of existing containers among `names` (for planning: free names, pinned names). */
  existingContainers(names: string[], signal?: AbortSignal): Promise<string[]>;
  /** Every container, network and volume carrying all of `labels` (an empty value: the label with any value). */
  listLabelled(labels: Labels, signal?: AbortSignal): Promise<LabelledObject[]>;
  /**
   * Every address of the Docker host that a sidecar must never dial: the IPAM gateway of every
   * Docker network it lists (its bridges' host side) and the host's own interface addresses.
   */
  hostAddresses(signal?: AbortSignal): Promise<string[]>;
  /** `gateway`: the network's gateway address, which sidecars must never dial. */
  ensureNetwork(spec: NetworkSpec, signal?: AbortSignal): Promise<{ id: string; created: boolean; gateway?: string }>;
  ensureVolume(spec: VolumeSpec, signal?: AbortSignal): Promise<{ created: boolean }>;
  /** Creates the container, or adopts an existing one of that name carrying the same run label. */
  ensureContainer(spec: ContainerSpec, signal?: AbortSignal): Promise<{ id: string; created: boolean }>;
  /** Starts it; already running is success. */
  startContainer(name: string, signal?: AbortSignal): Promise<void>;
  /** Resolves once the container is ready per `readiness`, rejects with SIDECAR_UNHEALTHY past the deadline. */
  waitReady(name: string, readiness: Readiness, deadlineMs: number, signal?: AbortSignal): Promise<void>;
  inspectContainer(name: string, signal?: AbortSignal): Promise<ContainerInfo | null>;
  /**
   * Attaches (when io is given) and waits for the container to exit; returns its exit code.
   * Output is also appended to `logFile` when given. Safe to call again after a crash: it re-attaches.
   */
  waitExit(name: string, opts: { io?: AgentIO; logFile?: string }, signal?: AbortSignal): Promise<{ exitCode: number }>;
  stopContainer(name: string, timeoutSec: number, signal?: AbortSignal): Promise<void>;
  /** Writes files into a container, running or not (a sidecar's live configuration). */
  putFiles(name: string, files: FileToPut[], signal?: AbortSignal): Promise<void>;
  /** The container's stdout so far ('' when it is gone): a sidecar's audit lines. */
  readStdout(name: string, signal?: AbortSignal): Promise<string>;
  /** A tar of `path` in the container (running or not); null when the path does not exist. */
  readArchive(name: string, path: string, signal?: AbortSignal): Promise<Buffer | null>;
  /** Unpacks a tar from readArchive into the folder `dir` of the container. */
  writeArchive(name: string, dir: string, tar: Buffer, signal?: AbortSignal): Promise<void>;
  removeContainer(name: string, signal?: AbortSignal): Promise<void>;
  removeNetwork(name: string, signal?: AbortSignal): Promise<void>;
  removeVolume(name: string, signal?: AbortSignal): Promise<void>;
}

export interface ImageSpec {
  /** Tag to produce. Content-hash tags make "already built" a lookup. */
  tag: string;
  /** Build context directory on the host, or inline files. */
  context: { dir: string; ignore?: string[] } | { files: Record<string, string | Buffer> };
  dockerfile: string;
  buildArgs?: Record<string, string>;
  labels?: Labels;
}

export type BuildProgress = (line: string) => void

export interface ImageBuilder {
  imageExists(tag: string, signal?: AbortSignal): Promise<boolean>;
  /** Builds when the tag is missing; `built` says whether work was done. */
  ensureImage(spec: ImageSpec, progress: BuildProgress, signal?: AbortSignal): Promise<{ tag: string; built: boolean }>;
}

/** Files staged on the host for one run (env-file, prompt-file, sidecar config), mode 0600. */
export interface Stager {
  /** Writes each file (temp name + rename), mode 0600 unless given, in `dir` (created 0700). */
  stage(dir: string, files: { name: string; content: string | Buffer; mode?: number }[]): Promise<string[]>;
  removeDir(dir: string): Promise<void>;
}

export interface Clock {
  now(): number;
}

export interface Ids {
  runId(): string;
  commandId(): string;
}

/** Reads host values that must never enter the log: forwarded env and secret refs. */
export interface HostEnv {
  get(name: string): string | undefined;
}

/** Makes the images a plan needs exist (content-tagged builds; nothing rebuilt when unchanged). */
export interface ImageProvider {
  ensureForPlan(plan: import('./plan.js').BottlePlan, progress: BuildProgress, signal?: AbortSignal): Promise<{ built: string[] }>;
}

/** Host files the steps read (prompt files, the per-bottle Dockerfile). */
export interface HostFiles {
  exists(path: string): Promise<boolean>;
  readText(path: string): Promise<string>;
  /** The file's bytes; null when it does not exist. */
  readBytes(path: string): Promise<Buffer | null>;
  /** Writes a file whole (temp name + rename), creating its folder; mode 0600 unless given. */
  writeText(path: string, content: string | Buffer, mode?: number): Promise<void>;
  /** Removes a file; a missing one is success. */
  remove(path: string): Promise<void>;
}

/**
 * Whether a run has a live owner (orphan probing and cleanup never touch those). `home` is
 * the object's bot-bottle.home label: one daemon may serve several BOTTLE_HOMEs, and a run
 * is judged in the store that owns it; an unreadable store counts as live.
 */
export interface RunRegistry {
  isLive(home: string | undefined, identity: string, runId: string): Promise<boolean>;
}

/** Where per-bottle and per-run files live on the host (store layout). */
export interface BottlePaths {
  stageDir(identity: string, runId: string): string;
  agentLog(identity: string, runId: string): string;
  perBottleDockerfile(identity: string): string;
  queueDir(identity: string): string;
  /** The agent's session state kept across a recreation of its container. */
  transcriptDir(identity: string): string;
  auditDir(identity: string): string;
}

/** Builds what an approved capability change needs that only a backend can make. */
export interface CapabilityApplier {
  /**
   * Builds the per-bottle image from an approved Dockerfile text (FROM the agent image, with
   * the --cwd layer on top when the plan has one) and returns the image the agent should run.
   * A failed build rejects with BUILD_FAILED and the build's own error; nothing else changes.
   */
  buildBottleImage(
    plan: import('./plan.js').BottlePlan,
    dockerfile: string,
    progress: BuildProgress,
    signal?: AbortSignal,
  ): Promise<{ image: string }>;
}

/** A proposal as the supervise sidecar accepted it (validated there, checked again here). */
export interface IncomingProposal {
  id: string;
  kind: import('./bottle.machine.js').ProposalKind;
  reason: string;
  change: Record<string, unknown>;
}

/**
 * Between the supervise sidecar and the run's owner: proposals go in through the store (a
 * file in bottles/<identity>/queue/ and a command in the run's mailbox, so they survive a
 * crash of the owner), and the machine's view of them comes back out to the sidecar.
 */
export interface ProposalBoard {
  /** Queues a proposal for the run's owner; the same id twice is one proposal. */
  submit(identity: string, runId: string, proposal: IncomingProposal): Promise<void>;
  /**
   * The proposals, the allowlist in force and the token hashes the egress canary learned, as
   * the run's machine has them now; null before it has a plan.
   */
  view(): { proposals: import('./bottle.machine.js').Proposal[]; allowlist: string[]; canaryHashes: string[] } | null;
  /** Calls back when the view's proposals change (a decision, an apply); returns a stop function. */
  onChange?(listener: () => void): () => void;
}

/**
 * How a step tells the run's machine a fact it learned while it runs (the egress canary was
 * given a token's hash): the event goes through the run host, so it is written to the log
 * before the machine folds it, like every other event. It carries hashes, never values.
 */
export interface MachineEvents {
  send(event: import('./bottle.machine.js').BottleEvent): void;
}

/** Where sidecars' audit lines end up on the host (bottles/<identity>/audit/<source>.jsonl). */
export interface AuditSink {
  /** Appends the lines not already there (teardown may run again after a crash). */
  append(identity: string, source: string, lines: string[]): Promise<void>;
}

/**
 * Reads secret refs on the host at the moment a sidecar needs them. Values go from here to
 * the sidecar's files through the Docker API only: never a log record, an env-file or argv.
 */
export interface SecretReader {
  read(ref: { file: string } | { env: string }): string;
  /** Calls back when a file ref's content changes (token rotation); returns a stop function. */
  watch(files: string[], onChange: (file: string) => void): () => void;
}
