/**
 * Load: ten bottles at once against one bottle, in the same run.
 *
 * Each round, in turns (the order flips every round):
 *   (a) one bottle: `bin/bottle run AGENT --detach` (egress only, runtime runc, agent `sleep`),
 *       timed from spawn until the agent runs; then `bottle stop` (not timed);
 *   (b) N bottles (default 10): the same N times at once, timed from the first spawn until the
 *       last CLI returned (every agent runs). While all N run, the resident memory of their N
 *       owner processes (`bottle __owner`, /proc/<pid>/status VmRSS) and of their sidecar
 *       containers (the memory cgroup's usage, from `docker stats --no-stream`) is read. Then
 *       all are stopped at once (not timed).
 * Reports per round and the medians: one bottle's time, N bottles' time, their ratio (the
 * machine does N times the work: a ratio under N says how much of the launch runs side by
 * side), and memory per bottle.
 *
 * Usage: npx tsx bench/load/run.ts [ROUNDS=3] [--bottles N]
 *
 * Needs a Docker daemon, warm images (bottle images build) and the built CLI. Talks to
 * nothing but the local daemon and its own containers, labelled by their identities
 * (ld-*-<random>); all of it is removed at the end, on failure too.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { readLockOwner } from '../../store/lock.js';

const args = process.argv.slice(2);
const option = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const ROUNDS = Number(args.find((a, i) => !a.startsWith('--') && args[i - 1] !== '--bottles') ?? 3);
const N = Number(option('--bottles') ?? 10);

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BOTTLE = join(root, 'bin', 'bottle');
const suffix = Math.random().toString(36).slice(2, 8);
const home = mkdtempSync(join(tmpdir(), 'bottle-load-home-'));
const dir = mkdtempSync(join(tmpdir(), 'bottle-load-manifest-'));
const manifest = join(dir, 'bottle.yaml');
const names = Array.from({ length: N }, (_, i) => `ld-${i}-${suffix}`);
const single = `ld-one-${suffix}`;
writeFileSync(
  manifest,
  `version: 1
bottles:
  load:
    runtime: runc
    egress: { allow: [allowed.test] }
agents:
${[single, ...names].map((a) => `  ${a}:\n    bottle: load\n    prompt: wait\n    command: [sleep, "600"]\n`).join('')}`,
);
const env: NodeJS.ProcessEnv = { ...process.env, BOTTLE_HOME: home, BOTTLE_BASE_SOURCE: 'bootstrap' };
delete env.BOTTLE_BACKEND;

function cliRun(argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const child = spawn(BOTTLE, argv, { env, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', rej);
    child.on('close', (code) => res({ code, stdout, stderr }));
  });
}

async function launch(agents: string[]): Promise<number> {
  const t0 = performance.now();
  const results = await Promise.all(agents.map((a) => cliRun(['run', a, '-f', manifest, '--detach', '--json'])));
  const ms = performance.now() - t0;
  for (const [i, r] of results.entries()) if (r.code !== 0) throw new Error(`bottle run ${agents[i]} failed (${r.code}): ${r.stderr}`);
  return ms;
}

async function stopAll(agents: string[]): Promise<void> {
  await Promise.all(agents.map((a) => cliRun(['stop', a])));
}

/** Resident memory (MiB) of each bottle's owner process, from its run lock. */
function ownerRss(agents: string[]): number[] {
  return agents.map((a) => {
    const runs = execFileSync('ls', [join(home, 'bottles', a, 'runs')], { encoding: 'utf8' }).trim().split('\n');
    const owner = readLockOwner(join(home, 'bottles', a, 'runs', runs[runs.length - 1]!, 'owner.lock'));
    if (!owner?.alive) throw new Error(`no live owner for ${a}`);
    const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${owner.pid}/status`, 'utf8'))?.[1];
    return Number(kb) / 1024;
  });
}

/** Memory (MiB) of every sidecar container of these bottles, as the memory cgroup counts it. */
function sidecarMemory(agents: string[]): number[] {
  const out = execFileSync('docker', ['stats', '--no-stream', '--format', '{{.Name}} {{.MemUsage}}'], { encoding: 'utf8' });
  const mib: number[] = [];
  for (const line of out.trim().split('\n')) {
    const [name, usage] = line.split(' ');
    if (!agents.some((a) => name === `bottle-${a}-egress`)) continue;
    const m = /^([\d.]+)([KMG]i?B)/.exec(usage ?? '');
    if (!m) continue;
    const unit = m[2]!.startsWith('K') ? 1 / 1024 : m[2]!.startsWith('G') ? 1024 : 1;
    mib.push(Number(m[1]) * unit);
  }
  return mib;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

async function main() {
  console.log(`load: ${N} bottles at once vs one, ${ROUNDS} rounds, ${cpus().length} cores, runtime runc`);
  // Warm-up: the first launch may build the images' tags into the daemon's cache.
  await launch([single]);
  await stopAll([single]);
  const rows: { one: number; many: number; owners: number[]; sidecars: number[] }[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    let one = 0;
    let many = 0;
    let owners: number[] = [];
    let sidecars: number[] = [];
    const doOne = async () => {
      one = await launch([single]);
      await stopAll([single]);
    };
    const doMany = async () => {
      many = await launch(names);
      owners = ownerRss(names);
      sidecars = sidecarMemory(names);
      await stopAll(names);
    };
    if (round % 2 === 0) {
      await doOne();
      await doMany();
    } else {
      await doMany();
      await doOne();
    }
    rows.push({ one, many, owners, sidecars });
    console.log(
      `round ${round + 1}: one ${one.toFixed(0)} ms, ${N} at once ${many.toFixed(0)} ms (${(many / one).toFixed(2)}x); owners ${sum(owners).toFixed(0)} MiB (${median(owners).toFixed(1)} each), egress sidecars ${sum(sidecars).toFixed(0)} MiB (${median(sidecars).toFixed(1)} each)`,
    );
  }
  const one = median(rows.map((r) => r.one));
  const many = median(rows.map((r) => r.many));
  console.log(`median: one bottle ${one.toFixed(0)} ms; ${N} bottles at once ${many.toFixed(0)} ms; ratio ${(many / one).toFixed(2)}x (${N}x the work)`);
  console.log(
    `memory while ${N} run (median of rounds): owners ${median(rows.map((r) => sum(r.owners))).toFixed(0)} MiB total, ${median(rows.map((r) => median(r.owners))).toFixed(1)} MiB each; egress sidecars ${median(rows.map((r) => sum(r.sidecars))).toFixed(0)} MiB total, ${median(rows.map((r) => median(r.sidecars))).toFixed(1)} MiB each`,
  );
}

try {
  await main();
} finally {
  await stopAll([single, ...names]).catch((err: unknown) => console.error(`stop: ${(err as Error).message}`));
  for (const a of [single, ...names]) {
    for (const kind of ['container', 'network', 'volume'] as const) {
      const ids = execFileSync('docker', [kind, 'ls', ...(kind === 'container' ? ['-a'] : []), '-q', '--filter', `label=bot-bottle.identity=${a}`], { encoding: 'utf8' }).trim();
      if (ids) execFileSync('docker', [kind, 'rm', ...(kind === 'network' ? [] : ['-f']), ...ids.split('\n')], { stdio: 'ignore' });
    }
  }
  rmSync(home, { recursive: true, force: true });
  rmSync(dir, { recursive: true, force: true });
}
