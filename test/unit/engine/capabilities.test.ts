import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { foldLog } from '../../../engine/fold.js';
import { replayFile } from '../../../engine/replay.js';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { readCounts } from '../../../effects/fakes/fake-images.js';
import { DOCKERFILE_TEMPLATE, EGRESS_ALLOWLIST_PATH, SUPERVISE_DIR } from '../../../machines/specs.js';
import { EventLog } from '../../../store/event-log.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir, eventsFile, perBottleDockerfile, queueDir } from '../../../store/paths.js';
import { fakeContext, startFakeRun, testInput, testManifest, until, worldFile } from '../../support/engine.js';

/**
 * The host side of capability review on the fake backend: a proposal the supervise sidecar
 * prints reaches the machine through the queue and the mailbox, decisions go back into the
 * sidecar, and an approved change is applied to the running bottle.
 */

const SUPERVISE = 'bottle-coder-supervise';

/** Appends a line to a fake container's stdout, as the sidecar would print it. */
function sidecarPrints(world: string, container: string, rec: unknown) {
  const w = FakeRuntime.read(world);
  const c = w.containers[container]!;
  c.stdout = `${c.stdout ?? ''}${JSON.stringify(rec)}\n`;
  const tmp = `${world}.test.tmp`;
  writeFileSync(tmp, JSON.stringify(w));
  renameSync(tmp, world);
}

function proposalLine(id: string, kind: string, change: Record<string, unknown>, reason = 'the task needs it') {
  return { source: 'supervise', type: 'proposal', at: new Date().toISOString(), proposal: { id, kind, reason, change } };
}

