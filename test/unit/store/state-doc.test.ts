import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EventLog } from '../../../store/event-log.js';
import { bottleDir, eventsFile, runDir, stateFile } from '../../../store/paths.js';
import { listBottles, listRuns, readStateDoc, type StateDoc, writeStateDoc } from '../../../store/state-doc.js';
import { useTempDir } from './tmp.js';

const tmp = useTempDir();

const doc: StateDoc = {
  identity: 'coder-0123456789ab',
  runId: 'r1',
  state: 'running',
  agentContainer: 'bottle-coder-0123456789ab',
  containers: ['bottle-coder-0123456789ab', 'bottle-coder-0123456789ab-egress'],
  updatedAt: 1_700_000_000_000,
};

function startRun(home: string, identity: string, runId: string, at: number): void {
  const log = EventLog.open(eventsFile(home, identity, runId), { clock: { now: () => at } });
  log.append({ kind: 'run.started', runId, identity, machineVersion: '1', input: {} });
}

describe('state document', () => {
  it('round-trips, replacing the file whole', () => {
    const home = tmp();
    writeStateDoc(home, doc);
    expect(readStateDoc(home, doc.identity)).toEqual(doc);
    const done = { ...doc, state: 'done', exitCode: 0, updatedAt: doc.updatedAt + 1 };
    writeStateDoc(home, done);
    expect(readStateDoc(home, doc.identity)).toEqual(done);
    const failed = { ...doc, state: 'failed', error: { code: 'DOCKER_ERROR', message: 'boom' } };
    writeStateDoc(home, failed);
    expect(readStateDoc(home, doc.identity)).toEqual(failed);
    expect(readdirSync(bottleDir(home, doc.identity))).toEqual(['state.json']);
  });

  it('reads a missing document as null', () => {
    expect(readStateDoc(tmp(), 'nobody')).toBeNull();
  });

  it('names the file of a damaged document', () => {
    const home = tmp();
    mkdirSync(bottleDir(home, 'x'), { recursive: true });
    writeFileSync(stateFile(home, 'x'), '{"identity": "x"}');
    expect(() => readStateDoc(home, 'x')).toThrow(expect.objectContaining({ code: 'LOG_CORRUPT', message: expect.stringContaining(stateFile(home, 'x')) }));
  });

  it('refuses to write an invalid document', () => {
    expect(() => writeStateDoc(tmp(), { ...doc, containers: undefined } as unknown as StateDoc)).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
  });
});

describe('listBottles', () => {
  it('lists nothing for a fresh home', () => {
    expect(listBottles(tmp())).toEqual([]);
  });

  it('lists each bottle with its runs oldest first and its current run', () => {
    const home = tmp();
    startRun(home, 'coder', 'zzz', 100);
    startRun(home, 'coder', 'aaa', 200);
    mkdirSync(runDir(home, 'coder', 'mmm'), { recursive: true });
    expect(listRuns(home, 'coder')).toEqual(['zzz', 'aaa', 'mmm']);

    writeStateDoc(home, { ...doc, identity: 'web', runId: 'w1' });
    startRun(home, 'web', 'w1', 50);
    startRun(home, 'web', 'w2', 60);

    const listing = listBottles(home);
    expect(listing.map((b) => [b.identity, b.runId, b.runs, b.state?.state ?? null])).toEqual([
      ['coder', 'mmm', ['zzz', 'aaa', 'mmm'], null],
      ['web', 'w1', ['w1', 'w2'], 'running'],
    ]);
  });

  it('keeps listing past a damaged state document or log', () => {
    const home = tmp();
    startRun(home, 'ok', 'r1', 1);
    mkdirSync(runDir(home, 'bad', 'r1'), { recursive: true });
    writeFileSync(eventsFile(home, 'bad', 'r1'), 'nonsense\n');
    writeFileSync(stateFile(home, 'bad'), 'nonsense');
    const [bad, ok] = listBottles(home);
    expect(bad).toMatchObject({ identity: 'bad', runId: 'r1', state: null, problem: { code: 'LOG_CORRUPT' } });
    expect(ok).toMatchObject({ identity: 'ok', runId: 'r1', runs: ['r1'] });
  });
});
