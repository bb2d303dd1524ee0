import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { acquireRunLock, readLockOwner } from '../../../store/lock.js';
import { useTempDir } from './tmp.js';

const tmp = useTempDir();
const host = hostname();
const me = { pid: process.pid, host };

/** The pid of a process that has exited and been reaped. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '']);
  if (child.pid === undefined) throw new Error('could not spawn a child');
  return child.pid;
}

function writeStaleLock(file: string, pid = deadPid(), token = 'stale-token'): void {
  writeFileSync(file, JSON.stringify({ pid, host, startTime: null, acquiredAt: 0, token }));
}

describe('acquireRunLock', () => {
  it('creates the lock naming its owner and removes it on release', () => {
    const file = join(tmp(), 'run', 'owner.lock');
    const lock = acquireRunLock(file, { ...me, now: 42 });
    expect(lock.takeover).toBe(false);
    const onDisk = JSON.parse(readFileSync(file, 'utf8'));
    expect(onDisk).toMatchObject({ pid: process.pid, host, acquiredAt: 42 });
    expect(onDisk.startTime).toMatch(/^\d+$/);
    expect(readLockOwner(file, { host })).toEqual({ pid: process.pid, host, alive: true });
    lock.release();
    lock.release();
    expect(existsSync(file)).toBe(false);
    expect(readLockOwner(file)).toBeNull();
    expect(readdirSync(join(tmp(), 'run'))).toEqual([]);
  });

  it('refuses a second owner while the first is alive, naming its pid', () => {
    const file = join(tmp(), 'owner.lock');
    const first = acquireRunLock(file, me);
    expect(() => acquireRunLock(file, me)).toThrow(
      expect.objectContaining({ code: 'RUN_LOCKED', message: expect.stringContaining(`pid ${process.pid}`), hint: expect.stringContaining('Try:') }),
    );
    first.release();
    acquireRunLock(file, me).release();
  });

  it('treats an owner on another host as alive', () => {
    const file = join(tmp(), 'owner.lock');
    writeFileSync(file, JSON.stringify({ pid: deadPid(), host: 'elsewhere', startTime: null, acquiredAt: 0, token: 't' }));
    expect(() => acquireRunLock(file, me)).toThrow(expect.objectContaining({ code: 'RUN_LOCKED' }));
    expect(readLockOwner(file, { host })).toMatchObject({ host: 'elsewhere', alive: true });
  });

  it('takes over the lock of a dead owner', () => {
    const file = join(tmp(), 'owner.lock');
    const pid = deadPid();
    writeStaleLock(file, pid);
    expect(readLockOwner(file, { host })).toEqual({ pid, host, alive: false });
    const lock = acquireRunLock(file, me);
    expect(lock.takeover).toBe(true);
    expect(readLockOwner(file, { host })).toEqual({ pid: process.pid, host, alive: true });
    expect(readdirSync(tmp())).toEqual(['owner.lock']);
    lock.release();
    expect(existsSync(file)).toBe(false);
  });

  it('sees through a reused pid by its start time', () => {
    const file = join(tmp(), 'owner.lock');
    writeFileSync(file, JSON.stringify({ pid: process.pid, host, startTime: '1', acquiredAt: 0, token: 't' }));
    expect(readLockOwner(file, { host })?.alive).toBe(false);
    expect(acquireRunLock(file, me).takeover).toBe(true);
  });

  it('does not release a lock that is no longer its own', () => {
    const file = join(tmp(), 'owner.lock');
    const lock = acquireRunLock(file, me);
    writeStaleLock(file, process.pid, 'someone-else');
    lock.release();
    expect(existsSync(file)).toBe(true);
  });

  it('waits out a successor that is mid-takeover, and steps past one that died mid-takeover', () => {
    const file = join(tmp(), 'owner.lock');
    writeStaleLock(file);
    // A live successor holds the first takeover slot of this stale lock.
    writeFileSync(`${file}.takeover-stale-token-1`, JSON.stringify({ pid: process.pid, host, startTime: null, acquiredAt: 0, token: 'live' }));
    expect(() => acquireRunLock(file, me)).toThrow(expect.objectContaining({ code: 'RUN_LOCKED' }));
    // That successor died before replacing the lock: the next one uses the second slot.
    writeFileSync(`${file}.takeover-stale-token-1`, JSON.stringify({ pid: deadPid(), host, startTime: null, acquiredAt: 0, token: 'dead' }));
    const lock = acquireRunLock(file, me);
    expect(lock.takeover).toBe(true);
    expect(readdirSync(tmp())).toEqual(['owner.lock']);
  });

  it('reports a lock file it did not write', () => {
    const file = join(tmp(), 'owner.lock');
    writeFileSync(file, 'garbage');
    expect(() => acquireRunLock(file, me)).toThrow(expect.objectContaining({ code: 'RUN_LOCKED', hint: expect.stringContaining(`rm '${file}'`) }));
  });
});

describe('takeover race', () => {
  const racer = fileURLToPath(new URL('./fixtures/lock-racer.ts', import.meta.url));

  async function race(dir: string, n: number): Promise<{ won: boolean; takeover?: boolean; code?: string }[]> {
    const file = join(dir, 'owner.lock');
    const go = join(dir, 'go');
    const done = join(dir, 'done');
    writeStaleLock(file);
    const children: ChildProcess[] = [];
    const results: Promise<{ won: boolean }>[] = [];
    const ready: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const child = spawn(process.execPath, ['--import', 'tsx', racer, file, go, done], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(child);
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
      ready.push(lines.next().then(() => undefined));
      results.push(ready[i]!.then(() => lines.next()).then((r) => JSON.parse(r.value as string)));
    }
    const exited = children.map((c) => new Promise((resolve) => c.on('exit', resolve)));
    try {
      await Promise.all(ready);
      writeFileSync(go, '');
      return await Promise.all(results);
    } finally {
      writeFileSync(done, '');
      await Promise.all(exited);
    }
  }

  it('lets exactly one of several successors take over a dead owner\'s lock', async () => {
    for (let round = 0; round < 2; round++) {
      const dir = join(tmp(), `round-${round}`);
      spawnSync('mkdir', ['-p', dir]);
      const results = await race(dir, 6);
      const winners = results.filter((r) => r.won);
      expect(winners).toHaveLength(1);
      expect(winners[0]).toMatchObject({ takeover: true });
      for (const r of results.filter((x) => !x.won)) expect(r.code).toBe('RUN_LOCKED');
    }
  });
});

describe('handOver', () => {
  it('names another live process as the owner with no moment without one; the old owner cannot take it back', () => {
    const file = join(tmp(), 'run', 'owner.lock');
    const lock = acquireRunLock(file, me);
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { stdio: 'ignore' });
    try {
      if (child.pid === undefined) throw new Error('could not spawn a child');
      lock.handOver(child.pid);
      expect(readLockOwner(file, { host })).toEqual({ pid: child.pid, host, alive: true });
      // The handed-over lock is the child's: release() by the old owner leaves it alone...
      lock.release();
      expect(existsSync(file)).toBe(true);
      // ...and the old owner acquiring again is refused while the child lives.
      expect(() => acquireRunLock(file, me)).toThrow(/pid/);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
