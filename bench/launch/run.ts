/**
 * Launch: `bottle run AGENT --detach` against the same Docker objects made by hand.
 *
 * With warm images, takes turns (the order flips every round) between
 *   (a) `bin/bottle run AGENT --detach -f MANIFEST` (agent command `sleep 600`), timed from
 *       spawn to the exit of the CLI, which returns once the agent runs; then `bottle stop`
 *       (not timed);
 *   (b) bench/launch/baseline.sh: the same networks, egress sidecar (with the namespace holder
 *       and route fixer made in the background meanwhile, as the product does), volume and
 *       agent with the docker CLI, timed from spawn to exit (the agent runs); then
 *       bench/launch/teardown.sh (not timed).
 * A pass with runtime runc (the baseline's agent gets --runtime runc), then, when the daemon
 * lists runsc, a pass with runtime auto (= runsc; the baseline's agent gets --runtime runsc).
 * Reports medians, the ratio bottle/baseline (goal: at most 1.25x) and the spread, plus where
 * bottle's time goes (from the run's event log) and the baseline's phases.
 *
 * Usage: npx tsx bench/launch/run.ts [ROUNDS=7] [--runc-only] [--warmup N] [--json FILE]
 *
 * Needs a Docker daemon and the built CLI (node scripts/build.mjs). Talks to nothing but the
 * local daemon and its own containers. Everything it makes carries a bot-bottle.identity
 * label of its own (lb-*-<random>); all of it is removed at the end, on failure too.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { readLockOwner } from '../../store/lock.js';

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const option = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const positional = args.filter((a, i) => !a.startsWith('--') && !(i > 0 && ['--warmup', '--json'].includes(args[i - 1]!)));
const ROUNDS = Number(positional[0] ?? 7);
const WARMUP = Number(option('--warmup') ?? 1);
const JSON_OUT = option('--json');
const GOAL = 1.25;

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BOTTLE = join(root, 'bin', 'bottle');
const BASELINE = join(root, 'bench', 'launch', 'baseline.sh');
const TEARDOWN = join(root, 'bench', 'launch', 'teardown.sh');

const suffix = Math.random().toString(36).slice(2, 8);
const home = mkdtempSync(join(tmpdir(), 'bottle-launch-home-'));
const manifestDir = mkdtempSync(join(tmpdir(), 'bottle-launch-manifest-'));
const stageRoot = mkdtempSync(join(tmpdir(), 'bottle-launch-stage-'));
const manifest = join(manifestDir, 'bottle.yaml');
const agents = { runc: `lb-runc-${suffix}`, auto: `lb-auto-${suffix}` };
const baselineId = `lb-base-${suffix}`;
const identities = [agents.runc, agents.auto, baselineId];

// BOTTLE_BASE_SOURCE=bootstrap: the image step may never try a registry pull.
const env: NodeJS.ProcessEnv = { ...process.env, BOTTLE_HOME: home, BOTTLE_BASE_SOURCE: 'bootstrap' };
delete env.BOTTLE_BACKEND;
delete env.BOTTLE_FROM_SOURCE;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const ms = (x: number) => `${Math.round(x)} ms`;
const log = (line: string) => process.stderr.write(`${line}\n`);

interface Spawned {
  code: number | null;
  ms: number;
  startedAt: number;
  stdout: string;
  stderr: string;
}

/** The process group of the command under way, if any. */
let current: number | undefined;

