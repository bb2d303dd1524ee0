/**
 * Event log benchmark: is an append O(1)? Run with
 *
 *   npx tsx bench/event-log/append.ts [DIR]
 *
 * DIR (default: a fresh folder under the OS temp dir) should be on the disk the store uses,
 * since every append fsyncs. Prints the figures that docs/benchmarks.md records.
 *
 * Measured, each as the median over several rounds:
 *  - per-append cost of EventLog.append (sync, fsync per record) on a log of 1,000 events and
 *    of 100,000 events, and their ratio (goal: within 1.5x). The two logs take turns append by
 *    append, so that the machine's noise (fsync latency above all) hits both alike;
 *  - per-append cost of plain lowdb (Low + JSONFile, rewrites the file, no fsync) at 1,000
 *    and 10,000 events: the baseline the append-only adapter replaces;
 *  - read + parse + validate time of a 100,000-event log (what resume and replay pay).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Low } from 'lowdb';
import { JSONFile } from 'lowdb/node';
import { EventLog } from '../../store/event-log.js';
import type { LogRecord, NewRecord } from '../../store/records.js';

const ROUNDS = 7;
const APPENDS = 500;
const LOWDB_APPENDS_1K = 40;
const LOWDB_APPENDS_10K = 12;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};
const ms = (x: number): string => (x >= 100 ? x.toFixed(0) : x >= 1 ? x.toFixed(2) : x.toFixed(3));

/** A mix resembling a real run: events, effect journal entries, state records. */
function record(i: number): NewRecord {
  const step = `step${i % 17}`;
  const key = `run-bench:${step}:${1 + (i % 3)}`;
  switch (i % 4) {
    case 0:
      return { kind: 'event', event: { type: `xstate.done.actor.${step}`, output: { id: `c0ffee${i.toString(16).padStart(10, '0')}`, created: i % 2 === 0 } } };
    case 1:
      return { kind: 'effect.intent', key, step, attempt: 1 + (i % 3) };
    case 2:
      return { kind: 'effect.completed', key, output: { name: `bottle-coder-0123456789ab-${step}`, labels: { 'bot-bottle.run': 'run-bench' } } };
    default:
      return { kind: 'state', value: 'preparingSidecars', status: 'active' };
  }
}

function fullRecord(i: number): LogRecord {
  return { seq: i + 1, at: 1_700_000_000_000 + i, ...record(i) } as LogRecord;
}

/** Writes an n-event log directly (building it through append would measure the setup, not the log). */
function writeLog(file: string, n: number): void {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) lines.push(JSON.stringify(fullRecord(i)));
  writeFileSync(file, `${lines.join('\n')}\n`);
}

/** Median cost of an append to each log, the two taking turns (and turns about who goes first). */
function timeAppends(small: string, big: string): { m1k: number; m100k: number } {
  const clock = { now: () => Date.now() };
  const logs = [EventLog.open(small, { clock }), EventLog.open(big, { clock })] as const;
  const samples: [number[], number[]] = [[], []];
  for (let i = 0; i < APPENDS; i++) {
    for (const which of i % 2 ? [1, 0] : [0, 1]) {
      const log = logs[which as 0 | 1];
      const rec = record(log.lastSeq);
      const t0 = performance.now();
      log.append(rec);
      samples[which as 0 | 1].push(performance.now() - t0);
    }
  }
  return { m1k: median(samples[0]), m100k: median(samples[1]) };
}

async function timeLowdb(file: string, n: number, appends: number): Promise<number> {
  const db = new Low<LogRecord[]>(new JSONFile<LogRecord[]>(file), []);
  for (let i = 0; i < n; i++) db.data.push(fullRecord(i));
  await db.write();
  const samples: number[] = [];
  for (let i = 0; i < appends; i++) {
    db.data.push(fullRecord(db.data.length));
    const t0 = performance.now();
    await db.write();
    samples.push(performance.now() - t0);
  }
  return median(samples);
}

function timeRead(file: string): number {
  const t0 = performance.now();
  const n = EventLog.read(file).length;
  const t = performance.now() - t0;
  if (n < 100_000) throw new Error(`read ${n} records from ${file}`);
  return t;
}

async function main(): Promise<void> {
  const given = process.argv[2];
  const dir = given ?? mkdtempSync(join(tmpdir(), 'bottle-bench-'));
  const started = performance.now();
  const at1k: number[] = [];
  const at100k: number[] = [];
  const ratios: number[] = [];
  const reads: number[] = [];
  const low1k: number[] = [];
  const low10k: number[] = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const small = join(dir, `small-${round}.jsonl`);
      const big = join(dir, `big-${round}.jsonl`);
      writeLog(small, 1_000);
      writeLog(big, 100_000);
      reads.push(timeRead(big));
      const { m1k, m100k } = timeAppends(small, big);
      at1k.push(m1k);
      at100k.push(m100k);
      ratios.push(m100k / m1k);
      if (round < 3) {
        low1k.push(await timeLowdb(join(dir, `lowdb-1k-${round}.json`), 1_000, LOWDB_APPENDS_1K));
        low10k.push(await timeLowdb(join(dir, `lowdb-10k-${round}.json`), 10_000, LOWDB_APPENDS_10K));
      }
      rmSync(small);
      rmSync(big);
      console.error(`round ${round + 1}/${ROUNDS}: append ${ms(m1k)} ms @1k, ${ms(m100k)} ms @100k, ratio ${(m100k / m1k).toFixed(2)}`);
    }
  } finally {
    if (given === undefined) rmSync(dir, { recursive: true, force: true });
  }

  const ratio = median(ratios);
  console.log(`EventLog.append, median per append (${APPENDS} appends x ${ROUNDS} rounds, fsync each):`);
  console.log(`  at 1,000 events:    ${ms(median(at1k))} ms`);
  console.log(`  at 100,000 events:  ${ms(median(at100k))} ms`);
  console.log(`  ratio 100k/1k:      ${ratio.toFixed(2)}x (per round: ${ratios.map((r) => r.toFixed(2)).join(', ')}) ${ratio <= 1.5 ? 'OK' : 'ABOVE GOAL 1.5x'}`);
  console.log(`lowdb Low+JSONFile, median per append (rewrite, no fsync, ${low1k.length} rounds):`);
  console.log(`  at 1,000 events:    ${ms(median(low1k))} ms`);
  console.log(`  at 10,000 events:   ${ms(median(low10k))} ms`);
  console.log(`EventLog.read of 100,000 events (read, JSON.parse, zod, seq check): ${ms(median(reads))} ms median of ${reads.length}`);
  console.log(`total ${((performance.now() - started) / 1000).toFixed(1)} s`);
}

await main();
