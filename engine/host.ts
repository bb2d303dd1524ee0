import { setMaxListeners } from 'node:events';
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { createActor, fromPromise, type AnyActorRef } from 'xstate';
import { BottleError, toErrorData, type ErrorData } from '../config/errors.js';
import {
  bottleMachine,
  MACHINE_VERSION,
  STEP_IDS,
  stateName,
  type BottleEvent,
  type BottleInput,
  type StepId,
} from '../machines/bottle.machine.js';
import type { Clock } from '../machines/ports.js';
import type { StepFn } from './steps/index.js';
import { EventLog, effectKey } from '../store/event-log.js';
import { acquireRunLock, type RunLock } from '../store/lock.js';
import { ackCommand, pendingCommands, quarantineCommand, watchMailbox } from '../store/mailbox.js';
import { commandsDir, eventsFile, lockFile, runDir } from '../store/paths.js';
import type { LogRecord, NewRecord } from '../store/records.js';
import { writeStateDoc } from '../store/state-doc.js';
import { foldLog, type Snapshot } from './fold.js';
import { crashIfAsked, type FaultPoint } from './test-hooks/failpoints.js';
import { MailboxCommandSchema, toMachineEvent } from '../machines/commands.js';

/**
 * The run host: the single owner of one run. It keeps the log written ahead of the
 * machine (every event the root receives is appended, fsynced, before it is
 * processed), journals every effect (intent, then completed or failed, keyed
 * runId:step:attempt, so a recorded completion is never run again), drains the
 * mailbox, and writes the bottle's state document. Start and resume differ only in
 * where the snapshot comes from.
 */

export interface HostDeps {
  home: string;
  steps: Record<StepId, StepFn>;
  clock: Clock;
  pid?: number;
  /** Test hook: the fault tests' kill switch (engine/test-hooks/failpoints.ts). */
  fault?: FaultPoint;
  /** Called on every change of the CONTRACT state name. */
  onState?: (state: string, snapshot: Snapshot) => void;
  /** Called with every snapshot of the machine (the proposal board follows the context). */
  onSnapshot?: (snapshot: Snapshot) => void;
  /** Said to the user: problems the run carries on through (a malformed command file). */
  report?: (line: string) => void;
  /** A snapshot record every this many events (resume folds only the tail). */
  snapshotEvery?: number;
  /** Bound to this host's send() when the machine starts: the steps' way to send it events. */
  events?: { bind(send: (event: BottleEvent) => boolean): void };
}

export interface RunResult {
  identity: string;
  runId: string;
  state: string;
  exitCode: number | null;
  error: ErrorData | null;
}

type Journal = Map<string, { completed?: unknown; failed?: ErrorData }>;

export class RunHost {
  readonly identity: string;
  readonly runId: string;
  readonly done: Promise<RunResult>;
  private readonly log: EventLog;
  private readonly journal: Journal = new Map();
  private outcomes = new Map<string, number>();
  private readonly commandIds = new Set<string>();
  /** Events per type in the log as this process has it (the event failpoint counts them: engine/test-hooks). */
  private readonly eventsOfType = new Map<string, number>();
  private eventCount: number;
  private lastSnapshotAt: number;
  private lastState = '';
  private actor: AnyActorRef | null = null;
  private stopWatch: (() => void) | null = null;
  private draining = false;
  private closed = false;
  private resolveDone!: (r: RunResult) => void;
  private rejectDone!: (e: unknown) => void;

