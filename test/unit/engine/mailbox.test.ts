import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { RunHost } from '../../../engine/host.js';
import { foldLog } from '../../../engine/fold.js';
import { replayFile } from '../../../engine/replay.js';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { EventLog } from '../../../store/event-log.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir, eventsFile } from '../../../store/paths.js';
import { fakeContext, fakeHostDeps, startFakeRun, testInput, testManifest, worldFile, until } from '../../support/engine.js';

describe('commands through the mailbox', () => {
  it('approve, deny and stop are applied exactly once, also when sent twice', async () => {
    const ctx = fakeContext();
    const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true }));
    const states: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s) });
    const dir = commandsDir(ctx.home, input.identity, input.runId);
    const file = eventsFile(ctx.home, input.identity, input.runId);
    const folded = () => foldLog(EventLog.read(file), file, { fromSnapshot: false }).snapshot;
    const proposal = (id: string) => folded().context.proposals.find((p) => p.id === id);

    await until(() => states.includes('running'), 'running');
    const change = { hosts: ['later.test'] };
    postCommand(dir, { id: 'p1', type: 'propose', proposal: { id: 'prop-1', kind: 'allowlist', reason: 'need it', change } });
    postCommand(dir, { id: 'p2', type: 'propose', proposal: { id: 'prop-2', kind: 'allowlist', reason: 'also', change } });
    await until(() => proposal('prop-2')?.status === 'pending', 'two pending proposals');
    expect(states).toContain('capabilityReview');

    // The same command delivered twice, and a second approval under another id.
    postCommand(dir, { id: 'a1', type: 'approve', proposal: 'prop-1', by: 'tester' });
    postCommand(dir, { id: 'a1', type: 'approve', proposal: 'prop-1', by: 'tester' });
    postCommand(dir, { id: 'a2', type: 'approve', proposal: 'prop-1', by: 'tester' });
    await until(() => proposal('prop-1')?.status === 'approved', 'prop-1 approved');
    // Applied: the running egress sidecar got the new allowlist, once.
    const egress = FakeRuntime.read(worldFile(ctx)).containers['bottle-coder-egress'];
    expect(egress?.files?.['/run/bottle/egress/allowlist']).toBe('allowed.test\nlater.test\n');
    postCommand(dir, { id: 'd1', type: 'deny', proposal: 'prop-2', by: 'tester', reason: 'no' });
    postCommand(dir, { id: 'd1', type: 'deny', proposal: 'prop-2', by: 'tester', reason: 'no' });
    postCommand(dir, { id: 'd2', type: 'approve', proposal: 'prop-2', by: 'tester' });
    await until(() => proposal('prop-2')?.status === 'denied', 'prop-2 denied');
    await until(() => states[states.length - 1] === 'running', 'back to running');
    expect(proposal('prop-2')?.decision?.reason).toBe('no');

    postCommand(dir, { id: 's1', type: 'stop' });
    postCommand(dir, { id: 's1', type: 'stop' });
    postCommand(dir, { id: 's2', type: 'stop' });
    const result = await host.done;
    expect(result.state).toBe('done');

    const puts = FakeRuntime.read(worldFile(ctx)).ops.filter((o) => o === 'putFiles bottle-coder-egress');
    expect(puts).toHaveLength(1);
    const records = EventLog.read(file);
    const commandIds = records.filter((r) => r.kind === 'command').map((r) => (r.kind === 'command' ? r.id : ''));
    expect(commandIds.sort()).toEqual(['a1', 'a2', 'd1', 'd2', 'p1', 'p2', 's1', 's2']);
    expect(records.filter((r) => r.kind === 'effect.intent' && r.step === 'teardown')).toHaveLength(1);
    expect(FakeRuntime.read(worldFile(ctx)).containers).toEqual({});
    expect(replayFile(file).problem).toBeNull();
  });

  it('a failed apply marks the proposal failed and leaves the bottle running', async () => {
    const ctx = fakeContext();
    const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true }));
    const states: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s), applyFail: ['dockerfile'] });
    const dir = commandsDir(ctx.home, input.identity, input.runId);
    const file = eventsFile(ctx.home, input.identity, input.runId);
    await until(() => states.includes('running'), 'running');
    postCommand(dir, { id: 'p1', type: 'propose', proposal: { id: 'df-1', kind: 'dockerfile', reason: 'jq', change: { dockerfile: 'FROM x' } } });
    await until(() => states.includes('capabilityReview'), 'review');
    postCommand(dir, { id: 'a1', type: 'approve', proposal: 'df-1', by: 'tester' });
    await until(() => foldLog(EventLog.read(file), file, { fromSnapshot: false }).snapshot.context.proposals[0]?.status === 'failed', 'failed');
    await until(() => states[states.length - 1] === 'running', 'running again');
    postCommand(dir, { id: 's1', type: 'stop' });
    expect((await host.done).state).toBe('done');
  });

  it('a command file that is not one of the commands is quarantined, reported, and never reaches the log or the machine', async () => {
    const ctx = fakeContext();
    const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true }));
    const states: string[] = [];
    const reports: string[] = [];
    const host = RunHost.start({ ...(await fakeHostDeps(ctx, { onState: (s) => states.push(s) })), report: (line) => reports.push(line) }, input);
    const dir = commandsDir(ctx.home, input.identity, input.runId);
    const file = eventsFile(ctx.home, input.identity, input.runId);
    await until(() => states.includes('running'), 'running');
    postCommand(dir, { id: 'p1', type: 'propose', proposal: { id: 'prop-1', kind: 'allowlist', reason: 'need it', change: { hosts: ['later.test'] } } });
    await until(() => foldLog(EventLog.read(file), file, { fromSnapshot: false }).snapshot.context.proposals.length === 1, 'proposal');
    // The envelope is fine (an id and a type), the command is not: an approve without a proposal,
    // an unknown type, and an approve with a key no command has.
    postCommand(dir, { id: 'bad1', type: 'approve', by: 'tester' });
    postCommand(dir, { id: 'bad2', type: 'launch-missiles' });
    postCommand(dir, { id: 'bad3', type: 'approve', proposal: 'prop-1', by: 'tester', force: true });
    await until(() => reports.length === 3, 'three reports');
    expect(reports.join('\n')).toMatch(/bad1\.json is not a command .*proposal/);
    const left = readdirSync(dir);
    expect(left.filter((n) => n.endsWith('.malformed')).map((n) => n.replace(/^\d+-/, '')).sort()).toEqual(['bad1.json.malformed', 'bad2.json.malformed', 'bad3.json.malformed']);
    const records = EventLog.read(file);
    const text = JSON.stringify(records);
    for (const id of ['bad1', 'bad2', 'bad3']) expect(text).not.toContain(id);
    expect(records.filter((r) => r.kind === 'event' && r.event.type === 'proposal.approve')).toHaveLength(0);
    const folded = foldLog(records, file, { fromSnapshot: false }).snapshot;
    expect(folded.context.proposals[0]?.status).toBe('pending');
    postCommand(dir, { id: 's1', type: 'stop' });
    expect((await host.done).state).toBe('done');
    expect(replayFile(file).problem).toBeNull();
  });
});
