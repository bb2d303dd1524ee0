import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ackCommand, pendingCommands, postCommand, quarantineCommand, watchMailbox } from '../../../store/mailbox.js';
import { useTempDir } from './tmp.js';

const tmp = useTempDir();
const box = () => join(tmp(), 'commands');

describe('mailbox', () => {
  it('returns posted commands oldest first, with their payload', () => {
    const dir = box();
    postCommand(dir, { id: 'c2', type: 'proposal.deny', proposal: 'p1', reason: 'no' }, { now: 2_000 });
    postCommand(dir, { id: 'c1', type: 'proposal.approve', proposal: 'p0' }, { now: 1_000 });
    postCommand(dir, { id: 'c3', type: 'stop' }, { now: 10_000 });
    const { commands, malformed } = pendingCommands(dir);
    expect(commands.map((c) => c.id)).toEqual(['c1', 'c2', 'c3']);
    expect(commands[1]).toEqual({ id: 'c2', type: 'proposal.deny', proposal: 'p1', reason: 'no' });
    expect(malformed).toEqual([]);
  });

  it('writes command files readable by the owner only', () => {
    const path = postCommand(box(), { id: 'c1', type: 'stop' });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readdirSync(box())).toEqual([path.split('/').at(-1)]);
  });

  it('ignores temp files of a post in progress', () => {
    const dir = box();
    postCommand(dir, { id: 'c1', type: 'stop' }, { now: 1 });
    writeFileSync(join(dir, '.000000000000002-c2.json.ab12.tmp'), '{"id":');
    expect(pendingCommands(dir)).toEqual({ commands: [{ id: 'c1', type: 'stop' }], malformed: [] });
  });

  it('reports malformed files instead of dropping them, and quarantines them on request', () => {
    const dir = box();
    postCommand(dir, { id: 'ok', type: 'stop' }, { now: 5 });
    writeFileSync(join(dir, '000000000000001-bad.json'), '{"id": "bad"');
    writeFileSync(join(dir, '000000000000002-other.json'), '{"id": "mismatch", "type": "stop"}');
    writeFileSync(join(dir, '000000000000003-notype.json'), '{"id": "notype"}');
    writeFileSync(join(dir, 'stray.txt'), 'x');
    const { commands, malformed } = pendingCommands(dir);
    expect(commands.map((c) => c.id)).toEqual(['ok']);
    expect(malformed.map((m) => m.name)).toEqual(['000000000000001-bad.json', '000000000000002-other.json', '000000000000003-notype.json', 'stray.txt']);
    expect(malformed[0]?.reason).toMatch(/not JSON/);
    expect(malformed[1]?.reason).toMatch(/does not match/);

    for (const m of malformed) quarantineCommand(dir, m.name);
    expect(pendingCommands(dir)).toEqual({ commands: [{ id: 'ok', type: 'stop' }], malformed: [] });
    expect(readdirSync(dir)).toContain('stray.txt.malformed');
  });

  it('acks a command by id, idempotently', () => {
    const dir = box();
    postCommand(dir, { id: 'c1', type: 'stop' }, { now: 1 });
    postCommand(dir, { id: 'c2', type: 'stop' }, { now: 2 });
    ackCommand(dir, 'c1');
    ackCommand(dir, 'c1');
    expect(pendingCommands(dir).commands.map((c) => c.id)).toEqual(['c2']);
  });

  it('reads a mailbox that does not exist yet as empty', () => {
    expect(pendingCommands(box())).toEqual({ commands: [], malformed: [] });
    expect(() => ackCommand(box(), 'x')).not.toThrow();
  });

  it('refuses to post what it would not read back: an id unfit for a file name, no type', () => {
    expect(() => postCommand(box(), { id: '../x', type: 'stop' })).toThrow(expect.objectContaining({ code: 'INTERNAL', message: expect.stringContaining('id') }));
    expect(() => postCommand(box(), { id: 'c1', type: '' })).toThrow(expect.objectContaining({ code: 'INTERNAL', message: expect.stringContaining('type') }));
    expect(readdirSync(tmp())).toEqual([]);
  });
});

describe('watchMailbox', () => {
  function nextChange(dir: string, pollMs?: number): { changed: Promise<void>; stop: () => void } {
    let resolve!: () => void;
    const changed = new Promise<void>((r) => {
      resolve = r;
    });
    const stop = watchMailbox(dir, () => resolve(), pollMs === undefined ? {} : { pollMs });
    return { changed, stop };
  }

  it('notices a new command', async () => {
    const dir = box();
    const { changed, stop } = nextChange(dir);
    try {
      postCommand(dir, { id: 'c1', type: 'stop' });
      await changed;
      expect(pendingCommands(dir).commands).toHaveLength(1);
    } finally {
      stop();
    }
  });

  it('reports commands already waiting when it starts', async () => {
    const dir = box();
    postCommand(dir, { id: 'c1', type: 'stop' });
    const { changed, stop } = nextChange(dir, 60_000);
    try {
      await changed;
    } finally {
      stop();
    }
  });

  it('stays quiet for temp files and after stop', async () => {
    const dir = box();
    let calls = 0;
    const stop = watchMailbox(dir, () => calls++, { pollMs: 10 });
    writeFileSync(join(dir, '.x.tmp'), '');
    await new Promise((r) => setTimeout(r, 60));
    expect(calls).toBe(0);
    stop();
    postCommand(dir, { id: 'c1', type: 'stop' });
    await new Promise((r) => setTimeout(r, 60));
    expect(calls).toBe(0);
  });
});
