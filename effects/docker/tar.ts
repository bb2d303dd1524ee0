import { Readable } from 'node:stream';

/**
 * A minimal POSIX tar (ustar + pax) writer for Docker build contexts and imports.
 *
 * Owner, group and mtime are fixed (0), so the same entries always give the same
 * bytes: the archive carries exactly what the content hash covered and nothing of
 * the host (no user names, no timestamps).
 */

export type TarEntry =
  | { type: 'file'; path: string; mode: number; body: Buffer }
  | { type: 'dir'; path: string; mode: number }
  | { type: 'symlink'; path: string; target: string };

const BLOCK = 512;
const NAME_MAX = 100;
const SIZE_MAX = 0o77777777777; // 11 octal digits in the size field

function writeString(buf: Buffer, value: string, offset: number, length: number): void {
  buf.write(value, offset, length, 'utf8');
}

function writeOctal(buf: Buffer, value: number, offset: number, length: number): void {
  writeString(buf, `${value.toString(8).padStart(length - 1, '0')}\0`, offset, length);
}

function header(opts: { name: string; mode: number; size: number; typeflag: string; linkname?: string }): Buffer {
  const buf = Buffer.alloc(BLOCK);
  writeString(buf, opts.name, 0, NAME_MAX);
  writeOctal(buf, opts.mode & 0o7777, 100, 8);
  writeOctal(buf, 0, 108, 8);
  writeOctal(buf, 0, 116, 8);
  writeOctal(buf, opts.size, 124, 12);
  writeOctal(buf, 0, 136, 12);
  buf.fill(0x20, 148, 156);
  writeString(buf, opts.typeflag, 156, 1);
  if (opts.linkname) writeString(buf, opts.linkname, 157, NAME_MAX);
  writeString(buf, 'ustar\0', 257, 6);
  writeString(buf, '00', 263, 2);
  let sum = 0;
  for (const byte of buf) sum += byte;
  writeString(buf, `${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
  return buf;
}

/** A pax record is "<len> <key>=<value>\n" where <len> counts the whole record, itself included. */
function paxRecord(key: string, value: string): string {
  const rest = ` ${key}=${value}\n`;
  const restLen = Buffer.byteLength(rest);
  const digits = String(restLen).length;
  let len = restLen + digits;
  // Adding the length's own digits can carry it into one more digit (e.g. 98 + 2 = 100).
  if (String(len).length > digits) len += 1;
  return `${len}${rest}`;
}

function padding(size: number): Buffer {
  const rem = size % BLOCK;
  return rem === 0 ? Buffer.alloc(0) : Buffer.alloc(BLOCK - rem);
}

/** The blocks for one entry: an optional pax header (long names, huge files), the header, the body. */
export function tarEntryBlocks(entry: TarEntry): Buffer[] {
  const name = entry.type === 'dir' && !entry.path.endsWith('/') ? `${entry.path}/` : entry.path;
  const size = entry.type === 'file' ? entry.body.length : 0;
  const linkname = entry.type === 'symlink' ? entry.target : '';
  const pax: string[] = [];
  if (Buffer.byteLength(name) > NAME_MAX) pax.push(paxRecord('path', name));
  if (Buffer.byteLength(linkname) > NAME_MAX) pax.push(paxRecord('linkpath', linkname));
  if (size > SIZE_MAX) pax.push(paxRecord('size', String(size)));

  const blocks: Buffer[] = [];
  if (pax.length > 0) {
    const body = Buffer.from(pax.join(''), 'utf8');
    blocks.push(header({ name: 'PaxHeader', mode: 0o644, size: body.length, typeflag: 'x' }), body, padding(body.length));
  }
  const shortName = Buffer.from(name, 'utf8').subarray(0, NAME_MAX).toString('utf8');
  const shortLink = Buffer.from(linkname, 'utf8').subarray(0, NAME_MAX).toString('utf8');
  if (entry.type === 'file') {
    blocks.push(header({ name: shortName, mode: entry.mode, size: Math.min(size, SIZE_MAX), typeflag: '0' }), entry.body, padding(size));
  } else if (entry.type === 'dir') {
    blocks.push(header({ name: shortName, mode: entry.mode, size: 0, typeflag: '5' }));
  } else {
    blocks.push(header({ name: shortName, mode: 0o777, size: 0, typeflag: '2', linkname: shortLink }));
  }
  return blocks;
}

/** Two zero blocks end an archive. */
export function tarEnd(): Buffer {
  return Buffer.alloc(BLOCK * 2);
}

/** Streams an archive of `entries`; bodies are produced lazily, one entry at a time. */
export function tarStream(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): Readable {
  async function* blocks() {
    for await (const entry of entries) yield* tarEntryBlocks(entry);
    yield tarEnd();
  }
  return Readable.from(blocks(), { objectMode: false });
}