describe('capability review, host side (fake backend)', () => {
  it('proposals from the sidecar are queued, decided, applied and reported back', async () => {
    const ctx = fakeContext();
    const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true }));
    const states: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s) });
    const world = worldFile(ctx);
    const dir = commandsDir(ctx.home, input.identity, input.runId);
    const file = eventsFile(ctx.home, input.identity, input.runId);
    const proposal = (id: string) => foldLog(EventLog.read(file), file, { fromSnapshot: false }).snapshot.context.proposals.find((p) => p.id === id);
    const files = (name: string) => FakeRuntime.read(world).containers[name]?.files ?? {};
    const decisions = () => JSON.parse(files(SUPERVISE)[`${SUPERVISE_DIR}/decisions.json`] ?? '{"decisions":[]}').decisions as { id: string; status: string; reason?: string }[];
    await until(() => states.includes('running'), 'running');

    // The sidecar knew what to propose against before it was asked to be healthy.
    const current = JSON.parse(files(SUPERVISE)[`${SUPERVISE_DIR}/current.json`]!);
    expect(current).toEqual({ dockerfile: DOCKERFILE_TEMPLATE, allowlist: ['allowed.test'], routes: [] });

    // An allowlist proposal: queued, pending, approved, applied to egress, reported back.
    sidecarPrints(world, SUPERVISE, proposalLine('pallow00001', 'allowlist', { hosts: ['later.test'] }));
    await until(() => proposal('pallow00001')?.status === 'pending', 'the allowlist proposal pending');
    expect(states).toContain('capabilityReview');
    expect(JSON.parse(readFileSync(join(queueDir(ctx.home, input.identity), 'pallow00001.json'), 'utf8')).kind).toBe('allowlist');
    postCommand(dir, { id: 'a1', type: 'approve', proposal: 'pallow00001', by: 'tester' });
    await until(() => decisions().some((d) => d.id === 'pallow00001' && d.status === 'approved'), 'the approval reported to the sidecar');
    expect(files('bottle-coder-egress')[EGRESS_ALLOWLIST_PATH]).toBe('allowed.test\nlater.test\n');
    await until(() => JSON.parse(files(SUPERVISE)[`${SUPERVISE_DIR}/current.json`]!).allowlist.includes('later.test'), 'the current allowlist updated');

    // A line the engine does not accept is ignored; the same proposal printed twice is one.
    sidecarPrints(world, SUPERVISE, proposalLine('BAD', 'allowlist', { hosts: ['x.test'] }));
    sidecarPrints(world, SUPERVISE, proposalLine('pdeny000001', 'allowlist', { hosts: ['no.test'] }));
    sidecarPrints(world, SUPERVISE, proposalLine('pdeny000001', 'allowlist', { hosts: ['no.test'] }));
    await until(() => proposal('pdeny000001')?.status === 'pending', 'the second proposal pending');
    postCommand(dir, { id: 'd1', type: 'deny', proposal: 'pdeny000001', by: 'tester', reason: 'not for this task' });
    await until(() => decisions().some((d) => d.id === 'pdeny000001' && d.status === 'denied' && d.reason === 'not for this task'), 'the denial reported');

    // A Dockerfile: built, the agent container recreated from the new image, the run goes on.
    const dockerfile = `${DOCKERFILE_TEMPLATE}USER root\nRUN apt-get install -y jq\nUSER agent\n`;
    sidecarPrints(world, SUPERVISE, proposalLine('pdock000001', 'dockerfile', { dockerfile }));
    await until(() => proposal('pdock000001')?.status === 'pending', 'the Dockerfile proposal pending');
    expect(String(proposal('pdock000001')!.change.diff)).toContain('+RUN apt-get install -y jq');
    const agentBefore = FakeRuntime.read(world).containers['bottle-coder']!;
    postCommand(dir, { id: 'a2', type: 'approve', proposal: 'pdock000001', by: 'tester' });
    await until(() => proposal('pdock000001')?.status === 'approved', 'the Dockerfile applied');
    const agentAfter = FakeRuntime.read(world).containers['bottle-coder']!;
    expect(agentAfter.image).toMatch(/^bot-bottle\/bottle:fake-/);
    expect(agentAfter.image).not.toBe(agentBefore.image);
    expect(agentAfter.state).toBe('running');
    expect(readFileSync(perBottleDockerfile(ctx.home, input.identity), 'utf8')).toBe(dockerfile);
    await until(() => states[states.length - 1] === 'running', 'back to running, not torn down');
    expect(Object.keys(readCounts(`${world}.counts`)).filter((k) => k.startsWith('build:'))).toHaveLength(1);

    // Deciding again changes nothing.
    postCommand(dir, { id: 'a3', type: 'approve', proposal: 'pdeny000001', by: 'tester' });
    postCommand(dir, { id: 's1', type: 'stop' });
    const result = await host.done;
    expect(result.state).toBe('done');
    expect(proposal('pdeny000001')!.status).toBe('denied');
    expect(proposal('BAD')).toBeUndefined();
    expect(foldLog(EventLog.read(file), file, { fromSnapshot: false }).snapshot.context.proposals.map((p) => p.id)).toEqual(['pallow00001', 'pdeny000001', 'pdock000001']);
    expect(replayFile(file).problem).toBeNull();
  });

  it('a failed Dockerfile build leaves the agent as it was and fails the proposal with the error', async () => {
    const ctx = fakeContext();
    const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true }));
    const states: string[] = [];
    const host = await startFakeRun(ctx, input, { onState: (s) => states.push(s), applyFail: ['dockerfile'] });
    const world = worldFile(ctx);
    const file = eventsFile(ctx.home, input.identity, input.runId);
    const proposal = (id: string) => foldLog(EventLog.read(file), file, { fromSnapshot: false }).snapshot.context.proposals.find((p) => p.id === id);
    await until(() => states.includes('running'), 'running');
    const agentBefore = FakeRuntime.read(world).containers['bottle-coder']!;
    sidecarPrints(world, SUPERVISE, proposalLine('pdock000002', 'dockerfile', { dockerfile: 'FROM nothing\n' }));
    await until(() => proposal('pdock000002')?.status === 'pending', 'pending');
    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 'a1', type: 'approve', proposal: 'pdock000002', by: 'tester' });
    await until(() => proposal('pdock000002')?.status === 'failed', 'failed');
    expect(proposal('pdock000002')!.error?.message).toMatch(/fake failure building/);
    const agentAfter = FakeRuntime.read(world).containers['bottle-coder']!;
    expect(agentAfter.image).toBe(agentBefore.image);
    expect(agentAfter.state).toBe('running');
    expect(existsSync(perBottleDockerfile(ctx.home, input.identity))).toBe(false);
    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 's1', type: 'stop' });
    expect((await host.done).state).toBe('done');
  });
});
