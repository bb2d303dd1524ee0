import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { type AuditBudgetLimits, createAuditBudget } from '../common/audit-budget.js';
import type { Target } from './policy.js';

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
  /** For a refusal by the address policy: the address's class (`private (RFC 1918)`, `loopback`, `docker host`, ...). */
  address_class?: string;
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

const ORDER = ['at', 'client', 'method', 'host', 'port', 'decision', 'rule', 'reason', 'bytes_up', 'bytes_down', 'duration_ms', 'status', 'alarm', 'token_fp', 'address_class', 'address', 'error', 'run'] as const;

/** The record as one JSON line, its fields always in the same order. */
export function auditLine(r: AuditRecord): string {
  const out: Record<string, unknown> = {};
  for (const k of ORDER) if (r[k] !== undefined) out[k] = r[k];
  return `${JSON.stringify(out)}\n`;
}

/** Buffered lines past this size are written at once rather than at the end of the event-loop turn. */
const FLUSH_BYTES = 64 * 1024;

/**
 * Appends audit lines to `file` (created with its folder if missing) on an O_APPEND descriptor,
 * or to stdout when `file` is undefined. Throws at once when the file cannot be opened.
 *
 * The lines of one event-loop turn are written together, in one write(2) (file) or one
 * stdout write, at the end of that turn (setImmediate), or at once past 64 KiB: a complete
 * line per record, whole lines only, so lines never interleave with another writer's. A line is
 * out before the client can read the answer it records (the answer is read on a later turn).
 * close() and the process's 'exit' write what is still buffered.
 */
export function openAuditLog(file: string | undefined, extra: { run?: string; budget?: AuditBudgetLimits } = {}): AuditLog {
  // `run` is the last field of a line: appended to the JSON text rather than copied into the record.
  const runField = extra.run === undefined ? undefined : `,"run":${JSON.stringify(extra.run)}}\n`;
  const stamp = (r: AuditRecord): string => {
    if (runField === undefined) return auditLine(r);
    return r.run === undefined ? auditLine(r).slice(0, -2) + runField : auditLine({ ...r, run: extra.run });
  };
  let fd: number | undefined;
  if (file !== undefined) {
    mkdirSync(dirname(file), { recursive: true });
    fd = openSync(file, 'a', 0o640);
  }
  let buffered = '';
  let scheduled = false;
  let closed = false;
  const flush = () => {
    scheduled = false;
    if (buffered === '') return;
    const text = buffered;
    buffered = '';
    if (file === undefined) process.stdout.write(text);
    else if (fd !== undefined) {
      const bytes = Buffer.from(text);
      let off = 0;
      while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    }
  };
  const append = (line: string) => {
    buffered += line;
    if (buffered.length >= FLUSH_BYTES) flush();
    else if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
  // Past the budget a line is counted, not written; the counts come out as a summary line.
  const budget = extra.budget
    ? createAuditBudget({ ...extra.budget, source: 'egress', write: (text) => (closed ? undefined : append(text)), ...(extra.run !== undefined ? { run: extra.run } : {}) })
    : undefined;
  process.on('exit', flush);
  return {
    write(r) {
      if (closed) return;
      const line = stamp(r);
      if (budget && !budget.admit(line, r.alarm !== undefined ? `alarm:${r.alarm}` : r.decision)) return;
      append(line);
    },
    close() {
      if (closed) return;
      budget?.close();
      flush();
      closed = true;
      process.removeListener('exit', flush);
      if (fd !== undefined) closeSync(fd);
      fd = undefined;
    },
  };
}

/** Who sent a request and how: the fields every record of that request starts with. */
export interface RequestFacts {
  at: number;
  client: string;
  method: string | null;
}

/** The client's address:port as the audit shows it. */
export function clientOf(socket: { remoteAddress?: string; remotePort?: number }): string {
  if (socket.remoteAddress === undefined) return 'unknown';
  // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; the audit shows them plainly.
  return `${socket.remoteAddress.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '')}:${socket.remotePort}`;
}

/** A refusal: nothing went either way. `target` is null when none could be read (or it would quote a credential). */
export function refusalRecord(
  facts: RequestFacts,
  durationMs: number,
  status: number,
  reason: string,
  target: Target | null,
  rule: string | null = null,
  extra: Partial<AuditRecord> = {},
): AuditRecord {
  return { ...facts, host: target?.host ?? null, port: target?.port ?? null, decision: 'deny', rule, reason, bytes_up: 0, bytes_down: 0, duration_ms: durationMs, status, ...extra };
}

/** A tunnel the allowlist let through: established (200) and ended, or failed before it was. */
export function tunnelRecord(
  facts: RequestFacts,
  durationMs: number,
  target: Target,
  decision: { rule: string; reason: string },
  outcome: { status: number; bytes_up: number; bytes_down: number; address?: string; error?: string },
): AuditRecord {
  return {
    ...facts,
    host: target.host,
    port: target.port,
    decision: 'allow',
    rule: decision.rule,
    reason: decision.reason,
    duration_ms: durationMs,
    ...outcome,
  };
}
