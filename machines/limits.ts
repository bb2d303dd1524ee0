import type { Resources } from '../config/manifest.js';

/**
 * Resource limits of a bottle: the manifest's `resources` with the defaults filled in, and a
 * plain account of what is bounded and what is not (and why), which `bottle plan` and
 * `bottle run` print. Pure: the same manifest gives the same limits in plan, run and replay.
 */

export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;

export interface ContainerLimits {
  /** CPU quota in cores (Docker's NanoCpus / 1e9). */
  cpus: number;
  memoryBytes: number;
  pids: number;
}

export interface LogLimits {
  /** Docker's json-file log: the size of one file and how many are kept. */
  maxBytes: number;
  files: number;
}

export interface AuditLimits {
  /** Lines a sidecar writes at once before the rate applies. */
  burst: number;
  /** Lines per second after the burst. */
  perSecond: number;
  /** Bytes of detailed lines a sidecar writes in its lifetime; past it, counts only. */
  maxBytes: number;
  /** How often a summary of what was held back is written. */
  summaryMs: number;
}

export interface Bound {
  what: string;
  limit: string;
  how: string;
}

export interface Unbounded {
  what: string;
  why: string;
}

export interface BottleLimits {
  agent: ContainerLimits & { workspaceBytes: number; tmpBytes: number; rootBytes: number | null; log: LogLimits };
  sidecars: ContainerLimits & { log: LogLimits };
  proposals: { pending: number; perMinute: number };
  audit: AuditLimits;
}

export const AGENT_CPUS = 1;
export const AGENT_PIDS_LIMIT = 2048;
/**
 * Under gVisor the pids cgroup counts the sandbox's own host threads (an idle sandbox already
 * holds about 44, and they are not given back), and passing the limit kills the whole sandbox
 * instead of failing one fork. The sandbox's kernel is the boundary there; the limit only has
 * to stop a runaway, not ordinary parallel work.
 */
export const AGENT_PIDS_LIMIT_RUNSC = 16384;
export const AGENT_MEMORY_BYTES = 4 * GiB;
export const AGENT_WORKSPACE_BYTES = 2 * GiB;
export const AGENT_TMP_BYTES = 512 * MiB;
export const SIDECAR_CPUS = 1;
export const SIDECAR_MEMORY_BYTES = 512 * MiB;
export const SIDECAR_PIDS_LIMIT = 256;
export const PROPOSALS_PENDING = 100;
export const PROPOSALS_PER_MINUTE = 30;

/**
 * Every container's stdout is kept by Docker in json-file logs of at most 3 x 16 MiB; the
 * sidecars' audit writer (sidecars/common/audit-budget.ts) writes at most AUDIT.maxBytes of
 * detailed lines in a lifetime, well inside that, so rotation never drops an audit line the
 * engine has not collected; past it only summaries (one line per summaryMs) are written.
 */
export const LOG_LIMITS: LogLimits = { maxBytes: 16 * MiB, files: 3 };
export const AUDIT_LIMITS: AuditLimits = { burst: 1000, perSecond: 100, maxBytes: 24 * MiB, summaryMs: 5000 };

/** `2147483648` → `2g`, `536870912` → `512m`: sizes as the manifest writes them. */
export function sizeText(bytes: number): string {
  for (const [unit, scale] of [
    ['t', 1024 ** 4],
    ['g', GiB],
    ['m', MiB],
    ['k', 1024],
  ] as const) {
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(2)}g`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(2)}m`;
  return `${bytes}`;
}

export function resourceLimits(resources: Resources | undefined, runtime: 'runsc' | 'runc'): BottleLimits {
  const r = resources ?? {};
  const agent = {
    cpus: r.cpus ?? AGENT_CPUS,
    memoryBytes: r.memory ?? AGENT_MEMORY_BYTES,
    pids: r.pids ?? (runtime === 'runsc' ? AGENT_PIDS_LIMIT_RUNSC : AGENT_PIDS_LIMIT),
    workspaceBytes: r.disk?.workspace ?? AGENT_WORKSPACE_BYTES,
    tmpBytes: r.disk?.tmp ?? AGENT_TMP_BYTES,
    rootBytes: r.disk?.root ?? null,
    log: LOG_LIMITS,
  };
  const sidecars = {
    cpus: r.sidecars?.cpus ?? SIDECAR_CPUS,
    memoryBytes: r.sidecars?.memory ?? SIDECAR_MEMORY_BYTES,
    pids: r.sidecars?.pids ?? SIDECAR_PIDS_LIMIT,
    log: LOG_LIMITS,
  };
  const proposals = { pending: r.proposals?.pending ?? PROPOSALS_PENDING, perMinute: r.proposals?.per_minute ?? PROPOSALS_PER_MINUTE };
  return { agent, sidecars, proposals, audit: AUDIT_LIMITS };
}

