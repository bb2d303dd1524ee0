import { describe, expect, it } from 'vitest';
import { replayFile } from '../../../engine/replay.js';
import { RunHost } from '../../../engine/host.js';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { EventLog } from '../../../store/event-log.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir, eventsFile } from '../../../store/paths.js';
import { fakeContext, fakeHostDeps, testInput, testManifest, worldFile, until } from '../../support/engine.js';

describe('resume from a snapshot record', () => {
  it('reads only the tail, keeps attempt keys unique and replays', async () => {
    const ctx = fakeContext();
    const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true }));
    const file = eventsFile(ctx.home, input.identity, input.runId);
    const dir = commandsDir(ctx.home, input.identity, input.runId);
    let state = '';
    const deps = { ...(await fakeHostDeps(ctx, { onState: (s) => (state = s) })), snapshotEvery: 5 };
    const first = RunHost.start(deps, input);
    await until(() => state === 'running', 'running');
    for (let i = 1; i <= 3; i++) {
      postCommand(dir, { id: `p${i}`, type: 'propose', proposal: { id: `prop-${i}`, kind: 'allowlist', reason: 'r', change: { hosts: ['x.test'] } } });
      await until(() => state === 'capabilityReview', 'review');
      postCommand(dir, { id: `a${i}`, type: 'approve', proposal: `prop-${i}`, by: 't' });
      await until(() => state === 'running', 'running again');
    }
    for (let i = 0; i < 40; i++) first.send({ type: 'agent.output', bytes: 10 });
    // The process "dies": nothing more is recorded, the lock is given up.
    first.detach();

    const tail = EventLog.openTail(file, { clock: { now: () => Date.now() } });
    expect(tail.records()[0]?.kind).toBe('snapshot');
    expect(tail.records().length).toBeLessThan(EventLog.read(file).length / 4);
    expect(tail.first?.kind).toBe('run.started');
    expect(tail.lastSeq).toBe(EventLog.read(file).length);

    const resumed = RunHost.resume(deps, input.identity, input.runId);
    postCommand(dir, { id: 'p4', type: 'propose', proposal: { id: 'prop-4', kind: 'allowlist', reason: 'r', change: { hosts: ['y.test'] } } });
    await until(() => state === 'capabilityReview', 'review after resume');
    postCommand(dir, { id: 'a4', type: 'approve', proposal: 'prop-4', by: 't' });
    await until(() => state === 'running', 'running after approval');
    postCommand(dir, { id: 's1', type: 'stop' });
    expect((await resumed.done).state).toBe('done');

    // Four approvals, four allowlist updates of the egress sidecar (none lost, none repeated),
    // and one more on resume: the new owner puts back the allowlist in force from the context.
    const puts = FakeRuntime.read(worldFile(ctx)).ops.filter((o) => o === 'putFiles bottle-coder-egress');
    expect(puts).toHaveLength(5);
    const records = EventLog.read(file);
    const keys = records.filter((r) => r.kind === 'effect.intent' && r.step === 'applyProposal').map((r) => (r.kind === 'effect.intent' ? r.key : ''));
    expect(new Set(keys).size).toBe(4);
    const report = replayFile(file);
    expect(report.problem).toBeNull();
    expect(records.filter((r) => r.kind === 'snapshot').length).toBeGreaterThan(3);
  });
});
