/**
 * The smallest ustar writer that `putArchive` needs: regular files only, one archive in
 * memory. The daemon extracts it at "/", so entry names are container paths without the
 * leading slash; missing parent directories are created by the daemon.
 */

export interface TarFile {
  /** Absolute path inside the container. */
  path: string;
  mode: number;
  body: Buffer;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch. */
  mtime?: number;
}

const BLOCK = 512;

export function tarFiles(files: TarFile[]): Buffer {
  const parts: Buffer[] = [];
  for (const file of files) {
    parts.push(header(file));
    parts.push(file.body);
    const pad = (BLOCK - (file.body.length % BLOCK)) % BLOCK;
    if (pad > 0) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(parts);
}

function header(file: TarFile): Buffer {
  const { name, prefix } = splitName(file.path);
  const buf = Buffer.alloc(BLOCK);
  buf.write(name, 0, 100, 'utf8');
  octal(buf, file.mode & 0o7777, 100, 8);
  octal(buf, file.uid ?? 0, 108, 8);
  octal(buf, file.gid ?? 0, 116, 8);
  octal(buf, file.body.length, 124, 12);
  octal(buf, Math.max(0, Math.floor(file.mtime ?? 0)), 136, 12);
  buf.fill(0x20, 148, 156); // checksum is computed over the header with this field as spaces
  buf.write('0', 156, 1, 'ascii');
  buf.write('ustar\0', 257, 6, 'ascii');
  buf.write('00', 263, 2, 'ascii');
  buf.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const byte of buf) sum += byte;
  octal(buf, sum, 148, 7);
  buf[155] = 0x20;
  return buf;
}

function octal(buf: Buffer, value: number, offset: number, length: number): void {
  const digits = value.toString(8);
  if (digits.length > length - 1) throw new RangeError(`tar field overflow: ${value}`);
  buf.write(`${digits.padStart(length - 1, '0')}\0`, offset, length, 'ascii');
}

function splitName(path: string): { name: string; prefix: string } {
  if (!path.startsWith('/')) throw new RangeError(`container path must be absolute: ${path}`);
  const relative = path.replace(/^\/+/, '');
  if (relative === '' || relative.endsWith('/') || relative.split('/').some((part) => part === '..' || part === '.')) {
    throw new RangeError(`not a file path: ${path}`);
  }
  if (Buffer.byteLength(relative) <= 100) return { name: relative, prefix: '' };
  // ustar keeps long names as prefix (≤155 bytes) + "/" + name (≤100 bytes).
  for (let i = relative.indexOf('/'); i !== -1; i = relative.indexOf('/', i + 1)) {
    const prefix = relative.slice(0, i);
    const name = relative.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100) return { name, prefix };
  }
  throw new RangeError(`container path too long for ustar: ${path}`);
}
