import { BottleError, toErrorData } from '../../config/errors.js';
import type { CreatedResource, StepError } from '../../machines/bottle.machine.js';
import type { BottlePlan } from '../../machines/plan.js';
import type {
  AgentIO,
  AuditSink,
  BottlePaths,
  BuildProgress,
  CapabilityApplier,
  ContainerRuntime,
  HostEnv,
  HostFiles,
  ImageProvider,
  MachineEvents,
  ProposalBoard,
  RunRegistry,
  SecretReader,
  Stager,
} from '../../machines/ports.js';

/**
 * What the steps (Temporal's activities) are built from: the ports, nothing else. Each step
 * is a function of (deps, input, signal); createSteps binds them to one set of deps.
 */
export interface StepDeps {
  runtime: ContainerRuntime;
  audit: AuditSink;
  secrets: SecretReader;
  images: ImageProvider;
  stager: Stager;
  files: HostFiles;
  hostEnv: HostEnv;
  runs: RunRegistry;
  paths: BottlePaths;
  capabilities: CapabilityApplier;
  progress: BuildProgress;
  /** Present when a terminal is attached to this run. */
  io?: AgentIO;
  /** Where proposals from the supervise sidecar go, and the machine's view of them comes from. */
  board?: ProposalBoard;
  /** Facts a step learned while it runs, sent to the machine through the log (canary.learned). */
  events?: MachineEvents;
  /** How long sidecars get to become ready. */
  sidecarDeadlineMs?: number;
}

export type StepFn = (input: never, signal: AbortSignal) => Promise<unknown>;

export interface PlanStepInput {
  plan: BottlePlan;
  runId: string;
}

/** Throws `err` as plain data with what the step made before failing, so teardown removes it. */
export function failWith(err: unknown, created: CreatedResource[]): never {
  const data: StepError = { ...toErrorData(err), created };
  throw data;
}

/** The run's staged files on the host (env-file, prompt, allowlist, the swap marker's folder). */
export function stagedPaths(deps: Pick<StepDeps, 'paths'>, plan: BottlePlan, runId: string) {
  const dir = deps.paths.stageDir(plan.identity, runId);
  return { dir, envFile: `${dir}/agent.env`, promptFile: `${dir}/prompt`, allowlistFile: `${dir}/allowlist` };
}

/** Host values of the env names the manifest forwards; read at the call, never logged. */
export function forwardedEnv(deps: Pick<StepDeps, 'hostEnv'>, plan: BottlePlan): Record<string, string> {
  const forwarded: Record<string, string> = {};
  for (const [name, hostName] of Object.entries(plan.env.forwarded)) {
    const value = deps.hostEnv.get(hostName);
    if (value !== undefined) forwarded[name] = value;
  }
  return forwarded;
}

/** Resolves once `check` says false, polling; rejects when the signal aborts. */
export async function waitWhile(check: () => Promise<boolean>, signal: AbortSignal, everyMs = 200): Promise<void> {
  while (await check()) {
    if (signal.aborted) throw signal.reason;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** How long a step waits for a Docker daemon that stopped answering before it gives up. */
export const DOCKER_RETURN_MS = 5 * 60_000;

export function isUnreachable(err: unknown): boolean {
  return err instanceof BottleError && err.code === 'DOCKER_UNREACHABLE';
}

/** Resolves once the daemon answers again; rethrows DOCKER_UNREACHABLE past the deadline. */
export async function waitForDocker(deps: Pick<StepDeps, 'runtime'>, signal: AbortSignal, deadlineMs = DOCKER_RETURN_MS): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    try {
      await deps.runtime.info(signal);
      return;
    } catch (err) {
      if (signal.aborted || !isUnreachable(err) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}
