import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { customAlphabet } from 'nanoid';
import type { Clock, HostEnv, HostFiles, Ids, Stager } from '../machines/ports.js';

/** The small local adapters: staged files, host files, clock, ids, host env. */

export class FsStager implements Stager {
  async stage(dir: string, files: { name: string; content: string | Buffer; mode?: number }[]): Promise<string[]> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const paths: string[] = [];
    for (const f of files) {
      const target = join(dir, f.name);
      const tmp = `${target}.${randomBytes(4).toString('hex')}.tmp`;
      // Created with its final mode, so the content is never readable by others, not even briefly.
      const handle = await open(tmp, 'wx', f.mode ?? 0o600);
      try {
        await handle.writeFile(f.content);
        await handle.chmod(f.mode ?? 0o600);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(tmp, target);
      paths.push(target);
    }
    return paths;
  }

  async removeDir(dir: string): Promise<void> {
    await rm(dir, { recursive: true, force: true });
  }
}

export class NodeHostFiles implements HostFiles {
  async exists(path: string): Promise<boolean> {
    return existsSync(path);
  }
  async readText(path: string): Promise<string> {
    return readFile(path, 'utf8');
  }
  async readBytes(path: string): Promise<Buffer | null> {
    try {
      return await readFile(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }
  async writeText(path: string, content: string | Buffer, mode = 0o600): Promise<void> {
    await new FsStager().stage(dirname(path), [{ name: basename(path), content, mode }]);
  }
  async remove(path: string): Promise<void> {
    await rm(path, { force: true });
  }
}

export class SystemClock implements Clock {
  now(): number {
    return Date.now();
  }
}

const runAlphabet = customAlphabet('0123456789abcdefghijklmnopqrstuvwxyz', 10);

export class NanoIds implements Ids {
  /** Sortable by start time (base-36 ms) with a random tail. */
  runId(): string {
    return `${Date.now().toString(36)}-${runAlphabet()}`;
  }
  commandId(): string {
    return `c-${runAlphabet()}${runAlphabet()}`;
  }
}

export class ProcessHostEnv implements HostEnv {
  constructor(private readonly env: Record<string, string | undefined>) {}
  get(name: string): string | undefined {
    return this.env[name];
  }
}
