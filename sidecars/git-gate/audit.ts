/**
 * One git gate decision, written as one JSON line on stdout (`bottle audit` shows them with
 * source git-gate): every fetch (a refresh from the upstream before refs are served) and
 * every ref a push tried to update. Never holds a secret: remotes, refs and commit ids only.
 */
export interface GateAuditRecord {
  /** epoch ms */
  at: number;
  type: 'fetch' | 'push';
  /** The remote's name as the agent used it (also an undeclared one that was refused). */
  remote: string;
  /** The ref a push tried to update; null for a fetch or a push refused before any ref was read. */
  ref: string | null;
  old: string | null;
  new: string | null;
  decision: 'allow' | 'deny';
  reason: string;
  /** For an upstream the address policy refused: the address's class (`private (RFC 1918)`, `docker host`, ...). */
  address_class?: string;
  /** The run, when the sidecar was given one (BOTTLE_RUN). */
  run?: string;
}

const ORDER = ['at', 'type', 'remote', 'ref', 'old', 'new', 'decision', 'reason', 'address_class', 'run'] as const;

export function gateAuditLine(r: GateAuditRecord): string {
  const out: Record<string, unknown> = {};
  for (const k of ORDER) if (r[k] !== undefined) out[k] = r[k];
  return `${JSON.stringify(out)}\n`;
}
