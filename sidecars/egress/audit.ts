import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * One egress decision. Written as one JSON line: at once for a refusal, when the connection
 * has ended for an allowed request (so the byte counts and duration are known).
 */
export interface AuditRecord {
  /** When the request arrived (epoch ms). */
  at: number;
  /** The client's address:port. */
  client: string;
  /** The request method (`CONNECT` for tunnels); null when the request could not be read. */
  method: string | null;
  /** The target host and port; null when the request did not name one that could be read. */
  host: string | null;
  port: number | null;
  decision: 'allow' | 'deny';
  /** The allowlist entry that matched, if any. */
  rule: string | null;
  /** Why, in words. */
  reason: string;
  /** Payload bytes client→upstream (request body, or tunnel bytes) and upstream→client. */
  bytes_up: number;
  bytes_down: number;
  /** From arrival to the end of the connection (allowed) or to the refusal (denied). */
  duration_ms: number;
  /** The HTTP status the client got from the proxy (200 for an established tunnel). */
  status?: number;
  /**
   * Set when a credential was seen in the request, which was refused (decision `deny`):
   * `canary` for the placeholder the agent holds, `token` for a real token (see secrets.ts).
   */
  alarm?: 'canary' | 'token';
  /** For a `token` alarm: the first 8 hex digits of the token's sha256 (the cred-proxy audit's token_fp). */
  token_fp?: string;
  /** The vetted address the proxy dialled. */
  address?: string;
  /** What went wrong after an allow (resolution or connection failure, timeout, reset). */
  error?: string;
  /** The run, when the sidecar was given one (BOTTLE_RUN). */
  run?: string;
}

export interface AuditLog {
  write(record: AuditRecord): void;
  close(): void;
}

/**
 * Appends audit lines to `file` (created with its folder if missing), one write(2) per line
 * on an O_APPEND descriptor, so lines never interleave with another writer's; or to stdout
 * when `file` is undefined. Throws at once when the file cannot be opened.
 */
const ORDER = ['at', 'client', 'method', 'host', 'port', 'decision', 'rule', 'reason', 'bytes_up', 'bytes_down', 'duration_ms', 'status', 'alarm', 'token_fp', 'address', 'error', 'run'] as const;

/** The record as one JSON line, its fields always in the same order. */
export function auditLine(r: AuditRecord): string {
  const out: Record<string, unknown> = {};
  for (const k of ORDER) if (r[k] !== undefined) out[k] = r[k];
  return `${JSON.stringify(out)}\n`;
}

export function openAuditLog(file: string | undefined, extra: { run?: string } = {}): AuditLog {
  const stamp = (r: AuditRecord): string => auditLine(extra.run === undefined ? r : { ...r, run: extra.run });
  if (file === undefined) {
    return { write: (r) => void process.stdout.write(stamp(r)), close: () => undefined };
  }
  mkdirSync(dirname(file), { recursive: true });
  let fd: number | undefined = openSync(file, 'a', 0o640);
  return {
    write(r) {
      if (fd === undefined) return;
      const line = Buffer.from(stamp(r));
      writeSync(fd, line, 0, line.length);
    },
    close() {
      if (fd !== undefined) closeSync(fd);
      fd = undefined;
    },
  };
}
