/**
 * Fold and resume at 100,000 events.
 *
 * Builds a real run's log on the fake backend (the engine, its journal and its snapshot
 * records every 500 events), drives it to 100,000 events with `agent.output` events, stops
 * the host as a crash would, then measures, in the same run:
 *   - fold: EventLog.read + folding every event through the machine from the start
 *     (what `bottle replay` pays), and the fold alone;
 *   - resume: RunHost.resume from the last snapshot record (open the tail, fold it,
 *     restart the actor) until the agent is running again;
 *   - baseline: EventLog.read of the whole log (what a resume without snapshots pays
 *     before it can fold anything).
 * Usage: npx tsx bench/engine/resume.ts [EVENTS=100000] [ROUNDS=5]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { foldLog } from '../../engine/fold.js';
import { RunHost } from '../../engine/host.js';
import { openBackend } from '../../engine/backend.js';
import { stepDeps } from '../../engine/adapters.js';
import type { EngineContext } from '../../engine/context.js';
import { validateManifest } from '../../config/manifest.js';
import type { BottleInput } from '../../machines/bottle.machine.js';
import { createSteps } from '../../engine/steps/index.js';
import { EventLog } from '../../store/event-log.js';
import { eventsFile } from '../../store/paths.js';

const EVENTS = Number(process.argv[2] ?? 100_000);
const ROUNDS = Number(process.argv[3] ?? 5);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main() {
  const home = mkdtempSync(join(tmpdir(), 'bottle-bench-'));
  const ctx: EngineContext = { env: { BOTTLE_BACKEND: 'fake', BOTTLE_HOME: home }, cwd: home, homeDir: home, home };
  const m = validateManifest({
    version: 1,
    bottles: { box: { egress: { allow: ['allowed.test'] } } },
    agents: { coder: { bottle: 'box', prompt: 'p', command: ['fake-agent', '--ms', 'forever'] } },
  });
  if (!m.ok) throw new Error('manifest');
  const input: BottleInput = {
    runId: 'bench',
    identity: 'coder',
    manifest: m.manifest,
    manifestDir: home,
    homeDir: home,
    home,
    agent: 'coder',
    cwd: null,
    overrides: {},
    images: { agent: 'a:1', sidecar: 's:1' },
  };
  let state = '';
  const backend = await openBackend(ctx);
  const deps = {
    home,
    steps: createSteps(stepDeps(ctx, backend, { progress: () => undefined })),
    clock: { now: () => Date.now() },
    snapshotEvery: 500,
    onState: (s: string) => {
      state = s;
    },
  };
  const host = RunHost.start(deps, input);
  while (state !== 'running') await new Promise((r) => setTimeout(r, 5));
  const t0 = performance.now();
  const file = eventsFile(home, 'coder', 'bench');
  let count = EventLog.read(file).filter((r) => r.kind === 'event').length;
  while (count < EVENTS) {
    host.send({ type: 'agent.output', bytes: 100 });
    count++;
  }
  host.detach();
  const buildMs = performance.now() - t0;
  const records = EventLog.read(file);
  console.error(`built ${records.length} records (${count} events) in ${(buildMs / 1000).toFixed(1)} s`);

  const readMs: number[] = [];
  const foldMs: number[] = [];
  const resumeMs: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    let t = performance.now();
    const all = EventLog.read(file);
    readMs.push(performance.now() - t);
    t = performance.now();
    const folded = foldLog(all, file, { fromSnapshot: false });
    foldMs.push(performance.now() - t);
    if (folded.snapshot.context.outputBytes !== (count - 0) * 100 && round === 0) {
      console.error(`note: folded output bytes ${folded.snapshot.context.outputBytes}`);
    }
    state = '';
    t = performance.now();
    const resumed = RunHost.resume(deps, 'coder', 'bench');
    while (state !== 'running') await new Promise((r) => setImmediate(r));
    resumeMs.push(performance.now() - t);
    resumed.detach();
  }
  const result = {
    events: count,
    records: records.length,
    read_all_ms: median(readMs),
    fold_all_ms: median(foldMs),
    replay_ms: median(readMs) + median(foldMs),
    fold_us_per_event: (median(foldMs) * 1000) / count,
    resume_from_snapshot_ms: median(resumeMs),
    resume_vs_read_all: median(resumeMs) / median(readMs),
    rounds: ROUNDS,
  };
  console.log(JSON.stringify(result, null, 2));
}

await main();
