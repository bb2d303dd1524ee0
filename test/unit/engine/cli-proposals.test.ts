import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { DOCKERFILE_TEMPLATE } from '../../../machines/specs.js';
import { ensureBuilt, fakeProject } from '../../support/cli.js';

/**
 * What a human sees and does with the CLI (the fake backend, a detached run): a Dockerfile
 * proposal shown as a diff by `status` and `proposals`, decided once, recorded in the audit.
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

describe('deciding proposals with the CLI', () => {
  it('status and proposals show the diff; approve, deny and their errors; the audit names the change', async () => {
    const { p, cli } = fakeProject(MANIFEST);
    const started = await cli('run', 'coder', '--detach', '--json');
    expect(started.code, started.stderr).toBe(0);
    try {
      // The supervise sidecar prints two proposals (the fake world holds its stdout). The owner,
      // another process, rewrites that file too and may drop a line written at the same moment:
      // the lines are written again until the owner has them.
      const world = join(p.home, 'fake-world.json');
      const dockerfile = `${DOCKERFILE_TEMPLATE}RUN apt-get install -y jq\n`;
      const line = (id: string, kind: string, change: unknown) => JSON.stringify({ source: 'supervise', type: 'proposal', at: new Date().toISOString(), proposal: { id, kind, reason: `reason of ${id}`, change } });
      const stdout = `${line('pdockerfile1', 'dockerfile', { dockerfile })}\n${line('pallowlist01', 'allowlist', { hosts: ['later.test'] })}\n`;
      const print = () => {
        const w = FakeRuntime.read(world);
        if (w.containers['bottle-coder-supervise']!.stdout === stdout) return;
        w.containers['bottle-coder-supervise']!.stdout = stdout;
        writeFileSync(`${world}.tmp`, JSON.stringify(w));
        renameSync(`${world}.tmp`, world);
      };
      let list: { id: string; status: string; change: { diff?: string }; change_sha256: string }[] = [];
      for (let i = 0; i < 300 && list.filter((x) => x.status === 'pending').length < 2; i++) {
        print();
        const r = await cli('proposals', 'coder', '--json');
        list = r.code === 0 ? JSON.parse(r.stdout) : [];
        await delay(50);
      }
      expect(list.map((x) => [x.id, x.status])).toEqual([
        ['pdockerfile1', 'pending'],
        ['pallowlist01', 'pending'],
      ]);
      expect(list[0]!.change.diff).toContain('+RUN apt-get install -y jq');
      expect(list[0]!.change_sha256).toMatch(/^[0-9a-f]{64}$/);

      const status = await cli('status', 'coder');
      expect(status.stderr).toContain('capabilityReview');
      expect(status.stderr).toContain('+RUN apt-get install -y jq');
      expect(status.stderr).toContain('bottle approve coder pdockerfile1');
      const shown = await cli('proposals', 'coder');
      expect(shown.stderr).toContain('--- Dockerfile (current)');
      expect(shown.stderr).toContain('allow: later.test');

      const withToken = await cli('approve', 'coder', 'pdockerfile1', '--token-env', 'SOME_TOKEN');
      expect(withToken.code).toBe(2);
      expect(withToken.stderr).toMatch(/only for route proposals/);
      const approve = await cli('approve', 'coder', 'pdockerfile1');
      expect(approve.code, approve.stderr).toBe(0);
      expect(approve.stderr).toContain('pdockerfile1: approved');
      const deny = await cli('deny', 'coder', 'pallowlist01', '--reason', 'not today');
      expect(deny.code, deny.stderr).toBe(0);
      const again = await cli('approve', 'coder', 'pallowlist01', '--json');
      expect(again.code).toBe(1);
      expect(JSON.parse(again.stdout).error.code).toBe('PROPOSAL_DECIDED');
      const unknown = await cli('deny', 'coder', 'pnosuchthing');
      expect(unknown.code).toBe(1);
      expect(unknown.stderr).toContain('PROPOSAL_NOT_FOUND');

      const audit = JSON.parse((await cli('audit', 'coder', '--json')).stdout) as { type: string; proposal?: string; change_sha256?: string; event?: { by?: string; reason?: string } }[];
      const decisions = audit.filter((e) => e.type === 'proposal.approve' || e.type === 'proposal.deny');
      expect(decisions.map((e) => [e.type, e.proposal, e.event?.by, e.change_sha256])).toEqual([
        ['proposal.approve', 'pdockerfile1', 'alice', list[0]!.change_sha256],
        ['proposal.deny', 'pallowlist01', 'alice', list[1]!.change_sha256],
      ]);
      expect(decisions[1]!.event?.reason).toBe('not today');
    } finally {
      const stop = await cli('stop', 'coder');
      expect(stop.code, stop.stderr).toBe(0);
    }
    const replay = await cli('replay', 'coder');
    expect(replay.code, replay.stderr).toBe(0);
  });
});
