import { describe, expect, it } from 'vitest';
import { type Manifest, validateManifest } from '../../../config/manifest.js';
import { createBody } from '../../../effects/docker/runtime-spec.js';
import { limitsLines, limitsSummary } from '../../../machines/limits.js';
import { buildPlan, planSummary } from '../../../machines/plan.js';
import { agentSpec, netnsHolderSpec, sidecarSpec, WORKSPACE_KEEPER_PATH, workspaceVolumeSpec } from '../../../machines/specs.js';
import { planInput } from '../../support/machine.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

function doc(resources?: unknown) {
  return {
    version: 1,
    bottles: { web: { supervise: true, ...(resources !== undefined ? { resources } : {}) } },
    agents: { coder: { bottle: 'web' } },
  };
}

function manifest(resources?: unknown): Manifest {
  const r = validateManifest(doc(resources));
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.manifest;
}

function plan(resources?: unknown, runtimes: string[] = ['runc']) {
  const input = planInput(manifest(resources));
  return buildPlan(input, { existingContainers: [], runtimes, perBottleDockerfile: false });
}

describe('manifest: resources', () => {
  it('takes sizes as Docker writes them and numbers for cpus and pids', () => {
    const m = manifest({
      cpus: 0.5,
      memory: '1.5g',
      pids: 512,
      disk: { workspace: '256m', tmp: '64MiB', root: 10 * GiB },
      sidecars: { cpus: 0.25, memory: '128m', pids: 64 },
      proposals: { pending: 10, per_minute: 5 },
    });
    expect(m.bottles.web!.resources).toEqual({
      cpus: 0.5,
      memory: 1.5 * GiB,
      pids: 512,
      disk: { workspace: 256 * MiB, tmp: 64 * MiB, root: 10 * GiB },
      sidecars: { cpus: 0.25, memory: 128 * MiB, pids: 64 },
      proposals: { pending: 10, per_minute: 5 },
    });
    // Absent: nothing in the manifest, the defaults come from the plan.
    expect(manifest().bottles.web!.resources).toBeUndefined();
  });

  it('names the path of every bad value, all at once', () => {
    const r = validateManifest(
      doc({ cpus: 0, memory: 'lots', pids: 2.5, disk: { tmp: '10k', swap: '1g' }, sidecars: { memory: '1m' }, proposals: { pending: 0, per_minute: 'fast' }, gpu: 1 }),
    );
    expect(r.ok).toBe(false);
    const issues = r.ok ? [] : r.issues;
    const at = (path: string) => issues.filter((i) => i.path === path).map((i) => i.message);
    expect(at('bottles.web.resources.cpus')[0]).toMatch(/at least 0.01/);
    expect(at('bottles.web.resources.memory')[0]).toMatch(/must be a size such as 512m or 2g.*"lots"/);
    expect(at('bottles.web.resources.pids')[0]).toMatch(/whole number/);
    expect(at('bottles.web.resources.disk.tmp')[0]).toMatch(/at least 1m/);
    expect(at('bottles.web.resources.disk.swap')[0]).toMatch(/unknown key \(allowed here: workspace, tmp, root\)/);
    expect(at('bottles.web.resources.sidecars.memory')[0]).toMatch(/at least 32m/);
    expect(at('bottles.web.resources.proposals.pending')[0]).toMatch(/at least 1/);
    expect(at('bottles.web.resources.proposals.per_minute')).toHaveLength(1);
    expect(at('bottles.web.resources.gpu')[0]).toMatch(/unknown key/);
  });
});

