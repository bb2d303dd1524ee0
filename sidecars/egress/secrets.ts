import * as crypto from 'node:crypto';
import { isTokenByte, TOKEN_MAX_LENGTH, TOKEN_MIN_LENGTH } from '../../config/token-rule.js';

/**
 * The canary: credentials the egress proxy refuses to let out in a request it can read.
 * Node built-ins only (Debian's Node 18 in the sidecar image).
 *
 * - The placeholder the agent holds instead of a real token (BOTTLE_EGRESS_CANARY) is looked
 *   for as a plain substring.
 * - Real tokens are known only as `<length>:<sha256 hex>` (BOTTLE_EGRESS_SECRET_HASHES), so the
 *   sidecar never holds one but can still recognise one: every window of that many bytes that
 *   could be the token is hashed and looked up. The one token rule (config/token-rule.ts),
 *   checked by the host at load, rotation and approval and by the cred-proxy when it loads a
 *   token, guarantees a token is 8 to 8192 printable ASCII characters without spaces
 *   (0x21..0x7e, isTokenByte), so a token in a request is a substring of a
 *   maximal run of such bytes; the windows checked are every L-byte window inside every run of
 *   length >= L, for each distinct length L in the list. That is exact (no token occurrence of
 *   that shape is missed, whatever is around it) and costs one SHA-256 of L bytes per byte of
 *   run per distinct length, nothing more: linear in the body, with a held-back tail of at most
 *   the longest length - 1 bytes. Measured for a 108-byte token: a body that is one unbroken
 *   run (base64, minified JSON) takes about 2 s per MiB per distinct token length with Node
 *   18's createHash (1.2 s where crypto.hash exists); prose or binary bodies, whose runs are
 *   short, about 10-20 ms per MiB. Runs shorter than the shortest token cost only the byte test.
 *   The proxy checks a body in slices (proxy.ts SCAN_SLICE) so other connections are served
 *   in between.
 * - What is read: the request target (as sent and percent-decoded), every header name and value
 *   (and the credentials of `Basic` authorization, base64-decoded), and a plain-HTTP body as it
 *   streams (as sent: no content coding is undone). A CONNECT tunnel's payload is opaque (TLS)
 *   and is not read: only the CONNECT request line and headers are checked.
 */

export type Alarm = 'canary' | 'token';

export interface Detection {
  alarm: Alarm;
  /** For a real token: the first 8 hex digits of its sha256 (the cred-proxy audit's token_fp). */
  fingerprint?: string;
}

export interface SecretHash {
  /** The token's length in bytes. */
  length: number;
  /** Its sha256, lowercase hex. */
  sha256: string;
}

export interface SecretsConfig {
  /** The placeholder token; undefined or '' for none. */
  canary?: string;
  /** The real tokens' lengths and hashes. */
  hashes?: readonly SecretHash[];
}

export const MIN_SECRET_LENGTH = TOKEN_MIN_LENGTH;
/** A token longer than this is not accepted in the hash list (the proxy holds back up to this many bytes of a body). */
export const MAX_SECRET_LENGTH = TOKEN_MAX_LENGTH;

type Parsed<T> = { ok: true; value: T } | { ok: false; message: string };

/** Reads BOTTLE_EGRESS_CANARY (never quoting it): unset or empty is none; else 8+ printable ASCII characters. */
export function parseCanary(text: string | undefined): Parsed<string | undefined> {
  if (text === undefined || text === '') return { ok: true, value: undefined };
  if (text.length < MIN_SECRET_LENGTH) return { ok: false, message: `the placeholder must be at least ${MIN_SECRET_LENGTH} characters (it has ${text.length})` };
  if (!/^[\x20-\x7e]+$/.test(text)) return { ok: false, message: 'the placeholder must be printable ASCII' };
  return { ok: true, value: text };
}

