import { readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../support/cli.js';
import { docker } from '../support/docker.js';
import { ensureTestImages } from '../support/images.js';
import {
  agentName,
  type AttachedRun,
  bottleContainers,
  bottleFolder,
  cli,
  finishBottleSuite,
  identityOf,
  PRELUDE,
  results,
  roleOf,
  runAttached,
  type SecBottle,
} from '../support/security.js';

/**
 * Resource limits, tried as a hostile agent would: write without end, busy-loop on every core,
 * flood the egress proxy with requests it refuses, file proposals without end. Every bound
 * holds on the host's side: Docker's data root keeps its free space, the agent's cgroup gets
 * its CPU quota and no more, the audit stays bounded and says what it summarised, and the
 * 101st pending proposal is refused.
 *
 * Network rule: the agent only talks to its own sidecars (egress refuses `denied.test` by its
 * allowlist, before any lookup); nothing leaves the bottle.
 */

const MiB = 1024 ** 2;
const identities = new Set<string>();
let dataRoot = '/var/lib/docker';

beforeAll(async () => {
  ensureBuilt();
  await ensureTestImages();
  dataRoot = ((await docker().info()) as { DockerRootDir?: string }).DockerRootDir ?? dataRoot;
});

afterAll(() => finishBottleSuite(identities));

function limitsBottle(tag: string, runtime: string, resources: Record<string, unknown>, script: string, extra: Record<string, unknown> = {}): SecBottle {
  return bottleFolder({
    prefix: 'bottle-lim-',
    agent: agentName(tag),
    bottle: 'lim',
    config: { runtime, egress: { allow: ['allowed.test'] }, resources, ...extra },
    prompt: 'use everything',
    script,
  });
}

const freeBytes = (path: string) => {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
};

async function agentContainer(identity: string): Promise<Docker.ContainerInspectInfo> {
  const agent = (await bottleContainers(identity)).find((c) => roleOf(c) === 'agent');
  if (!agent) throw new Error(`no agent container for ${identity}`);
  return agent;
}

/** CPU the container used over `ms`, in cores (from Docker's stats: the cgroup's usage). */
async function coresUsed(id: string, ms: number): Promise<number> {
  const usage = async () => ((await docker().getContainer(id).stats({ stream: false })) as unknown as { cpu_stats: { cpu_usage: { total_usage: number } } }).cpu_stats.cpu_usage.total_usage;
  const a = await usage();
  const t0 = process.hrtime.bigint();
  await delay(ms);
  const b = await usage();
  const wall = Number(process.hrtime.bigint() - t0);
  return (b - a) / wall;
}

// The agent fills /workspace and /tmp until the kernel says no, then keeps both cores busy.
const FILL_AND_SPIN = `${PRELUDE}
fill() {
  local out
  out=$(dd if=/dev/zero of="$2" bs=1M count=2048 2>&1)
  result "$1_rc" "$?"
  case "$out" in *"No space left on device"*) result "$1_err" ENOSPC ;; *) result "$1_err" "none" ;; esac
  result "$1_bytes" "$(node -e 'console.log(require("fs").statSync(process.argv[1]).size)' "$2")"
}
fill workspace /workspace/fill
fill tmp /tmp/fill
# The image layer is not bounded (no storage-opt here): it is not filled, only said by plan.
rm -f /workspace/fill /tmp/fill
for i in 1 2 3 4; do (while :; do :; done) & done
result ready yes
read -r _
kill $(jobs -p) 2>/dev/null
result done yes
`;

for (const runtime of ['runc', 'runsc'] as const) {
  describe(`disk and CPU bounds under ${runtime}`, () => {
    let run: AttachedRun;
    let r: Record<string, string>;
    let identity: string;
    let b: SecBottle;
    let before = 0;
    let after = 0;
    let planJson: { limits: { agent: Record<string, unknown>; not_enforced: { what: string; why: string }[] } };
    let planText = '';

    beforeAll(async () => {
      b = limitsBottle(`disk-${runtime}`, runtime, { cpus: 0.5, disk: { workspace: '64m', tmp: '32m' } }, FILL_AND_SPIN);
      identity = await identityOf(b);
      identities.add(identity);
      const plan = await cli(b, ['plan', b.agent, '-f', b.manifest, '--json']);
      planJson = JSON.parse(plan.stdout);
      planText = (await cli(b, ['plan', b.agent, '-f', b.manifest])).stderr;
      before = freeBytes(dataRoot);
      run = await runAttached(b, async () => {
        const agent = await agentContainer(identity);
        // Wait out the start, then measure a short window while four loops spin.
        await delay(1000);
        const cores = await coresUsed(agent.Id, 3000);
        const egress = (await bottleContainers(identity)).find((c) => roleOf(c) === 'egress');
        return { stdin: '\n', observed: { cores, agent: agent.HostConfig, egress: egress?.HostConfig } };
      });
      after = freeBytes(dataRoot);
      r = results(run.stdout);
    }, 180_000);

    it('stops the agent at the disk bounds with ENOSPC, and the host keeps its free space', () => {
      expect(run.code, run.stderr).toBe(0);
      expect(r.workspace_err).toBe('ENOSPC');
      expect(r.tmp_err).toBe('ENOSPC');
      expect(Number(r.workspace_bytes)).toBeLessThanOrEqual(64 * MiB);
      expect(Number(r.workspace_bytes)).toBeGreaterThan(32 * MiB);
      expect(Number(r.tmp_bytes)).toBeLessThanOrEqual(32 * MiB);
      // The agent asked for 4 GiB in all; Docker's data root lost nothing like it.
      expect(before - after, `free space of ${dataRoot} before ${before}, after ${after}`).toBeLessThan(256 * MiB);
    });

    it('holds a busy-looping agent to its CPU quota, not to every core', () => {
      const { cores, agent } = run.observed as { cores: number; agent: Docker.HostConfig };
      console.log(`${runtime}: a busy-looping agent with cpus 0.5 used ${cores.toFixed(3)} cores`);
      expect(agent.NanoCpus).toBe(500_000_000);
      expect(cores, `cores used: ${cores}`).toBeGreaterThan(0.25);
      expect(cores, `cores used: ${cores}`).toBeLessThan(0.7);
    });

    it('gives every container a CPU quota and a rotated log, and says what is not bounded', () => {
      const { agent, egress } = run.observed as { agent: Docker.HostConfig; egress: Docker.HostConfig };
      expect(agent.Tmpfs?.['/tmp']).toMatch(/size=33554432/);
      expect(agent.LogConfig).toEqual({ Type: 'json-file', Config: { 'max-size': String(16 * MiB), 'max-file': '3' } });
      expect(egress?.NanoCpus).toBe(1_000_000_000);
      expect(egress?.LogConfig?.Config).toEqual({ 'max-size': String(16 * MiB), 'max-file': '3' });
      expect(planJson.limits.agent).toMatchObject({ cpus: 0.5, workspace_bytes: 64 * MiB, tmp_bytes: 32 * MiB, root_bytes: null });
      expect(planJson.limits.not_enforced.map((u) => u.what)).toEqual([expect.stringMatching(/^agent root filesystem/), expect.stringMatching(/^sidecar root filesystems/)]);
      expect(planText).toMatch(/NOT bounded: agent root filesystem/);
      expect(run.stderr).toMatch(/NOT bounded: agent root filesystem/);
    });
  });
}

describe('a flood of refused requests (runtime auto)', () => {
  const N = 12_000;
  let run: AttachedRun;
  let r: Record<string, string>;
  let identity: string;
  let b: SecBottle;

  beforeAll(async () => {
    const flood = `const http = require('http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
const N = ${N};
let sent = 0, done = 0, refused = 0, other = 0;
const t0 = Date.now();
function one() {
  if (sent >= N) return;
  sent++;
  const req = http.request({ host: 'egress', port: 3128, method: 'GET', path: 'http://denied.test/x', headers: { host: 'denied.test' }, agent }, (res) => {
    if (res.statusCode === 403) refused++; else other++;
    res.resume();
    res.on('end', next);
  });
  req.on('error', () => { other++; next(); });
  req.end();
}
function next() {
  done++;
  if (done === N) {
    console.log('RESULT refused=' + refused);
    console.log('RESULT other=' + other);
    console.log('RESULT ms=' + (Date.now() - t0));
    process.exit(0);
  }
  one();
}
for (let i = 0; i < 16; i++) one();
`;
    b = limitsBottle('flood', 'auto', {}, `${PRELUDE}\nnode -e '${flood.replace(/'/g, `'\\''`)}'\n`);
    identity = await identityOf(b);
    identities.add(identity);
    run = await runAttached(b, undefined, 300_000);
    r = results(run.stdout);
  }, 320_000);

  it('leaves a bounded egress audit whose summaries count every line it held back', () => {
    expect(run.code, run.stderr).toBe(0);
    expect(Number(r.refused)).toBe(N);
    const file = join(b.home, 'bottles', identity, 'audit', 'egress.jsonl');
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const kept = lines.filter((l) => l.decision === 'deny');
    const summaries = lines.filter((l) => l.type === 'audit.summary') as { dropped: Record<string, number>; dropped_lines: number }[];
    const summarised = summaries.reduce((n, s) => n + (s.dropped.deny ?? 0), 0);
    console.log(`flood: ${N} refused in ${r.ms} ms; ${kept.length} lines kept, ${summarised} summarised in ${summaries.length} summaries`);
    // Never silently lost: every refusal is a line or a count.
    expect(kept.length + summarised).toBe(N);
    expect(summarised).toBeGreaterThan(0);
    // Bounded: the burst plus the rate over the flood's duration, not N lines.
    const seconds = Number(r.ms) / 1000 + 10;
    expect(kept.length).toBeLessThanOrEqual(1000 + Math.ceil(100 * seconds));
    expect(summaries.length).toBeLessThanOrEqual(Math.ceil(seconds / 5) + 2);
    expect(summaries.every((s) => s.dropped_lines === (s.dropped.deny ?? 0))).toBe(true);
  });
});

describe('proposals without end (runtime auto)', () => {
  let run: AttachedRun;
  let r: Record<string, string>;
  let identity: string;
  let b: SecBottle;

  beforeAll(async () => {
    const script = `${PRELUDE}
ok=0; other=0
for i in $(seq 1 101); do
  code=$(curl -s -o /tmp/answer -w '%{http_code}' -H 'content-type: application/json' "$BOTTLE_SUPERVISE_URL/proposals" \\
    -d "{\\"kind\\":\\"allowlist\\",\\"reason\\":\\"host $i\\",\\"hosts\\":[\\"h$i.example.com\\"]}")
  if [ "$i" -le 100 ]; then [ "$code" = 201 ] && ok=$((ok+1)) || other=$((other+1)); else result last_code "$code"; result last_body "$(tr -d '\\n' < /tmp/answer)"; fi
done
result accepted "$ok"
result not_accepted "$other"
result ready yes
read -r _
`;
    b = limitsBottle('proposals', 'auto', { proposals: { pending: 100, per_minute: 1000 } }, script, { supervise: true });
    identity = await identityOf(b);
    identities.add(identity);
    run = await runAttached(b, async () => {
      // The host queues the 100 (and no more): wait until the owner has them all.
      let pending = 0;
      for (let i = 0; i < 120 && pending < 100; i++) {
        const p = await cli(b, ['proposals', identity, '--json']);
        const doc = JSON.parse(p.stdout || '[]') as unknown;
        const list = (Array.isArray(doc) ? doc : ((doc as { proposals?: unknown[] }).proposals ?? [])) as { status: string }[];
        pending = list.filter((x) => x.status === 'pending').length;
        if (pending < 100) await delay(500);
      }
      return { stdin: '\n', observed: { pending } };
    }, 200_000);
    r = results(run.stdout);
  }, 220_000);

  it('refuses the 101st pending proposal with 429 and says why and what to do', () => {
    expect(run.code, run.stderr).toBe(0);
    expect(r.accepted).toBe('100');
    expect(r.not_accepted).toBe('0');
    expect(r.last_code).toBe('429');
    const body = JSON.parse(r.last_body ?? '{}') as { error: string; limit: string; pending: number; max_pending: number };
    expect(body).toMatchObject({ limit: 'pending', pending: 100, max_pending: 100 });
    expect(body.error).toMatch(/too many pending proposals.*wait until some are decided/);
    expect((run.observed as { pending: number }).pending).toBe(100);
  });
});