describe('limits in the plan and the specs', () => {
  it('defaults: every container gets a CPU quota, memory, pids, a rotated log; the agent a sized /tmp and workspace', () => {
    const p = plan();
    const agent = agentSpec(p, 'run1', { envFile: '/s/env', promptFile: '/s/prompt' }, {});
    expect(agent).toMatchObject({ cpus: 1, memoryBytes: 4 * GiB, pidsLimit: 2048, tmpfs: { '/tmp': 512 * MiB }, log: { maxBytes: 16 * MiB, files: 3 } });
    expect(agent.rootBytes).toBeUndefined();
    expect(plan(undefined, ['runc', 'runsc']).limits.agent.pids).toBe(16384);
    for (const s of p.sidecars) {
      expect(sidecarSpec(p, 'run1', s, [])).toMatchObject({ cpus: 1, memoryBytes: 512 * MiB, pidsLimit: 256, log: { maxBytes: 16 * MiB, files: 3 } });
    }
    expect(sidecarSpec(p, 'run1', p.sidecars.find((s) => s.role === 'supervise')!, []).env).toMatchObject({ BOTTLE_SUPERVISE_LIMITS: '100,30', BOTTLE_AUDIT_LIMITS: `1000,100,${24 * MiB},5000` });
    expect(workspaceVolumeSpec(p, 'run1')).toMatchObject({ name: p.volume, sizeBytes: 2 * GiB, uid: 1000, gid: 1000 });
    // The holder keeps the tmpfs workspace mounted for the run, so a recreated agent finds its work.
    expect(netnsHolderSpec(p, 'run1').mounts).toEqual([{ type: 'volume', source: p.volume, target: WORKSPACE_KEEPER_PATH, readOnly: true }]);
  });

  it('takes the manifest values', () => {
    const p = plan({ cpus: 0.5, memory: '1g', pids: 300, disk: { workspace: '100m', tmp: '10m', root: '5g' }, sidecars: { cpus: 0.25 }, proposals: { pending: 7, per_minute: 2 } });
    const agent = agentSpec(p, 'run1', { envFile: '/s/env', promptFile: '/s/prompt' }, {});
    expect(agent).toMatchObject({ cpus: 0.5, memoryBytes: GiB, pidsLimit: 300, tmpfs: { '/tmp': 10 * MiB }, rootBytes: 5 * GiB });
    expect(workspaceVolumeSpec(p, 'run1').sizeBytes).toBe(100 * MiB);
    expect(sidecarSpec(p, 'run1', p.sidecars[0]!, []).cpus).toBe(0.25);
    expect(sidecarSpec(p, 'run1', p.sidecars.find((s) => s.role === 'supervise')!, []).env.BOTTLE_SUPERVISE_LIMITS).toBe('7,2');
  });

  it('reach Docker as NanoCpus, Tmpfs, StorageOpt and a json-file LogConfig', () => {
    const p = plan({ cpus: 0.5, disk: { tmp: '10m', root: '5g' } });
    const body = createBody(agentSpec(p, 'run1', { envFile: '/s/env', promptFile: '/s/prompt' }, {}), []);
    expect(body.HostConfig).toMatchObject({
      NanoCpus: 500_000_000,
      Memory: 4 * GiB,
      Tmpfs: { '/tmp': `rw,nosuid,nodev,size=${10 * MiB},mode=1777` },
      StorageOpt: { size: String(5 * GiB) },
      LogConfig: { Type: 'json-file', Config: { 'max-size': String(16 * MiB), 'max-file': '3' } },
    });
    expect(createBody(agentSpec(plan(), 'run1', { envFile: '/e', promptFile: '/p' }, {}), []).HostConfig?.StorageOpt).toBeUndefined();
  });

  it('plan says plainly what is not bounded, in text and in --json', () => {
    const p = plan();
    const json = planSummary(p).limits;
    expect(json.agent).toMatchObject({ cpus: 1, memory_bytes: 4 * GiB, workspace_bytes: 2 * GiB, tmp_bytes: 512 * MiB, root_bytes: null });
    expect(json.not_enforced).toEqual([
      { what: expect.stringMatching(/^agent root filesystem/), why: expect.stringMatching(/storage driver with quotas.*resources\.disk\.root/) },
      { what: expect.stringMatching(/^sidecar root filesystems/), why: expect.stringMatching(/pushes the git gate accepts/) },
    ]);
    expect(json.enforced.map((e) => e.what)).toEqual(expect.arrayContaining(['agent cpu', 'agent /workspace', 'agent /tmp', 'sidecar audit', 'proposals']));
    expect(limitsLines(p.limits).filter((l) => l.startsWith('NOT bounded: agent root filesystem'))).toHaveLength(1);
    // Asked for, the root size moves to what is enforced (Docker refuses it where the driver cannot).
    const rooted = limitsSummary(plan({ disk: { root: '5g' } }).limits);
    expect(rooted.not_enforced.map((u) => u.what)).toEqual([expect.stringMatching(/^sidecar root filesystems/)]);
    expect(rooted.enforced.find((e) => e.what === 'agent root filesystem')?.limit).toBe('5g');
  });
});
