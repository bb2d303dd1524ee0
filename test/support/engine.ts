import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateManifest, type Manifest } from '../../config/manifest.js';
import { RunHost } from '../../cli/engine/runner.js';
import { openBackend, stepDeps, type CliContext } from '../../cli/engine/wiring.js';
import { bottleIdentity } from '../../machines/names.js';
import { createSteps } from '../../machines/steps.js';
import type { BottleInput } from '../../machines/bottle.machine.js';

/** A manifest with one bottle and one script agent, for engine tests on the fake backend. */
export function testManifest(extra: { agentCommand?: string[]; supervise?: boolean } = {}): Manifest {
  const result = validateManifest({
    version: 1,
    bottles: { box: { egress: { allow: ['allowed.test'] }, supervise: extra.supervise ?? false, env: { LEVEL: { value: 'debug' } } } },
    agents: { coder: { bottle: 'box', prompt: 'do the thing', command: extra.agentCommand ?? ['fake-agent', '--exit', '0', '--ms', '20'] } },
  });
  if (!result.ok) throw new Error(JSON.stringify(result.issues));
  return result.manifest;
}

export function fakeContext(env: Record<string, string> = {}): CliContext {
  const home = mkdtempSync(join(tmpdir(), 'bottle-test-'));
  return { env: { BOTTLE_BACKEND: 'fake', BOTTLE_HOME: home, ...env }, cwd: home, homeDir: home, home };
}

export function testInput(ctx: CliContext, manifest: Manifest, runId = `r${Date.now().toString(36)}`): BottleInput {
  return {
    runId,
    identity: bottleIdentity('coder', null),
    manifest,
    manifestDir: ctx.home,
    agent: 'coder',
    cwd: null,
    overrides: {},
    images: { agent: 'bot-bottle/agent:fake', sidecar: 'bot-bottle/sidecar:fake' },
  };
}

export async function startFakeRun(ctx: CliContext, input: BottleInput, opts: { onState?: (s: string) => void } = {}) {
  const backend = await openBackend(ctx);
  const steps = createSteps(stepDeps(ctx, backend, { progress: () => undefined }));
  return RunHost.start({ home: ctx.home, steps, clock: { now: () => Date.now() }, ...(opts.onState ? { onState: opts.onState } : {}) }, input);
}
