import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { EventLog } from '../../../store/event-log.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir, eventsFile } from '../../../store/paths.js';
import { listRuns } from '../../../store/state-doc.js';
import { ensureBuilt, fakeProject } from '../../support/cli.js';

/**
 * Issue 13, item 4, the races (the fake backend, real CLI processes): two CLIs starting the
 * same identity at once give one bottle and one RUN_LOCKED; a hundred commands sent to one
 * running bottle are each applied exactly once; two `bottle approve` of one proposal at once
 * give one approval.
 */

const MANIFEST = `version: 1
bottles:
  box:
    egress: { allow: [allowed.test] }
    supervise: true
agents:
  coder:
    bottle: box
    prompt: do the thing
    command: [fake-agent, --ms, forever]
`;

beforeAll(() => ensureBuilt());

const setup = () => fakeProject(MANIFEST);

async function poll<T>(what: string, probe: () => Promise<T | undefined | null | false> | T | undefined | null | false): Promise<T> {
  for (let i = 0; i < 600; i++) {
    const v = await probe();
    if (v) return v;
    await delay(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('races', () => {
  it('two CLIs starting the same identity at once: one bottle, one RUN_LOCKED', async () => {
    const { p, cli } = setup();
    const [a, b] = await Promise.all([cli('run', 'coder', '--detach', '--json'), cli('run', 'coder', '--detach', '--json')]);
    try {
      const codes = [a.code, b.code].sort();
      expect(codes, `${a.stderr}\n---\n${b.stderr}`).toEqual([0, 1]);
      const loser = a.code === 1 ? a : b;
      expect(JSON.parse(loser.stdout).error.code).toBe('RUN_LOCKED');
      expect(listRuns(p.home, 'coder')).toHaveLength(1);
      const world = FakeRuntime.read(join(p.home, 'fake-world.json'));
      // One agent container: a second launch would have taken the next free name, bottle-coder-2.
      expect(Object.keys(world.containers).filter((n) => /^bottle-coder(-\d+)?$/.test(n))).toEqual(['bottle-coder']);
    } finally {
      expect((await cli('stop', 'coder')).code).toBe(0);
    }
  });

  it('a hundred commands to one running bottle are each applied exactly once', async () => {
    const { p, cli } = setup();
    const started = await cli('run', 'coder', '--detach', '--json');
    expect(started.code, started.stderr).toBe(0);
    const { run } = JSON.parse(started.stdout) as { run: string };
    const dir = commandsDir(p.home, 'coder', run);
    const file = eventsFile(p.home, 'coder', run);
    try {
      // Fifty proposals and fifty denials, each posted twice (a redelivery), all at once.
      for (let i = 0; i < 50; i++) {
        const cmd = { id: `propose-p${i}`, type: 'propose' as const, proposal: { id: `p${String(i).padStart(6, '0')}`, kind: 'allowlist' as const, reason: `host ${i}`, change: { hosts: [`h${i}.test`] } } };
        postCommand(dir, cmd);
        postCommand(dir, cmd);
      }
      await poll('fifty proposals', () => EventLog.read(file).filter((r) => r.kind === 'event' && r.event.type === 'proposal.received').length === 50);
      for (let i = 0; i < 50; i++) {
        const cmd = { id: `deny-${i}`, type: 'deny' as const, proposal: `p${String(i).padStart(6, '0')}`, by: 'alice', reason: `no ${i}` };
        postCommand(dir, cmd);
        postCommand(dir, cmd);
      }
      const list = await poll('fifty denials', async () => {
        const r = await cli('proposals', 'coder', '--json');
        const l = r.code === 0 ? (JSON.parse(r.stdout) as { status: string }[]) : [];
        return l.length === 50 && l.every((x) => x.status === 'denied') ? l : null;
      });
      expect(list).toHaveLength(50);
      const records = EventLog.read(file);
      const ids = records.filter((r) => r.kind === 'command').map((r) => (r.kind === 'command' ? r.id : ''));
      expect(ids).toHaveLength(100);
      expect(new Set(ids).size).toBe(100);
      expect(records.filter((r) => r.kind === 'event' && r.event.type === 'proposal.deny')).toHaveLength(50);
    } finally {
      expect((await cli('stop', 'coder')).code).toBe(0);
    }
    expect((await cli('replay', 'coder')).code).toBe(0);
  });

  it('two `bottle approve` of one proposal at once give one approval', async () => {
    const { p, cli } = setup();
    const started = await cli('run', 'coder', '--detach', '--json');
    expect(started.code, started.stderr).toBe(0);
    const { run } = JSON.parse(started.stdout) as { run: string };
    try {
      // The supervise sidecar prints a proposal; the owner, another process, may rewrite the
      // fake world at the same moment, so the line is written again until the owner has it.
      const world = join(p.home, 'fake-world.json');
      const line = `${JSON.stringify({ source: 'supervise', type: 'proposal', at: new Date().toISOString(), proposal: { id: 'ptwice0001', kind: 'allowlist', reason: 'one host', change: { hosts: ['later.test'] } } })}\n`;
      await poll('the proposal', async () => {
        const w = FakeRuntime.read(world);
        if (w.containers['bottle-coder-supervise']!.stdout !== line) {
          w.containers['bottle-coder-supervise']!.stdout = line;
          writeFileSync(`${world}.tmp`, JSON.stringify(w));
          renameSync(`${world}.tmp`, world);
        }
        const r = await cli('proposals', 'coder', '--json');
        return r.code === 0 && (JSON.parse(r.stdout) as unknown[]).length === 1;
      });
      const [a, b] = await Promise.all([cli('approve', 'coder', 'ptwice0001', '--json'), cli('approve', 'coder', 'ptwice0001', '--json')]);
      // Each CLI either saw it pending and waited for the decision, or saw it decided already.
      for (const r of [a, b]) {
        if (r.code === 0) expect(JSON.parse(r.stdout).status).toBe('approved');
        else expect(JSON.parse(r.stdout).error.code).toBe('PROPOSAL_DECIDED');
      }
      const records = EventLog.read(eventsFile(p.home, 'coder', run));
      expect(records.filter((r) => r.kind === 'effect.intent' && r.step === 'applyProposal')).toHaveLength(1);
      const egress = FakeRuntime.read(world).ops.filter((o) => o === 'putFiles bottle-coder-egress');
      expect(egress).toHaveLength(1);
      const shown = JSON.parse((await cli('proposals', 'coder', '--json')).stdout) as { status: string; decided_by?: string }[];
      expect(shown).toMatchObject([{ status: 'approved', decided_by: 'alice' }]);
    } finally {
      expect((await cli('stop', 'coder')).code).toBe(0);
    }
    expect((await cli('replay', 'coder')).code).toBe(0);
  });
});
