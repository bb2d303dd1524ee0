import type { AuditRecord } from './audit.js';
import type { Vet } from './decision.js';
import type { Policy, Target } from './policy.js';
import type { SecretScanner } from './secrets.js';
import type { UpstreamPool } from './upstream.js';

/**
 * What every part of the egress proxy gets from createEgressProxy (proxy.ts), explicitly. The
 * allowlist and what the canary looks for can be replaced while serving: a request reads
 * each once, as it arrives, and keeps what it read.
 */
export interface ProxyContext {
  /** The policy in force now. */
  policy(): Policy;
  /** What the canary looks for now. */
  secrets(): SecretScanner;
  vet: Vet;
  /** The keep-alive pool of plain-HTTP upstream connections. */
  pool: UpstreamPool;
  /** The bottle's name in the manifest, for the "add it to bottles.<bottle>.egress.allow" hint. */
  bottle: string;
  audit: (record: AuditRecord) => void;
  log: (message: string) => void;
  now: () => number;
  /** No traffic either way for this long closes a tunnel or an upstream exchange (ms). */
  idleTimeoutMs: number;
  /** Time allowed to connect to the upstream (ms). */
  connectTimeoutMs: number;
}

/** The target, to name in a refusal and its audit line; null when the credential is in the host name itself. */
export function shownTarget(secrets: SecretScanner, target: Target): Target | null {
  return secrets.scan(target.host) ? null : target;
}