/**
 * Reads BOTTLE_EGRESS_SECRET_HASHES: comma-separated `<length>:<sha256 hex>` entries (blank
 * entries skipped, duplicates merged). Errors name the entry by position, never by content:
 * a real token put there by mistake must not end up in a log.
 */
export function parseSecretHashes(text: string | undefined): { hashes: SecretHash[]; errors: string[] } {
  const hashes: SecretHash[] = [];
  const errors: string[] = [];
  const seen = new Set<string>();
  const parts = (text ?? '').split(',');
  parts.forEach((raw, i) => {
    const entry = raw.trim();
    if (entry === '') return;
    const m = /^([1-9][0-9]{0,5}):([0-9a-fA-F]{64})$/.exec(entry);
    if (!m) {
      errors.push(`entry ${i + 1} is not <length>:<sha256 hex>`);
      return;
    }
    const length = Number(m[1]);
    if (length < MIN_SECRET_LENGTH || length > MAX_SECRET_LENGTH) {
      errors.push(`entry ${i + 1}: a token length must be from ${MIN_SECRET_LENGTH} to ${MAX_SECRET_LENGTH}`);
      return;
    }
    const sha256 = m[2]!.toLowerCase();
    const key = `${length}:${sha256}`;
    if (seen.has(key)) return;
    seen.add(key);
    hashes.push({ length, sha256 });
  });
  return { hashes, errors };
}

type OneShotHash = (algorithm: string, data: Uint8Array, encoding: 'hex') => string;
/** crypto.hash (Node >= 20.12) skips createHash's per-call object; Node 18 has only createHash. */
const oneShot = (crypto as unknown as { hash?: OneShotHash }).hash;
const sha256Hex: (data: Uint8Array) => string = oneShot
  ? (data) => oneShot('sha256', data, 'hex')
  : (data) => crypto.createHash('sha256').update(data).digest('hex');

/** A byte a token can contain: the token rule's, printable ASCII other than space. */
const tokenByte = isTokenByte;

export interface BodyScan {
  /**
   * Takes the next chunk. Returns the bytes that are safe to forward now (never a byte of a
   * credential, even one that the next chunk would complete: such a suffix is held back), or
   * the detection. After a detection the scanner must not be used again.
   */
  push(chunk: Buffer): { detection: Detection; forward?: undefined } | { detection?: undefined; forward: Buffer };
  /** The end of the stream: what was held back (already checked). */
  end(): Buffer;
}

export interface SecretScanner {
  /** Whether there is anything to look for. */
  readonly active: boolean;
  /** Whether there are token hashes, whose check costs a hash per window (the placeholder alone is a substring search). */
  readonly hashing: boolean;
  /** Looks for a credential in one complete value (a URL, a header line). */
  scan(value: string | Uint8Array): Detection | undefined;
  /**
   * Looks for a credential in the request target and headers, in the places listed in the
   * file comment; `where` says where, in words that never quote the value.
   */
  scanHead(url: string, rawHeaders: readonly string[]): (Detection & { where: string }) | undefined;
  /** A scanner for one body, streamed. */
  body(): BodyScan;
}

/** Percent-decoding that never throws: %XX becomes its byte, anything else stays as it is. */
function percentDecode(text: string): string {
  return text.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
}

