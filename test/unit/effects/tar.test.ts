import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { type TarEntry, tarBuffer, tarFiles, tarStream } from '../../../effects/docker/tar.js';

// Our archives read back with an independent reader (tar-stream's extract).

interface ReadEntry {
  name: string;
  type: string | null | undefined;
  mode: number | undefined;
  uid: number | undefined;
  gid: number | undefined;
  mtime: number | undefined;
  linkname: string | null | undefined;
  body: Buffer;
}

async function readBack(archive: Buffer): Promise<ReadEntry[]> {
  const out: ReadEntry[] = [];
  const extract = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  extract.on('entry', (h: tar.Headers, stream: NodeJS.ReadableStream, next: () => void) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      out.push({
        name: h.name,
        type: h.type,
        mode: h.mode,
        uid: h.uid,
        gid: h.gid,
        mtime: h.mtime ? h.mtime.getTime() / 1000 : undefined,
        linkname: h.linkname,
        body: Buffer.concat(chunks),
      });
      next();
    });
    stream.resume();
  });
  Readable.from([archive]).pipe(extract);
  await done;
  return out;
}

const binary = Buffer.from(Array.from({ length: 1500 }, (_, i) => (i * 7) % 256));
const longDeep = `${'deep/'.repeat(30)}file.txt`; // 158 bytes: fits ustar's prefix + name split
const longFlat = `dir/${'x'.repeat(180)}.txt`; // one 184-byte segment: needs a pax header
const longTarget = `../${'t'.repeat(150)}`;

describe('tar writer', () => {
  it('round trips files, directories, symlinks, modes, owners, long names and binary bodies', async () => {
    const entries: TarEntry[] = [
      { type: 'dir', path: 'ctx', mode: 0o755 },
      { type: 'dir', path: 'ctx/empty', mode: 0o700, uid: 1000, gid: 1001 },
      { type: 'file', path: 'ctx/run.sh', mode: 0o755, body: Buffer.from('#!/bin/sh\n') },
      { type: 'file', path: 'ctx/blob.bin', mode: 0o600, body: binary, uid: 1000, gid: 1001, mtime: 1_700_000_000 },
      { type: 'file', path: 'ctx/empty.txt', mode: 0o644, body: Buffer.alloc(0) },
      { type: 'file', path: longDeep, mode: 0o644, body: Buffer.from('deep') },
      { type: 'file', path: longFlat, mode: 0o640, body: Buffer.from('flat'), uid: 65534, gid: 65534 },
      { type: 'symlink', path: 'ctx/link', target: 'run.sh' },
      { type: 'symlink', path: 'ctx/far', target: longTarget },
    ];
    const read = await readBack(await tarBuffer(entries));
    expect(read.map((e) => e.name)).toEqual([
      'ctx/',
      'ctx/empty/',
      'ctx/run.sh',
      'ctx/blob.bin',
      'ctx/empty.txt',
      longDeep,
      longFlat,
      'ctx/link',
      'ctx/far',
    ]);
    const byName = new Map(read.map((e) => [e.name.replace(/\/$/, ''), e]));
    expect(byName.get('ctx/empty')).toMatchObject({ type: 'directory', mode: 0o700, uid: 1000, gid: 1001 });
    expect(byName.get('ctx/run.sh')).toMatchObject({ type: 'file', mode: 0o755, uid: 0, gid: 0, mtime: 0 });
    expect(byName.get('ctx/run.sh')?.body.toString()).toBe('#!/bin/sh\n');
    expect(byName.get('ctx/blob.bin')).toMatchObject({ type: 'file', mode: 0o600, uid: 1000, gid: 1001, mtime: 1_700_000_000 });
    expect(byName.get('ctx/blob.bin')?.body.equals(binary)).toBe(true);
    expect(byName.get('ctx/empty.txt')?.body.length).toBe(0);
    expect(byName.get(longDeep)?.body.toString()).toBe('deep');
    expect(byName.get(longFlat)).toMatchObject({ type: 'file', mode: 0o640, uid: 65534, gid: 65534 });
    expect(byName.get(longFlat)?.body.toString()).toBe('flat');
    expect(byName.get('ctx/link')).toMatchObject({ type: 'symlink', linkname: 'run.sh' });
    expect(byName.get('ctx/far')).toMatchObject({ type: 'symlink', linkname: longTarget });
  });

  it('gives the same bytes for the same entries (nothing of the host or the clock)', async () => {
    const entries = (): TarEntry[] => [
      { type: 'dir', path: 'a', mode: 0o755 },
      { type: 'file', path: 'a/b', mode: 0o644, body: Buffer.from('b') },
    ];
    const first = await tarBuffer(entries());
    await new Promise((r) => setTimeout(r, 1100));
    expect((await tarBuffer(entries())).equals(first)).toBe(true);
    // Archives end with two zero blocks and are a whole number of blocks.
    expect(first.length % 512).toBe(0);
    expect(first.subarray(-1024).every((b) => b === 0)).toBe(true);
  });

  it('streams lazily and fails the stream when producing an entry fails', async () => {
    async function* entries(): AsyncGenerator<TarEntry> {
      yield { type: 'file', path: 'ok', mode: 0o644, body: Buffer.from('ok') };
      throw new Error('cannot read the next file');
    }
    const chunks: Buffer[] = [];
    await expect(
      (async () => {
        for await (const c of tarStream(entries())) chunks.push(c as Buffer);
      })(),
    ).rejects.toThrow('cannot read the next file');
  });

  it('writes putArchive payloads at container paths without the leading slash, with owners and times', async () => {
    const archive = await tarFiles([
      { path: '/home/agent/.config/x.json', mode: 0o600, body: Buffer.from('{}'), uid: 1000, gid: 1000, mtime: 42 },
      { path: `/opt/${'n'.repeat(120)}/${'m'.repeat(120)}`, mode: 0o644, body: binary },
    ]);
    const read = await readBack(archive);
    expect(read[0]).toMatchObject({ name: 'home/agent/.config/x.json', mode: 0o600, uid: 1000, gid: 1000, mtime: 42 });
    expect(read[1]?.name).toBe(`opt/${'n'.repeat(120)}/${'m'.repeat(120)}`);
    expect(read[1]?.body.equals(binary)).toBe(true);
  });

  it('refuses container paths that are not plain absolute file paths', async () => {
    for (const bad of ['relative/x', '/', '/dir/', '/a/../b', '/a/./b']) {
      await expect(tarFiles([{ path: bad, mode: 0o644, body: Buffer.from('') }])).rejects.toThrow(RangeError);
    }
  });
});
