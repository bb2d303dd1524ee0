import { Transform, type TransformCallback } from 'node:stream';

/** What a secret echoed back by an upstream becomes before it reaches the agent. */
export const REDACTED = '[redacted]';
const REDACTED_BYTES = Buffer.from(REDACTED);

/** Every occurrence of every secret in `text` replaced with [redacted] (leftmost first, the longest at one position). */
export function redactText(text: string, secrets: readonly string[]): string {
  if (!containsAny(text, secrets)) return text;
  const r = new Redactor(secrets);
  return Buffer.concat([r.push(Buffer.from(text)), r.end()]).toString();
}

/** Whether `text` holds any of `secrets`. */
export function containsAny(text: string, secrets: readonly string[]): boolean {
  return secrets.some((s) => s !== '' && text.includes(s));
}

/**
 * Streaming redaction of byte chunks. A secret split across chunks is still caught: the end of
 * each chunk that could be the start of a secret is held back until the next chunk (or the
 * end) shows whether it is one. Only such a suffix is held, never a fixed window, so a chunk
 * ending in anything that cannot begin a secret (an SSE event's blank line, a JSON brace) is
 * released whole and at once.
 */
export class Redactor {
  private readonly secrets: Buffer[];
  private pending: Buffer = Buffer.alloc(0);
  /** How many secrets were replaced so far. */
  count = 0;

  constructor(secrets: readonly string[]) {
    // Longest first, so that at one position the longest secret wins.
    this.secrets = [...new Set(secrets)]
      .filter((s) => s !== '')
      .map((s) => Buffer.from(s))
      .sort((a, b) => b.length - a.length);
  }

  /** Takes the next chunk; returns the bytes that can be released now. */
  push(chunk: Buffer): Buffer {
    return this.scan(this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]), false);
  }

  /** The end of the stream: what was held back is released, redacted. */
  end(): Buffer {
    return this.scan(this.pending, true);
  }

  /**
   * Replaces the secrets in `buf` (leftmost first, the longest at one position) and returns
   * what can be released. Unless `final`, the longest suffix that could still be the start of
   * a secret is kept for the next chunk, and so is any match inside it: a longer secret
   * starting there may yet complete, and must win as it would on the whole text.
   */
  private scan(buf: Buffer, final: boolean): Buffer {
    const limit = final ? buf.length : buf.length - this.heldSuffix(buf);
    const parts: Buffer[] = [];
    let pos = 0;
    for (;;) {
      let at = -1;
      let found: Buffer | undefined;
      for (const s of this.secrets) {
        const i = buf.indexOf(s, pos);
        // Longest first: at the same position the first found (longest) stays.
        if (i !== -1 && i < limit && (at === -1 || i < at)) {
          at = i;
          found = s;
        }
      }
      if (found === undefined) break;
      if (at > pos) parts.push(buf.subarray(pos, at));
      parts.push(REDACTED_BYTES);
      this.count += 1;
      pos = at + found.length;
    }
    const end = Math.max(pos, limit);
    if (end > pos) parts.push(buf.subarray(pos, end));
    // A copy: the held bytes must not pin (or alias) the caller's chunk.
    this.pending = Buffer.from(buf.subarray(end));
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /** Length of the longest suffix of buf that is a proper prefix of some secret. */
  private heldSuffix(buf: Buffer): number {
    let best = 0;
    for (const s of this.secrets) {
      const max = Math.min(s.length - 1, buf.length);
      for (let k = max; k > best; k -= 1) {
        const start = buf.length - k;
        if (buf[start] === s[0] && buf.compare(s, 0, k, start, buf.length) === 0) {
          best = k;
          break;
        }
      }
    }
    return best;
  }
}

/** A Transform around Redactor: each chunk is passed on as soon as it is known to be clean. */
export class RedactStream extends Transform {
  readonly redactor: Redactor;
  /** Bytes passed on. */
  bytesOut = 0;

  constructor(secrets: readonly string[]) {
    super();
    this.redactor = new Redactor(secrets);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.release(this.redactor.push(chunk));
    done();
  }

  override _flush(done: TransformCallback): void {
    this.release(this.redactor.end());
    done();
  }

  private release(out: Buffer): void {
    if (out.length === 0) return;
    this.bytesOut += out.length;
    this.push(out);
  }
}
