import { existsSync, type Stats, unwatchFile, watchFile } from 'node:fs';
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BottleError } from '../config/errors.js';
import { readSecret } from '../config/secrets.js';
import { FsStager, NodeHostFiles, ProcessHostEnv, SystemClock } from '../effects/local.js';
import { type BottleEvent, currentAllowlist, type Proposal } from '../machines/bottle.machine.js';
import type {
  AgentIO,
  AuditSink,
  BottlePaths,
  BuildProgress,
  IncomingProposal,
  MachineEvents,
  ProposalBoard,
  RunRegistry,
  SecretReader,
} from '../machines/ports.js';
import { postCommand } from '../store/mailbox.js';
import type { Snapshot } from './fold.js';
import type { StepDeps } from './steps/index.js';
import { readLockOwner } from '../store/lock.js';
import { auditDir, commandsDir, isSegment, lockFile, logsFile, perBottleDockerfile, queueDir, runDir, runsDir, transcriptDir } from '../store/paths.js';
import type { Backend } from './backend.js';
import type { EngineContext } from './context.js';

export function storePaths(home: string): BottlePaths {
  return {
    stageDir: (identity, runId) => join(runDir(home, identity, runId), 'stage'),
    agentLog: (identity, runId) => logsFile(home, identity, runId),
    perBottleDockerfile: (identity) => perBottleDockerfile(home, identity),
    queueDir: (identity) => queueDir(home, identity),
    transcriptDir: (identity) => transcriptDir(home, identity),
    auditDir: (identity) => auditDir(home, identity),
  };
}

/**
 * A run is live while its lock's owner process is alive, judged in the store that owns it
 * (the object's home label; this store for objects older than that label). A store that
 * exists but cannot be read counts as live: cleanup must never guess in its favour.
 */
export class StoreRunRegistry implements RunRegistry {
  constructor(private readonly home: string) {}
  async isLive(home: string | undefined, identity: string, runId: string): Promise<boolean> {
    const store = home || this.home;
    if (!isSegment(identity) || !isSegment(runId)) return false;
    try {
      if (!existsSync(runsDir(store, identity)) && !existsSync(store)) return false;
      return readLockOwner(lockFile(store, identity, runId))?.alive === true;
    } catch (err) {
      if (err instanceof BottleError && err.code === 'LOG_CORRUPT') return true;
      if ((err as { code?: unknown }).code === 'EACCES') return true;
      throw err;
    }
  }
}

/**
 * bottles/<identity>/audit/<source>.jsonl, appended by the run's owner only. A line already
 * in the file is not written again (teardown after a crash collects the same lines twice).
 */
export class FileAuditSink implements AuditSink {
  constructor(private readonly home: string) {}
  async append(identity: string, source: string, lines: string[]): Promise<void> {
    const dir = auditDir(this.home, identity);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const file = join(dir, `${source}.jsonl`);
    const have = new Set(existsSync(file) ? (await readFile(file, 'utf8')).split('\n') : []);
    const fresh = lines.filter((l) => !have.has(l));
    if (fresh.length > 0) await appendFile(file, fresh.map((l) => `${l}\n`).join(''), { mode: 0o600 });
  }
}

/** Secret refs read on the host (config/secrets.ts); file refs watched for rotation by polling. */
export class HostSecretReader implements SecretReader {
  constructor(private readonly ctx: EngineContext) {}
  read(ref: { file: string } | { env: string }): string {
    return readSecret(ref, { baseDir: '/', env: this.ctx.env, homeDir: this.ctx.homeDir });
  }
  watch(files: string[], onChange: (file: string) => void): () => void {
    const listeners = files.map((file) => {
      const listener = (cur: Stats, prev: Stats) => {
        if (cur.mtimeMs !== prev.mtimeMs || cur.ino !== prev.ino || cur.size !== prev.size) onChange(file);
      };
      watchFile(file, { interval: 500, persistent: false }, listener);
      return () => unwatchFile(file, listener);
    });
    return () => {
      for (const stop of listeners) stop();
    };
  }
}

/**
 * Proposals from the supervise sidecar reach the run's owner through the store: a file in
 * bottles/<identity>/queue/ (kept: the record of what the agent asked for) and a command in
 * the run's mailbox (id derived from the proposal's, so a second delivery is a no-op). The
 * view follows the machine's snapshots in this process.
 */
export class StoreProposalBoard implements ProposalBoard {
  private latest: { proposals: Proposal[]; allowlist: string[]; canaryHashes: string[] } | null = null;
  private readonly listeners = new Set<() => void>();
  constructor(private readonly home: string) {}

  follow(snapshot: Snapshot): void {
    const plan = snapshot.context.plan;
    if (!plan) return;
    const changed = this.latest?.proposals !== snapshot.context.proposals;
    this.latest = {
      proposals: snapshot.context.proposals,
      allowlist: currentAllowlist(plan, snapshot.context.proposals),
      canaryHashes: snapshot.context.canaryHashes ?? [],
    };
    if (changed) for (const listener of this.listeners) listener();
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  view() {
    return this.latest;
  }

  async submit(identity: string, runId: string, proposal: IncomingProposal): Promise<void> {
    const dir = queueDir(this.home, identity);
    await new NodeHostFiles().writeText(join(dir, `${proposal.id}.json`), `${JSON.stringify({ ...proposal, run: runId })}\n`);
    postCommand(commandsDir(this.home, identity, runId), { id: `propose-${proposal.id}`, type: 'propose', proposal });
  }
}

/**
 * The steps' way to send the machine an event: bound to the run host once it exists (the
 * steps are built before it), so the event is written ahead in the log like any other. An
 * event sent while no host is bound (or after this process stopped owning the run) is not
 * delivered, and says so: the caller must not act as if the machine had it.
 */
export class MachineEventRelay implements MachineEvents {
  private target: ((event: BottleEvent) => boolean) | null = null;
  bind(send: (event: BottleEvent) => boolean): void {
    this.target = send;
  }
  send(event: BottleEvent): void {
    if (!this.target?.(event)) {
      throw new BottleError('INTERNAL', `the run's machine did not take the event ${event.type} (this process no longer owns the run)`);
    }
  }
}

export function stepDeps(
  ctx: EngineContext,
  backend: Backend,
  opts: { io?: AgentIO; progress: BuildProgress; board?: ProposalBoard; events?: MachineEvents },
): StepDeps {
  return {
    runtime: backend.runtime,
    audit: new FileAuditSink(ctx.home),
    secrets: new HostSecretReader(ctx),
    images: backend.images,
    stager: new FsStager(),
    files: new NodeHostFiles(),
    hostEnv: new ProcessHostEnv(ctx.env),
    runs: new StoreRunRegistry(ctx.home),
    paths: storePaths(ctx.home),
    capabilities: backend.capabilities,
    progress: opts.progress,
    ...(opts.io ? { io: opts.io } : {}),
    ...(opts.board ? { board: opts.board } : {}),
    ...(opts.events ? { events: opts.events } : {}),
  };
}

export const clock = new SystemClock();