/** What is bounded, how, and what is not and why: said by `bottle plan` (text and --json) and `bottle run`. */
export function limitsAccount(l: BottleLimits): { enforced: Bound[]; notEnforced: Unbounded[] } {
  const { agent, sidecars, proposals } = l;
  const logText = (l: LogLimits) => `${l.files} x ${sizeText(l.maxBytes)}`;
  const enforced: Bound[] = [
    { what: 'agent cpu', limit: `${agent.cpus} core(s)`, how: 'cgroup CPU quota (NanoCpus)' },
    { what: 'agent memory', limit: sizeText(agent.memoryBytes), how: 'cgroup memory limit (includes the tmpfs pages of /workspace and /tmp)' },
    { what: 'agent processes', limit: String(agent.pids), how: 'cgroup pids limit' },
    { what: 'agent /workspace', limit: sizeText(agent.workspaceBytes), how: 'a tmpfs volume of that size (ENOSPC past it); kept mounted by the bottle for the whole run' },
    { what: 'agent /tmp', limit: sizeText(agent.tmpBytes), how: 'a tmpfs of that size (ENOSPC past it)' },
    { what: 'agent output log', limit: logText(agent.log), how: "Docker's json-file log rotation (the oldest output goes first)" },
    { what: 'sidecars', limit: `${sidecars.cpus} core(s), ${sizeText(sidecars.memoryBytes)}, ${sidecars.pids} processes each`, how: 'cgroup quota and limits' },
    {
      what: 'sidecar audit',
      limit: `${l.audit.burst} lines at once, then ${l.audit.perSecond}/s, ${sizeText(l.audit.maxBytes)} in all per sidecar`,
      how: `lines past it are counted and written as a summary every ${l.audit.summaryMs / 1000} s; Docker keeps ${logText(sidecars.log)}`,
    },
    { what: 'proposals', limit: `${proposals.pending} pending, ${proposals.perMinute} a minute`, how: 'refused with 429 by the supervise sidecar, and not queued by the host past the pending bound' },
  ];
  const notEnforced: Unbounded[] = [];
  if (agent.rootBytes !== null) {
    enforced.push({
      what: 'agent root filesystem',
      limit: sizeText(agent.rootBytes),
      how: 'storage-opt size (Docker refuses to create the agent unless its storage driver supports quotas, e.g. overlay2 on xfs with pquota)',
    });
  } else {
    notEnforced.push({
      what: 'agent root filesystem (the image layer: everything outside /workspace and /tmp)',
      why: 'a per-container size needs a storage driver with quotas (overlay2 on xfs with pquota); writes there grow Docker\'s data root until the run ends. Set resources.disk.root where the driver supports it',
    });
  }
  notEnforced.push({
    what: "sidecar root filesystems (the git gate's mirrors, the supervise sidecar's proposal files)",
    why: 'the same storage-driver limit; the agent grows them only through pushes the git gate accepts and proposals supervise keeps (at most 1000, of at most 320 KiB each)',
  });
  return { enforced, notEnforced };
}

/** What `bottle plan --json` shows as `limits`. */
export function limitsSummary(l: BottleLimits) {
  const { enforced, notEnforced } = limitsAccount(l);
  return {
    agent: {
      cpus: l.agent.cpus,
      memory_bytes: l.agent.memoryBytes,
      pids: l.agent.pids,
      workspace_bytes: l.agent.workspaceBytes,
      tmp_bytes: l.agent.tmpBytes,
      root_bytes: l.agent.rootBytes,
      log_bytes: l.agent.log.maxBytes * l.agent.log.files,
    },
    sidecars: { cpus: l.sidecars.cpus, memory_bytes: l.sidecars.memoryBytes, pids: l.sidecars.pids, log_bytes: l.sidecars.log.maxBytes * l.sidecars.log.files },
    proposals: { pending: l.proposals.pending, per_minute: l.proposals.perMinute },
    audit: { burst: l.audit.burst, per_second: l.audit.perSecond, max_bytes: l.audit.maxBytes, summary_ms: l.audit.summaryMs },
    enforced,
    not_enforced: notEnforced,
  };
}

/** One line each, for `bottle plan` and `bottle run`: what is not bounded is said plainly. */
export function limitsLines(l: BottleLimits): string[] {
  return [
    `limits: agent ${l.agent.cpus} cpu, ${sizeText(l.agent.memoryBytes)} memory, ${l.agent.pids} processes, /workspace ${sizeText(l.agent.workspaceBytes)}, /tmp ${sizeText(l.agent.tmpBytes)}${l.agent.rootBytes !== null ? `, root ${sizeText(l.agent.rootBytes)}` : ''}; sidecars ${l.sidecars.cpus} cpu, ${sizeText(l.sidecars.memoryBytes)} each; proposals ${l.proposals.pending} pending, ${l.proposals.perMinute}/min`,
    ...limitsAccount(l).notEnforced.map((u) => `NOT bounded: ${u.what}: ${u.why}`),
  ];
}
