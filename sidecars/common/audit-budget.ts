/**
 * A bound on what a sidecar writes to its audit (its stdout, which Docker keeps in a rotated
 * json-file log and the engine collects at teardown). An agent that floods a sidecar with
 * requests it knows will be refused must not fill the host's disk, and it must not be able to
 * make a line vanish either: past the bound, lines are not written but counted, by kind, and
 * the counts are written as a summary record, so the audit always says what it left out.
 *
 * The bound: a token bucket of `burst` lines refilled at `perSecond`, and `maxBytes` of
 * detailed lines in the sidecar's lifetime. A summary (`type: "audit.summary"`) is written at
 * most every `summaryMs` while lines are being held back, and at exit; summaries themselves are
 * small and not counted against the bound. The defaults match machines/limits.ts (AUDIT_LIMITS),
 * which sizes Docker's log rotation so that nothing the budget lets through is rotated away.
 *
 * Node 18 APIs only (bundled into the sidecar programs).
 */

export type AuditBudgetLimits = Pick<AuditBudgetOptions, 'burst' | 'perSecond' | 'maxBytes' | 'summaryMs'>;

export interface AuditBudgetOptions {
  burst?: number;
  perSecond?: number;
  maxBytes?: number;
  summaryMs?: number;
  /** Where lines go (whole lines, each ending in a newline). */
  write: (text: string) => void;
  /** The sidecar's name in the summary (`egress`, `cred-proxy`, ...). */
  source: string;
  /** The run, when known: stamped on summaries like on every other line. */
  run?: string;
  now?: () => number;
  /** Timers, replaceable in tests. */
  setTimer?: (fn: () => void, ms: number) => { unref?: () => void };
}

export interface AuditSummary {
  at: number;
  type: 'audit.summary';
  source: string;
  /** Why lines were held back since the last summary: the rate, the lifetime size, or both. */
  reason: 'rate' | 'size' | 'rate+size';
  /** Lines held back since the last summary, by kind (e.g. `deny`, `allow`, `request`). */
  dropped: Record<string, number>;
  dropped_lines: number;
  dropped_bytes: number;
  /** When the first and the last held-back line of this summary were offered (epoch ms). */
  first_at: number;
  last_at: number;
  /** Held back in this sidecar's lifetime, this summary included. */
  total_dropped: number;
  run?: string;
}

export const AUDIT_BUDGET_DEFAULTS = {
  burst: 1000,
  perSecond: 100,
  maxBytes: 24 * 1024 * 1024,
  summaryMs: 5000,
};

export interface AuditBudget {
  /** Whether the line may be written now (the caller writes it); when not, it is counted under `kind` for the next summary. */
  admit(line: string, kind: string): boolean;
  /** admit() and, when admitted, write the line. */
  offer(line: string, kind: string): boolean;
  /** Writes the summary of what is held back now, if anything (also done on a timer and at exit). */
  flush(): void;
  readonly stats: { written: number; dropped: number; writtenBytes: number };
  /** Writes the summary and stops writing one at exit (tests); later lines are still counted and summarised on flush(). */
  close(): void;
}

export function createAuditBudget(opts: AuditBudgetOptions): AuditBudget {
  const burst = opts.burst ?? AUDIT_BUDGET_DEFAULTS.burst;
  const perSecond = opts.perSecond ?? AUDIT_BUDGET_DEFAULTS.perSecond;
  const maxBytes = opts.maxBytes ?? AUDIT_BUDGET_DEFAULTS.maxBytes;
  const summaryMs = opts.summaryMs ?? AUDIT_BUDGET_DEFAULTS.summaryMs;
  const now = opts.now ?? Date.now;
  const setTimer = opts.setTimer ?? ((fn: () => void, ms: number) => setTimeout(fn, ms));
  let tokens = burst;
  let refilledAt = now();
  const stats = { written: 0, dropped: 0, writtenBytes: 0 };
  let pending: {
    dropped: Record<string, number>;
    lines: number;
    bytes: number;
    first: number;
    last: number;
    rate: boolean;
    size: boolean;
  } | null = null;
  let timer = false;

  const flush = () => {
    timer = false;
    if (pending === null) return;
    const p = pending;
    pending = null;
    const summary: AuditSummary = {
      at: now(),
      type: 'audit.summary',
      source: opts.source,
      reason: p.rate && p.size ? 'rate+size' : p.size ? 'size' : 'rate',
      dropped: p.dropped,
      dropped_lines: p.lines,
      dropped_bytes: p.bytes,
      first_at: p.first,
      last_at: p.last,
      total_dropped: stats.dropped,
      ...(opts.run !== undefined ? { run: opts.run } : {}),
    };
    opts.write(`${JSON.stringify(summary)}\n`);
  };
  const onExit = () => flush();
  process.on('exit', onExit);

  const admit = (line: string, kind: string): boolean => {
    const t = now();
    tokens = Math.min(burst, tokens + ((t - refilledAt) / 1000) * perSecond);
    refilledAt = t;
    const bytes = Buffer.byteLength(line);
    const overSize = stats.writtenBytes + bytes > maxBytes;
    const overRate = tokens < 1;
    if (!overSize && !overRate) {
      tokens -= 1;
      stats.written += 1;
      stats.writtenBytes += bytes;
      return true;
    }
    stats.dropped += 1;
    if (pending === null)
      pending = {
        dropped: {},
        lines: 0,
        bytes: 0,
        first: t,
        last: t,
        rate: false,
        size: false,
      };
    pending.dropped[kind] = (pending.dropped[kind] ?? 0) + 1;
    pending.lines += 1;
    pending.bytes += bytes;
    pending.last = t;
    if (overSize) pending.size = true;
    else pending.rate = true;
    if (!timer) {
      timer = true;
      setTimer(flush, summaryMs).unref?.();
    }
    return false;
  };

  return {
    stats,
    admit,
    offer(line, kind) {
      if (!admit(line, kind)) return false;
      opts.write(line);
      return true;
    },
    flush,
    close() {
      flush();
      process.removeListener('exit', onExit);
    },
  };
}

/**
 * BOTTLE_AUDIT_LIMITS=`burst,perSecond,maxBytes,summaryMs` (set by the engine from
 * machines/limits.ts); unset or malformed parts keep the defaults.
 */
export function auditBudgetFromEnv(text: string | undefined): AuditBudgetLimits {
  const parts = (text ?? '').split(',').map((p) => (/^\d+$/.test(p.trim()) ? Number(p.trim()) : undefined));
  const [burst, perSecond, maxBytes, summaryMs] = parts;
  return {
    ...(burst !== undefined && burst > 0 ? { burst } : {}),
    ...(perSecond !== undefined && perSecond > 0 ? { perSecond } : {}),
    ...(maxBytes !== undefined && maxBytes > 0 ? { maxBytes } : {}),
    ...(summaryMs !== undefined && summaryMs > 0 ? { summaryMs } : {}),
  };
}