export function createSecretScanner(config: SecretsConfig = {}): SecretScanner {
  const canary = config.canary ? Buffer.from(config.canary, 'latin1') : undefined;
  const byLength = new Map<number, Set<string>>();
  for (const h of config.hashes ?? []) {
    const set = byLength.get(h.length) ?? new Set<string>();
    set.add(h.sha256.toLowerCase());
    byLength.set(h.length, set);
  }
  const lengths = [...byLength.keys()].sort((a, b) => a - b);
  const sets = lengths.map((l) => byLength.get(l)!);
  const shortest = lengths[0] ?? Number.POSITIVE_INFINITY;
  const longest = lengths.at(-1) ?? 0;
  const active = canary !== undefined || lengths.length > 0;

  /**
   * The detection in `buf` among occurrences that end at or after `firstEnd` (a byte offset:
   * what ends before it was checked by an earlier call).
   */
  const find = (buf: Uint8Array, firstEnd: number): Detection | undefined => {
    if (canary !== undefined && buf.length >= canary.length) {
      const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
      if (b.indexOf(canary, Math.max(0, firstEnd - canary.length)) !== -1) return { alarm: 'canary' };
    }
    if (lengths.length === 0) return undefined;
    // A plain Uint8Array view: its subarray is cheaper than a Buffer's.
    const bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
    let run = 0;
    for (let i = 0; i < bytes.length; i++) {
      if (!tokenByte(bytes[i]!)) {
        run = 0;
        continue;
      }
      run += 1;
      const end = i + 1;
      if (run < shortest || end < firstEnd) continue;
      for (let k = 0; k < lengths.length; k++) {
        const l = lengths[k]!;
        if (run < l) break;
        const hex = sha256Hex(bytes.subarray(end - l, end));
        if (sets[k]!.has(hex)) return { alarm: 'token', fingerprint: hex.slice(0, 8) };
      }
    }
    return undefined;
  };

  const scan = (value: string | Uint8Array): Detection | undefined => {
    if (!active) return undefined;
    return find(typeof value === 'string' ? Buffer.from(value, 'latin1') : value, 0);
  };

  const scanHead = (url: string, rawHeaders: readonly string[]) => {
    if (!active) return undefined;
    const inUrl = scan(url) ?? (url.includes('%') ? scan(percentDecode(url)) : undefined);
    if (inUrl) return { ...inUrl, where: 'the request target' };
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      const name = rawHeaders[i]!;
      const value = rawHeaders[i + 1]!;
      const inName = scan(name);
      if (inName) return { ...inName, where: 'a header name' };
      const label = /^[A-Za-z0-9-]{1,64}$/.test(name) ? `the ${name} header` : 'a header';
      const inValue = scan(value);
      if (inValue) return { ...inValue, where: label };
      const basic = /^\s*basic\s+([A-Za-z0-9+/_-]+=*)\s*$/i.exec(value);
      if (basic) {
        const decoded = scan(Buffer.from(basic[1]!, 'base64'));
        if (decoded) return { ...decoded, where: `${label} (Basic credentials)` };
      }
    }
    return undefined;
  };

  /**
   * How much of the end of `buf` could be the start of a credential the next chunk completes:
   * for a token, the trailing run of token bytes (at most the longest length - 1); for the
   * canary, the longest suffix that is a proper prefix of it.
   */
  const heldSuffix = (buf: Buffer): number => {
    let held = 0;
    if (lengths.length > 0) {
      const cap = Math.min(longest - 1, buf.length);
      while (held < cap && tokenByte(buf[buf.length - 1 - held]!)) held += 1;
    }
    if (canary !== undefined) {
      for (let k = Math.min(canary.length - 1, buf.length); k > held; k--) {
        if (buf.subarray(buf.length - k).equals(canary.subarray(0, k))) {
          held = k;
          break;
        }
      }
    }
    return held;
  };

  const body = (): BodyScan => {
    let tail: Buffer = Buffer.alloc(0);
    return {
      push(chunk) {
        if (!active) return { forward: chunk };
        const buf = tail.length === 0 ? chunk : Buffer.concat([tail, chunk]);
        const detection = find(buf, tail.length + 1);
        if (detection) {
          tail = Buffer.alloc(0);
          return { detection };
        }
        const cut = buf.length - heldSuffix(buf);
        tail = Buffer.from(buf.subarray(cut)); // a copy: the chunk is not kept alive by its tail
        return { forward: buf.subarray(0, cut) };
      },
      end() {
        const rest = tail;
        tail = Buffer.alloc(0);
        return rest;
      },
    };
  };

  return { active, hashing: lengths.length > 0, scan, scanHead, body };
}
