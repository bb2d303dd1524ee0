import { createWriteStream, type WriteStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { BottleError } from '../../config/errors.js';
import type { AgentIO } from '../../machines/ports.js';

/**
 * Splits a non-following `logs` answer into stdout/stderr. Without a TTY Docker frames each
 * chunk with an 8-byte header (stream type, 3 zero bytes, big-endian length); with a TTY the
 * bytes are raw, which shows as a first byte that is no stream type.
 */
export function demuxBuffer(buf: Buffer): { stdout: Buffer; stderr: Buffer } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let offset = 0;
  while (offset + 8 <= buf.length && isFrameHeader(buf, offset)) {
    const length = buf.readUInt32BE(offset + 4);
    (buf[offset] === 2 ? err : out).push(buf.subarray(offset + 8, offset + 8 + length));
    offset += 8 + length;
  }
  if (offset === 0) return { stdout: buf, stderr: Buffer.alloc(0) };
  return { stdout: Buffer.concat(out), stderr: Buffer.concat(err) };
}

function isFrameHeader(buf: Buffer, offset: number): boolean {
  const type = buf[offset];
  return (type === 0 || type === 1 || type === 2) && buf[offset + 1] === 0 && buf[offset + 2] === 0 && buf[offset + 3] === 0;
}

/** Both streams of a `logs` answer as text lines, interleaving lost (good enough for a diagnosis). */
export function logLines(buf: Buffer): string[] {
  const { stdout, stderr } = demuxBuffer(buf);
  return `${stdout.toString('utf8')}\n${stderr.toString('utf8')}`
    .split(/\r?\n/)
    .filter((line) => line.trim() !== '');
}

/** Where an attached container's output goes: the caller's streams and the run's log file. */
export interface OutputSinks {
  stdout: Writable;
  stderr: Writable;
  /** Flushes and closes the log file; the caller's streams stay open. */
  close(): Promise<void>;
}

export function openSinks(io: AgentIO | undefined, logFile: string | undefined): OutputSinks {
  const log: WriteStream | undefined = logFile === undefined ? undefined : createWriteStream(logFile, { flags: 'a', mode: 0o600 });
  let logError: unknown;
  log?.on('error', (err) => {
    logError = err;
  });
  const tee = (target: NodeJS.WritableStream | undefined) =>
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        target?.write(chunk);
        if (log && logError === undefined) log.write(chunk);
        callback();
      },
    });
  return {
    stdout: tee(io?.stdout),
    stderr: tee(io?.stderr),
    close: async () => {
      if (!log) return;
      log.end();
      await finished(log).catch((err: unknown) => {
        logError ??= err;
      });
      if (logError !== undefined) {
        const code = (logError as { code?: unknown }).code;
        throw new BottleError('INTERNAL', `cannot write the agent log ${logFile}: ${String(code ?? logError)}`, 'Check that BOTTLE_HOME is writable, then `bottle resume` the bottle.');
      }
    },
  };
}

/** True when nothing of this container's output has been recorded yet (first attach). */
export async function isUnrecorded(logFile: string | undefined): Promise<boolean> {
  if (logFile === undefined) return true;
  try {
    return (await stat(logFile)).size === 0;
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return true;
    throw err;
  }
}

/** How far before the log file's last write a re-attach asks the daemon for output again. */
const OVERLAP_NS = 2_000_000_000n;
const TAIL_BYTES = 64 * 1024;

/**
 * Where the recorded output of a re-attached container ends: a little before the log file's
 * last write, as Docker's `since` ("seconds.nanoseconds"), with the file's tail to cut what
 * was already recorded (the daemon's timestamps and our writes are not ordered exactly);
 * null when nothing is recorded yet.
 */
export async function recordedUntil(logFile: string | undefined): Promise<{ since: string; tail: Buffer } | null> {
  if (logFile === undefined) return null;
  try {
    const st = await stat(logFile, { bigint: true });
    if (st.size === 0n) return null;
    const handle = await open(logFile, 'r');
    try {
      const length = Number(st.size < BigInt(TAIL_BYTES) ? st.size : BigInt(TAIL_BYTES));
      const tail = Buffer.alloc(length);
      await handle.read(tail, 0, length, Number(st.size) - length);
      return { since: dockerTime(st.mtimeNs > OVERLAP_NS ? st.mtimeNs - OVERLAP_NS : 0n), tail };
    } finally {
      await handle.close();
    }
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * `replayed` without its longest leading run of whole lines that the recorded `tail` already
 * ends with. Cutting only at line ends keeps a repeated short line from being cut by chance.
 */
export function withoutRecorded(tail: Buffer, replayed: Buffer): Buffer {
  let best = 0;
  for (let nl = replayed.indexOf(0x0a); nl !== -1 && nl < TAIL_BYTES; nl = replayed.indexOf(0x0a, nl + 1)) {
    const k = nl + 1;
    const atLineStart = k === tail.length || tail[tail.length - k - 1] === 0x0a;
    if (k <= tail.length && atLineStart && tail.subarray(tail.length - k).equals(replayed.subarray(0, k))) best = k;
  }
  return replayed.subarray(best);
}

export function dockerTime(ns: bigint): string {
  return `${ns / 1_000_000_000n}.${(ns % 1_000_000_000n).toString().padStart(9, '0')}`;
}
