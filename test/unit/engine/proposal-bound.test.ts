import { renameSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { foldLog } from '../../../engine/fold.js';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { EventLog } from '../../../store/event-log.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir, eventsFile } from '../../../store/paths.js';
import { fakeContext, startFakeRun, testInput, testManifest, until, worldFile } from '../../support/engine.js';

/**
 * The host does not trust the supervise sidecar to hold the pending bound (the sidecar shares
 * the bottle with the agent): a proposal line printed while the bound is reached is not queued.
 */
const SUPERVISE = 'bottle-coder-supervise';

function sidecarPrints(world: string, id: string) {
  const w = FakeRuntime.read(world);
  const c = w.containers[SUPERVISE]!;
  const rec = { source: 'supervise', type: 'proposal', at: new Date().toISOString(), proposal: { id, kind: 'allowlist', reason: 'r', change: { hosts: [`${id}.test`] } } };
  c.stdout = `${c.stdout ?? ''}${JSON.stringify(rec)}\n`;
  writeFileSync(`${world}.t`, JSON.stringify(w));
  renameSync(`${world}.t`, world);
}

describe('the pending bound, host side', () => {
  it('queues no more than resources.proposals.pending, whatever the sidecar prints; a decision makes room', async () => {
    const ctx = fakeContext();
    const manifest = testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true });
    manifest.bottles.box!.resources = { proposals: { pending: 2 } };
    const input = testInput(ctx, manifest);
    const states: string[] = [];
    const progress: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s), progress: (l) => progress.push(l) });
    const world = worldFile(ctx);
    const file = eventsFile(ctx.home, input.identity, input.runId);
    const ids = () => foldLog(EventLog.read(file), file, { fromSnapshot: false }).snapshot.context.proposals.map((p) => `${p.id}:${p.status}`);
    await until(() => states.includes('running'), 'running');

    for (const id of ['pbound00001', 'pbound00002', 'pbound00003']) sidecarPrints(world, id);
    await until(() => progress.some((l) => l.includes('pbound00003') && l.includes('not queued')), 'the third refused');
    await until(() => ids().length === 2, 'two queued');
    expect(ids()).toEqual(['pbound00001:pending', 'pbound00002:pending']);

    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 'd1', type: 'deny', proposal: 'pbound00001', by: 'tester', reason: 'no' });
    await until(() => ids().includes('pbound00001:denied'), 'the denial');
    sidecarPrints(world, 'pbound00004');
    await until(() => ids().includes('pbound00004:pending'), 'the fourth queued once there is room');
    // The refused one stays refused: the sidecar said pending to the agent, the host never queued it.
    expect(ids().some((s) => s.startsWith('pbound00003'))).toBe(false);
    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 's1', type: 'stop' });
    expect((await host.done).state).toBe('done');
  });
});