function run(cmd: string, argv: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Spawned> {
  return new Promise((resolve, reject) => {
    const startedAt = Date.now();
    const t0 = performance.now();
    // A process group of its own, so a clean-up after SIGINT can stop it and its docker calls.
    const child = spawn(cmd, argv, { env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'], cwd: manifestDir, detached: true });
    current = child.pid;
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c));
    child.stderr.on('data', (c: Buffer) => (stderr += c));
    child.on('error', reject);
    child.on('exit', (code) => {
      const elapsed = performance.now() - t0;
      current = undefined;
      // 'close' follows once the pipes drained; the time is taken at 'exit'.
      child.on('close', () => resolve({ code, ms: elapsed, startedAt, stdout, stderr }));
    });
  });
}

async function must(cmd: string, argv: string[], what: string, extraEnv: NodeJS.ProcessEnv = {}): Promise<Spawned> {
  const r = await run(cmd, argv, extraEnv);
  if (r.code !== 0) throw new Error(`${what} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r;
}

function docker(argv: string[]): string {
  return execFileSync('docker', argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

// ---- bottle: time, then the breakdown from the run's event log ----

interface EventRecord {
  at: number;
  kind: string;
  key?: string;
  step?: string;
  value?: string;
}

const STEPS = ['resolveWorld', 'probeOrphans', 'stageFiles', 'ensureImages', 'createNetworks', 'startSidecars', 'createAgent'] as const;
const STEP_NOTE: Partial<Record<(typeof STEPS)[number], string>> = {
  startSidecars: ' (egress up + healthy; holder, fixer alongside)',
  createAgent: ' (volume, agent)',
};

function bottleBreakdown(identity: string, startedAt: number, exitedAt: number): Record<string, number> {
  const state = JSON.parse(readFileSync(join(home, 'bottles', identity, 'state.json'), 'utf8')) as { runId: string };
  const lines = readFileSync(join(home, 'bottles', identity, 'runs', state.runId, 'events.jsonl'), 'utf8').trim().split('\n');
  const events = lines.map((l) => JSON.parse(l) as EventRecord);
  const started = events.find((e) => e.kind === 'run.started')!.at;
  const running = events.find((e) => e.kind === 'state' && e.value === 'running')!.at;
  // Since 3477e84 the CLI launches the bottle itself and hands the running bottle to a
  // background owner afterwards, so everything before run.started is the one CLI process.
  const out: Record<string, number> = {
    'CLI: node, bundle, manifest, image tags, lock (to run.started)': started - startedAt,
  };
  let inSteps = 0;
  for (const step of STEPS) {
    const intent = events.find((e) => e.kind === 'effect.intent' && e.step === step);
    const done = intent && events.find((e) => e.kind === 'effect.completed' && e.key === intent.key);
    const d = intent && done ? done.at - intent.at : 0;
    out[`step ${step}${STEP_NOTE[step] ?? ''}`] = d;
    inSteps += d;
  }
  out['engine between steps (journal, machine)'] = running - started - inSteps;
  out['state running -> CLI exit (25 ms state poll, exit)'] = exitedAt - running;
  return out;
}

async function bottleRound(agent: string, runtime: string): Promise<{ ms: number; parts: Record<string, number> }> {
  const r = await must(BOTTLE, ['run', agent, '--detach', '-f', manifest], `bottle run ${agent} --detach`);
  const parts = bottleBreakdown(agent, r.startedAt, r.startedAt + r.ms);
  const got = docker(['inspect', '-f', '{{.HostConfig.Runtime}}', `bottle-${agent}`]);
  if (got !== runtime) throw new Error(`bottle-${agent} runs under ${got}, expected ${runtime}`);
  await must(BOTTLE, ['stop', agent], `bottle stop ${agent}`);
  assertNothingLeft(agent);
  return { ms: r.ms, parts };
}

// ---- baseline ----

async function baselineRound(images: { agent: string; sidecar: string }, runtime: string, bottle: string): Promise<{ ms: number; parts: Record<string, number> }> {
  const stage = join(stageRoot, 'stage');
  const extra = {
    BENCH_AGENT_IMAGE: images.agent,
    BENCH_SIDECAR_IMAGE: images.sidecar,
    BENCH_RUNTIME: runtime,
    BENCH_BOTTLE: bottle,
    BENCH_STAGE_DIR: stage,
    BENCH_HOME: home,
    BENCH_TRACE: '1',
  };
  let r: Spawned;
  try {
    r = await must(BASELINE, [baselineId], 'baseline.sh', extra);
    const got = docker(['inspect', '-f', '{{.State.Running}} {{.HostConfig.Runtime}}', `bottle-${baselineId}`]);
    if (got !== `true ${runtime}`) throw new Error(`baseline agent: running/runtime is "${got}", expected "true ${runtime}"`);
  } finally {
    await must(TEARDOWN, [baselineId], 'teardown.sh', extra);
  }
  // "phase NAME MS_SINCE_START MS_IN_LANE": the main lane's parts add up to the whole; the
  // netns/ lane runs in the background from the end of "networks" (its wait is "netns-joined").
  const main: [string, number][] = [];
  const alongside: [string, number][] = [];
  let lastMain = 0;
  for (const m of r.stderr.matchAll(/^phase (\S+) (\d+) (\d+)$/gm)) {
    if (m[1]!.startsWith('netns/')) alongside.push([`  alongside: ${m[1]}`, Number(m[3])]);
    else {
      main.push([`phase ${m[1]}`, Number(m[3])]);
      lastMain = Number(m[2]);
    }
  }
  return { ms: r.ms, parts: Object.fromEntries([...main, ['bash start, after last phase, exit', r.ms - lastMain], ...alongside]) };
}

// ---- clean-up by label ----

function objectsOf(identity: string): string[] {
  const filter = `label=bot-bottle.identity=${identity}`;
  return [
    ...docker(['ps', '-aq', '--filter', filter]).split('\n'),
    ...docker(['network', 'ls', '-q', '--filter', filter]).split('\n'),
    ...docker(['volume', 'ls', '-q', '--filter', filter]).split('\n'),
  ].filter(Boolean);
}

function assertNothingLeft(identity: string) {
  const left = objectsOf(identity);
  if (left.length > 0) throw new Error(`objects of ${identity} are left after teardown: ${left.join(' ')}`);
}

function removeByLabel(identity: string) {
  const filter = `label=bot-bottle.identity=${identity}`;
  const each = (list: string[], rm: string[]) => {
    for (const id of list.filter(Boolean)) {
      try {
        docker([...rm, id]);
      } catch {
        // already gone
      }
    }
  };
  each(docker(['ps', '-aq', '--filter', filter]).split('\n'), ['rm', '-f']);
  each(docker(['network', 'ls', '-q', '--filter', filter]).split('\n'), ['network', 'rm']);
  each(docker(['volume', 'ls', '-q', '--filter', filter]).split('\n'), ['volume', 'rm', '-f']);
}

let cleanedUp = false;
function cleanup() {
  if (cleanedUp) return;
  cleanedUp = true;
  // What this benchmark started is stopped first, so nothing recreates an object while they are
  // removed: the command under way (its whole process group), then the owners of its detached
  // runs (their locks are in its own BOTTLE_HOME), twice, for an owner that was just starting.
  const kill = (pid: number) => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // exited meanwhile
    }
  };
  if (current !== undefined) kill(-current);
  for (let pass = 0; pass < 2; pass++) {
    if (pass > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
    for (const identity of [agents.runc, agents.auto]) {
      const runs = join(home, 'bottles', identity, 'runs');
      if (!existsSync(runs)) continue;
      for (const runId of readdirSync(runs)) {
        const owner = readLockOwner(join(runs, runId, 'owner.lock'));
        if (owner?.alive) kill(owner.pid);
      }
    }
  }
  const left: string[] = [];
  for (const identity of identities) {
    try {
      removeByLabel(identity);
      left.push(...objectsOf(identity));
    } catch (err) {
      left.push(`${identity}: ${(err as Error).message}`);
    }
  }
  for (const dir of [home, manifestDir, stageRoot]) rmSync(dir, { recursive: true, force: true });
  if (left.length > 0) log(`clean-up: could not remove ${left.join(', ')}`);
  else log(`clean-up: nothing labelled ${identities.join(', ')} is left`);
}

// ---- main ----

function distIsCurrent(): string {
  const entry = join(root, 'dist', 'cli', 'main.js');
  if (!existsSync(entry)) return 'tsx (no dist/: bin/bottle runs the TypeScript source)';
  const built = statSync(entry).mtimeMs;
  const newer: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, name.name);
      if (name.isDirectory()) walk(p);
      else if (name.name.endsWith('.ts') && statSync(p).mtimeMs > built) newer.push(p.slice(root.length + 1));
    }
  };
  for (const dir of ['cli', 'config', 'effects', 'machines', 'store', 'sidecars']) walk(join(root, dir));
  if (newer.length > 0) throw new Error(`dist/ is older than ${newer.slice(0, 3).join(', ')}: run node scripts/build.mjs first`);
  return 'dist/cli/main.js (built JavaScript)';
}

interface Side {
  ms: number[];
  parts: Record<string, number>[];
}

function summarize(label: string, bottle: Side, base: Side) {
  const ratios = bottle.ms.map((b, i) => b / base.ms[i]!);
  const mb = median(bottle.ms);
  const ma = median(base.ms);
  const ratio = mb / ma;
  const partMedians = (side: Side) => {
    const keys = Object.keys(side.parts[0] ?? {});
    return Object.fromEntries(keys.map((k) => [k, median(side.parts.map((p) => p[k] ?? 0))]));
  };
  const result = {
    pass: label,
    rounds: bottle.ms.length,
    bottle: { median: mb, min: Math.min(...bottle.ms), max: Math.max(...bottle.ms), all: bottle.ms, parts: partMedians(bottle) },
    baseline: { median: ma, min: Math.min(...base.ms), max: Math.max(...base.ms), all: base.ms, parts: partMedians(base) },
    ratio,
    roundRatios: { median: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios) },
    goalMet: ratio <= GOAL,
  };
  const out = [
    `\n== ${label}: ${result.rounds} rounds`,
    `bottle run --detach  median ${ms(mb)}  (${ms(result.bottle.min)}–${ms(result.bottle.max)})`,
    `baseline.sh          median ${ms(ma)}  (${ms(result.baseline.min)}–${ms(result.baseline.max)})`,
    `ratio of medians     ${ratio.toFixed(2)}x  (per-round ratios: median ${result.roundRatios.median.toFixed(2)}x, ${result.roundRatios.min.toFixed(2)}–${result.roundRatios.max.toFixed(2)}x); goal <= ${GOAL}x: ${result.goalMet ? 'met' : 'MISSED'}`,
    'bottle, median per part:',
    ...Object.entries(result.bottle.parts).map(([k, v]) => `  ${k.padEnd(56)} ${ms(v)}`),
    'baseline, median per part:',
    ...Object.entries(result.baseline.parts).map(([k, v]) => `  ${k.padEnd(56)} ${ms(v)}`),
  ];
  process.stdout.write(`${out.join('\n')}\n`);
  return result;
}

async function main() {
  const entry = distIsCurrent();
  const server = docker(['version', '-f', '{{.Server.Version}}']);
  const runtimes = docker(['info', '-f', '{{json .Runtimes}}']);
  const hasRunsc = /"runsc"/.test(runtimes) && !flag('--runc-only');
  writeFileSync(
    manifest,
    [
      'version: 1',
      'bottles:',
      '  bench-runc:',
      '    runtime: runc',
      '    egress: { allow: [allowed.test] }',
      '    env: { BENCH_VAR: { value: "launch benchmark" } }',
      '  bench-auto:',
      '    runtime: auto',
      '    egress: { allow: [allowed.test] }',
      '    env: { BENCH_VAR: { value: "launch benchmark" } }',
      'agents:',
      `  ${agents.runc}: { bottle: bench-runc, prompt: "sleep for ten minutes", command: [sleep, "600"] }`,
      `  ${agents.auto}: { bottle: bench-auto, prompt: "sleep for ten minutes", command: [sleep, "600"] }`,
      '',
    ].join('\n'),
  );
  log(`launch bench: ${ROUNDS} rounds (+${WARMUP} warm-up), CLI ${entry}, Node ${process.version}, ${cpus().length} CPUs, Docker ${server}, runsc ${hasRunsc ? 'yes' : 'no'}`);

  // Warm images: `images build` builds nothing when the content tags exist, and names them.
  const built = await must(BOTTLE, ['images', 'build', '--base', 'bootstrap', '--json'], 'bottle images build');
  const imgs = (JSON.parse(built.stdout) as { images: { role: string; tag: string; built: boolean }[] }).images;
  if (imgs.some((i) => i.built)) log('  (images were built now; the rounds below run with them warm)');
  const images = { agent: imgs.find((i) => i.role === 'agent')!.tag, sidecar: imgs.find((i) => i.role === 'sidecar')!.tag };

  const passes: { label: string; agent: string; bottle: string; runtime: string }[] = [{ label: 'runtime runc', agent: agents.runc, bottle: 'bench-runc', runtime: 'runc' }];
  if (hasRunsc) passes.push({ label: 'runtime auto = runsc', agent: agents.auto, bottle: 'bench-auto', runtime: 'runsc' });
  const results = [];
  for (const pass of passes) {
    const bottle: Side = { ms: [], parts: [] };
    const base: Side = { ms: [], parts: [] };
    for (let i = -WARMUP; i < ROUNDS; i++) {
      const doBottle = async () => {
        const r = await bottleRound(pass.agent, pass.runtime);
        if (i >= 0) {
          bottle.ms.push(r.ms);
          bottle.parts.push(r.parts);
        }
        return r.ms;
      };
      const doBase = async () => {
        const r = await baselineRound(images, pass.runtime, pass.bottle);
        if (i >= 0) {
          base.ms.push(r.ms);
          base.parts.push(r.parts);
        }
        return r.ms;
      };
      // The order flips every round, so a drift in the machine's load hits both alike.
      const [first, second] = i % 2 === 0 ? [doBottle, doBase] : [doBase, doBottle];
      const a = await first();
      const b = await second();
      const [tb, ta] = i % 2 === 0 ? [a, b] : [b, a];
      log(`  ${pass.label} ${i < 0 ? 'warm-up' : `round ${i + 1}/${ROUNDS}`}: bottle ${ms(tb)}, baseline ${ms(ta)} (${(tb / ta).toFixed(2)}x)`);
    }
    results.push(summarize(pass.label, bottle, base));
  }
  if (JSON_OUT) {
    writeFileSync(
      JSON_OUT,
      JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, docker: server, cli: entry, images, results }, null, 2),
    );
  }
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    log(`launch bench: ${sig}, cleaning up`);
    cleanup();
    process.exit(130);
  });
}

try {
  await main();
} catch (err) {
  process.exitCode = 1;
  log(`launch bench failed: ${(err as Error).stack ?? err}`);
} finally {
  cleanup();
}
