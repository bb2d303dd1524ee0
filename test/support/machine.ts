import type { Manifest } from '../../config/manifest.js';
import type { BottleInput } from '../../machines/bottle.machine.js';
import type { PlanInput } from '../../machines/plan.js';

/** The machine's input for pure tests of the machine: fixed names, paths and image tags. */
export function machineInput(manifest: Manifest, over: Partial<BottleInput> = {}): BottleInput {
  return {
    runId: 'run1',
    identity: 'coder',
    manifest,
    manifestDir: '/proj',
    homeDir: '/home/u',
    home: '/home/u/.local/state/bot-bottle',
    agent: 'coder',
    cwd: null,
    overrides: {},
    images: { agent: 'bot-bottle/agent:abc', sidecar: 'bot-bottle/sidecar:def' },
    ...over,
  };
}

/** A step's done event as the log records it. */
export const doneEvent = (id: string, output: unknown) => ({ type: `xstate.done.actor.${id}`, output, actorId: id });

/** The same fixed input as planning sees it (the machine's input without the identity). */
export function planInput(manifest: Manifest, over: Partial<PlanInput> = {}): PlanInput {
  const { identity: _identity, ...input } = machineInput(manifest, over);
  return input;
}