  private constructor(
    private readonly deps: HostDeps,
    private readonly input: BottleInput,
    log: EventLog,
    private readonly lock: RunLock,
    eventCount: number,
  ) {
    this.identity = input.identity;
    this.runId = input.runId;
    this.log = log;
    this.eventCount = eventCount;
    this.lastSnapshotAt = eventCount;
    this.done = new Promise((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    for (const r of log.records()) this.index(r);
  }

  /** Starts a new run: takes its lock, writes run.started, starts the machine. */
  static start(deps: HostDeps, input: BottleInput): RunHost {
    mkdirSync(runDir(deps.home, input.identity, input.runId), { recursive: true, mode: 0o700 });
    const lock = acquireRunLock(lockFile(deps.home, input.identity, input.runId), { pid: deps.pid ?? process.pid, host: hostname() });
    const log = EventLog.open(eventsFile(deps.home, input.identity, input.runId), { clock: deps.clock });
    log.append({ kind: 'run.started', runId: input.runId, identity: input.identity, machineVersion: MACHINE_VERSION, input });
    log.append({ kind: 'owner', pid: deps.pid ?? process.pid, host: hostname(), takeover: false });
    const host = new RunHost(deps, input, log, lock, 0);
    host.launch(undefined);
    return host;
  }

  /**
   * Takes over a run whose owner died: folds the log from its last snapshot record and
   * restarts the machine there. The invocation of the current state runs again and
   * reconciles through the journal (a running agent is re-attached, not recreated).
   */
  static resume(deps: HostDeps, identity: string, runId: string): RunHost {
    const file = eventsFile(deps.home, identity, runId);
    const lock = acquireRunLock(lockFile(deps.home, identity, runId), { pid: deps.pid ?? process.pid, host: hostname() });
    try {
      // Only the tail from the last snapshot record is read: resume costs the tail, not the history.
      const log = EventLog.openTail(file, { clock: deps.clock });
      const head = log.first && log.records()[0] !== log.first ? [log.first] : [];
      const folded = foldLog([...head, ...log.records()], file, { fromSnapshot: true });
      if (folded.snapshot.status !== 'active') {
        throw new BottleError('RUN_FINISHED', `run ${runId} of bottle '${identity}' has already ended (${stateName(folded.snapshot.value)})`, `see it with 'bottle status ${identity}' or 'bottle audit ${identity}'`);
      }
      log.append({ kind: 'owner', pid: deps.pid ?? process.pid, host: hostname(), takeover: true });
      const host = new RunHost(deps, folded.input, log, lock, folded.eventCount);
      host.launch(bottleMachine.getPersistedSnapshot(folded.snapshot));
      return host;
    } catch (err) {
      lock.release();
      throw err;
    }
  }

  /**
   * Sends an event through the log (written ahead, as the mailbox's are). False when this
   * process no longer drives the run (detached, handed over) or the run has ended: nothing
   * was recorded.
   */
  send(event: BottleEvent): boolean {
    if (this.closed || !this.actor || this.actor.getSnapshot().status !== 'active') return false;
    this.actor.send(event);
    return true;
  }

  private append(rec: NewRecord): LogRecord | null {
    // After detach() this process no longer owns the run: a late effect must not write.
    if (this.closed) return null;
    const r = this.log.append(rec);
    this.index(r);
    return r;
  }

  /** Keeps the lookups the journal and the mailbox need, so neither rescans the log. */
  private index(r: LogRecord) {
    if (r.kind === 'effect.completed') this.journal.set(r.key, { completed: r.output });
    else if (r.kind === 'effect.failed') {
      this.journal.set(r.key, { failed: r.error });
      if (r.error.code === 'CANCELLED') this.countOutcome(r.key.split(':')[1]!);
    }
    else if (r.kind === 'command') this.commandIds.add(r.id);
    else if (r.kind === 'snapshot' && r.outcomes) this.outcomes = new Map(Object.entries(r.outcomes));
    else if (r.kind === 'event') {
      this.eventsOfType.set(r.event.type, (this.eventsOfType.get(r.event.type) ?? 0) + 1);
      const m = /^xstate\.(?:done|error)\.actor\.(.+)$/.exec(r.event.type);
      if (m) this.countOutcome(m[1]!);
    }
  }

  private countOutcome(step: string) {
    this.outcomes.set(step, (this.outcomes.get(step) ?? 0) + 1);
  }

  /**
   * The journal around one effect. The attempt counts outcomes the machine has already
   * consumed, so after a crash the re-run invocation finds its own key: completed ->
   * the recorded output, failed -> the recorded error, intent only -> run again (every
   * step is idempotent).
   */
  private async journaled(step: StepId, input: unknown, signal: AbortSignal): Promise<unknown> {
    const attempt = (this.outcomes.get(step) ?? 0) + 1;
    const key = effectKey(this.runId, step, attempt);
    const prior = this.journal.get(key);
    if (prior && 'completed' in prior) return prior.completed;
    if (prior?.failed) throw prior.failed;
    // Every Docker call of a step listens on this one signal; that is not a leak.
    setMaxListeners(0, signal);
    this.append({ kind: 'effect.intent', key, step, attempt });
    crashIfAsked(this.deps.fault, 'intent', step, attempt);
    // An invocation the machine cancels by leaving its state gets its outcome at the moment
    // of the abort, not when the step gets round to noticing: by then the run may be over.
    let settled = false;
    const cancelled = { code: 'CANCELLED', message: `${step} was cancelled by a transition` };
    const onAbort = () => {
      if (settled) return;
      settled = true;
      this.append({ kind: 'effect.failed', key, error: cancelled });
    };
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    let output: unknown;
    try {
      output = await this.deps.steps[step](input as never, signal);
    } catch (err) {
      if (settled) throw cancelled;
      settled = true;
      const data = { ...toErrorData(err), ...(err && typeof err === 'object' && !(err instanceof Error) ? err : {}) } as ErrorData;
      this.append({ kind: 'effect.failed', key, error: data });
      crashIfAsked(this.deps.fault, 'completed', step, attempt);
      throw data;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    if (settled) throw cancelled;
    settled = true;
    this.append({ kind: 'effect.completed', key, output: output ?? null });
    crashIfAsked(this.deps.fault, 'completed', step, attempt);
    return output ?? null;
  }

  private launch(snapshot: unknown) {
    const actors = Object.fromEntries(
      STEP_IDS.map((id) => [id, fromPromise(({ input, signal }: { input: unknown; signal: AbortSignal }) => this.journaled(id, input, signal))]),
    );
    const machine = bottleMachine.provide({ actors: actors as never });
    const actor = createActor(machine, {
      input: this.input,
      ...(snapshot ? { snapshot: snapshot as never } : {}),
      inspect: (ev) => {
        // Write-ahead: the inspector sees each event before the root processes it.
        if (ev.type !== '@xstate.event' || ev.actorRef.sessionId !== ev.rootId) return;
        const event = ev.event as { type: string };
        if (event.type === 'xstate.init' || event.type === 'xstate.stop') return;
        this.append({ kind: 'event', event: JSON.parse(JSON.stringify(event)) });
        this.eventCount++;
        if (this.deps.fault?.when === 'event') crashIfAsked(this.deps.fault, 'event', event.type, this.eventsOfType.get(event.type) ?? 0);
      },
    });
    this.actor = actor;
    this.deps.events?.bind((event) => this.send(event));
    actor.subscribe({
      next: (snap) => this.onSnapshot(snap as Snapshot),
      error: (err) => this.finish(err),
      complete: () => this.finish(null),
    });
    actor.start();
    const dir = commandsDir(this.deps.home, this.identity, this.runId);
    this.stopWatch = watchMailbox(dir, () => this.drainMailbox());
    this.drainMailbox();
  }

  private onSnapshot(snap: Snapshot) {
    this.deps.onSnapshot?.(snap);
    const name = stateName(snap.value);
    if (name !== this.lastState) {
      this.lastState = name;
      this.append({ kind: 'state', value: name, status: snap.status });
      writeStateDoc(this.deps.home, {
        identity: this.identity,
        runId: this.runId,
        state: name,
        agentContainer: snap.context.plan?.container ?? null,
        containers: snap.context.created.filter((c) => c.kind === 'container').map((c) => c.name),
        updatedAt: this.deps.clock.now(),
        ...(snap.context.exitCode !== null ? { exitCode: snap.context.exitCode } : {}),
        ...(snap.context.error ? { error: snap.context.error } : {}),
      });
      this.deps.onState?.(name, snap);
    }
    const every = this.deps.snapshotEvery ?? 500;
    if (snap.status === 'active' && this.eventCount - this.lastSnapshotAt >= every && this.actor) {
      this.lastSnapshotAt = this.eventCount;
      this.append({ kind: 'snapshot', snapshot: this.actor.getPersistedSnapshot(), eventCount: this.eventCount, outcomes: Object.fromEntries(this.outcomes) });
    }
  }

  private drainMailbox() {
    if (this.draining || !this.actor) return;
    this.draining = true;
    try {
      const dir = commandsDir(this.deps.home, this.identity, this.runId);
      const pending = pendingCommands(dir, MailboxCommandSchema);
      // A file that is not one of the commands never reaches the log or the machine: it is
      // moved aside (kept for inspection) and said, so nobody waits on it in silence.
      for (const bad of pending.malformed) {
        const to = quarantineCommand(dir, bad.name);
        this.deps.report?.(`mailbox: ${bad.name} is not a command (${bad.reason}); moved aside to ${to}`);
      }
      for (const cmd of pending.commands) {
        // Appended before it is acted on and acknowledged after: a crash in between leaves
        // the file, and the id in the log makes the second delivery a no-op.
        if (!this.commandIds.has(cmd.id)) {
          this.append({ kind: 'command', id: cmd.id, command: cmd });
          const event = toMachineEvent(cmd, this.deps.clock.now());
          if (this.actor.getSnapshot().status === 'active') this.actor.send(event);
        }
        ackCommand(dir, cmd.id);
      }
    } finally {
      this.draining = false;
    }
  }

  private finish(err: unknown) {
    this.stopWatch?.();
    this.stopWatch = null;
    const snap = this.actor?.getSnapshot() as Snapshot | undefined;
    this.lock.release();
    if (err || !snap) {
      this.rejectDone(err ?? new BottleError('INTERNAL', 'the bottle machine stopped without a snapshot'));
      return;
    }
    this.resolveDone({
      identity: this.identity,
      runId: this.runId,
      state: stateName(snap.value),
      exitCode: snap.context.exitCode,
      error: snap.context.error,
    });
  }

  /** Stops the actor without recording anything (process shutdown); the run stays resumable. */
  detach() {
    this.closed = true;
    this.stopWatch?.();
    this.actor?.stop();
    this.lock.release();
  }

  /** Stops driving the run here and makes process `pid` its owner (a detached run's background owner). */
  handOver(pid: number) {
    this.closed = true;
    this.stopWatch?.();
    this.lock.handOver(pid);
    this.actor?.stop();
  }
}
