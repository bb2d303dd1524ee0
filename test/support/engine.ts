import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateManifest, type Manifest } from '../../config/manifest.js';
import { RunHost } from '../../engine/host.js';
import { openBackend } from '../../engine/backend.js';
import { MachineEventRelay, StoreProposalBoard, stepDeps } from '../../engine/adapters.js';
import type { EngineContext } from '../../engine/context.js';
import type { Snapshot } from '../../engine/fold.js';
import { bottleIdentity } from '../../machines/names.js';
import { createSteps } from '../../engine/steps/index.js';
import { FakeRuntime, type FakeFailure } from '../../effects/fakes/fake-runtime.js';
import { FakeCapabilities, FakeImages } from '../../effects/fakes/fake-images.js';
import type { BottleInput } from '../../machines/bottle.machine.js';

/** A manifest with one bottle and one script agent, for engine tests on the fake backend. */
export function testManifest(extra: { agentCommand?: string[]; supervise?: boolean; promptFile?: string } = {}): Manifest {
  const result = validateManifest({
    version: 1,
    bottles: { box: { egress: { allow: ['allowed.test'] }, supervise: extra.supervise ?? false, env: { LEVEL: { value: 'debug' } } } },
    agents: { coder: { bottle: 'box', ...(extra.promptFile ? { prompt_file: extra.promptFile } : { prompt: 'do the thing' }), command: extra.agentCommand ?? ['fake-agent', '--exit', '0', '--ms', '20'] } },
  });
  if (!result.ok) throw new Error(JSON.stringify(result.issues));
  return result.manifest;
}

export function fakeContext(env: Record<string, string> = {}): EngineContext {
  const home = mkdtempSync(join(tmpdir(), 'bottle-test-'));
  return { env: { BOTTLE_BACKEND: 'fake', BOTTLE_HOME: home, ...env }, cwd: home, homeDir: home, home };
}

export function testInput(ctx: EngineContext, manifest: Manifest, runId = `r${Date.now().toString(36)}`): BottleInput {
  return {
    runId,
    identity: bottleIdentity('coder', null),
    manifest,
    manifestDir: ctx.home,
    homeDir: ctx.homeDir,
    home: ctx.home,
    agent: 'coder',
    cwd: null,
    overrides: {},
    images: { agent: 'bot-bottle/agent:fake', sidecar: 'bot-bottle/sidecar:fake' },
  };
}

export const worldFile = (ctx: EngineContext) => join(ctx.home, 'fake-world.json');

export interface FakeRunOpts {
  onState?: (s: string) => void;
  fail?: FakeFailure[];
  imagesFail?: boolean;
  applyFail?: string[];
  /** The steps' progress lines (the CLI prints them on stderr). */
  progress?: (line: string) => void;
}

export async function fakeHostDeps(ctx: EngineContext, opts: FakeRunOpts = {}) {
  const backend = await openBackend(ctx);
  const counts = `${worldFile(ctx)}.counts`;
  if (opts.fail) backend.runtime = new FakeRuntime(worldFile(ctx), { fail: opts.fail });
  if (opts.imagesFail) backend.images = new FakeImages(counts, true);
  if (opts.applyFail) backend.capabilities = new FakeCapabilities(counts, opts.applyFail);
  // Wired as the CLI wires it: the proposal board follows the machine's snapshots.
  const board = new StoreProposalBoard(ctx.home);
  const events = new MachineEventRelay();
  const steps = createSteps(stepDeps(ctx, backend, { progress: opts.progress ?? (() => undefined), board, events }));
  return {
    home: ctx.home,
    steps,
    events,
    clock: { now: () => Date.now() },
    onSnapshot: (snap: Snapshot) => board.follow(snap),
    ...(opts.onState ? { onState: opts.onState } : {}),
  };
}

export async function startFakeRun(ctx: EngineContext, input: BottleInput, opts: FakeRunOpts = {}) {
  return RunHost.start(await fakeHostDeps(ctx, opts), input);
}

/** Polls `check` every 10 ms; a deadline for waiting, not a speed check. */
export async function until(check: () => boolean, what: string) {
  for (let i = 0; i < 3000; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}
