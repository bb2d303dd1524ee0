import { createHash } from 'node:crypto';
import { placeholderToken, PROMPT_PATH, type BottlePlan, type SidecarPlan } from './plan.js';
import { GIT_GATE_CONFIG_PATH } from './git-gate.js';
import { type ContainerSpec, type FileToPut, LABEL, type Labels, type Role, type VolumeSpec } from './ports.js';

/**
 * Container and network specs derived from a plan: pure policy, so the hardening of
 * the agent is decided here once and every backend applies the same thing.
 */

export const ENGINE_VERSION = '0.1.0';

export function labelsFor(plan: { identity: string; home: string }, runId: string, role: Role): Labels {
  return { [LABEL.identity]: plan.identity, [LABEL.run]: runId, [LABEL.role]: role, [LABEL.version]: ENGINE_VERSION, [LABEL.home]: plan.home };
}

/** uid/gid of the `agent` user in the built-in agent image. */
export const AGENT_UID = 1000;

/** Where the netns holder keeps the workspace volume mounted (read-only), so its tmpfs lives as long as the run. */
export const WORKSPACE_KEEPER_PATH = '/run/bottle/workspace';

/** The workspace volume: a tmpfs of the bottle's disk bound, owned by the agent user. */
export function workspaceVolumeSpec(plan: BottlePlan, runId: string): VolumeSpec {
  return { name: plan.volume, labels: labelsFor(plan, runId, 'volume'), sizeBytes: plan.limits.agent.workspaceBytes, uid: AGENT_UID, gid: AGENT_UID };
}

export function agentSpec(
  plan: BottlePlan,
  runId: string,
  staged: { envFile: string; promptFile: string },
  forwardedValues: Record<string, string>,
): ContainerSpec {
  return {
    name: plan.container,
    image: plan.images.runtime,
    role: 'agent',
    labels: labelsFor(plan, runId, 'agent'),
    // The agent shares the namespace holder's network: the internal network only, with the
    // default route removed before the agent starts, so its one way out is egress.
    networks: [],
    networkMode: { container: plan.netns.holder },
    env: { ...forwardedValues, ...plan.env.agentSide },
    envFile: staged.envFile,
    ...(plan.command ? { cmd: plan.command } : {}),
    runtime: plan.runtime,
    mounts: [{ type: 'volume', source: plan.volume, target: '/workspace', readOnly: false }],
    copyIn: [{ hostPath: staged.promptFile, containerPath: PROMPT_PATH, mode: 0o600, uid: AGENT_UID, gid: AGENT_UID }],
    tty: plan.tty,
    openStdin: true,
    hardened: true,
    pidsLimit: plan.limits.agent.pids,
    memoryBytes: plan.limits.agent.memoryBytes,
    cpus: plan.limits.agent.cpus,
    tmpfs: { '/tmp': plan.limits.agent.tmpBytes },
    ...(plan.limits.agent.rootBytes !== null ? { rootBytes: plan.limits.agent.rootBytes } : {}),
    log: plan.limits.agent.log,
  };
}

/** uid/gid of the `sidecar` user in the sidecar image. */
export const SIDECAR_UID = 1001;
export const EGRESS_ALLOWLIST_PATH = '/run/bottle/egress/allowlist';
/** More token hashes for the egress canary, rewritten while the bottle runs. */
export const EGRESS_HASHES_PATH = '/run/bottle/egress/secret-hashes';

/** How the egress canary knows a token without holding it: `<length in bytes>:<sha256 hex>`. */
export function secretHash(token: string): string {
  return `${Buffer.byteLength(token)}:${createHash('sha256').update(token).digest('hex')}`;
}

export function egressHashesFile(hashes: Iterable<string>): FileToPut {
  return { containerPath: EGRESS_HASHES_PATH, content: [...new Set(hashes)].sort().map((h) => `${h}\n`).join(''), mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID };
}

/** The egress allowlist file as the sidecar reads it: one entry a line. */
export function allowlistFile(entries: readonly string[]): { containerPath: string; content: string; mode: number; uid: number; gid: number } {
  return { containerPath: EGRESS_ALLOWLIST_PATH, content: entries.map((e) => `${e}\n`).join(''), mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID };
}

export function sidecarSpec(
  plan: BottlePlan,
  runId: string,
  sidecar: SidecarPlan,
  configFiles: { hostPath: string; containerPath: string }[],
  /** Never dialled: the bottle networks' gateways and the Docker host's own addresses. */
  gateways: string[] = [],
  secretHashes: string[] = [],
): ContainerSpec {
  const networks = [{ name: plan.networks.internal, aliases: [sidecar.alias] }];
  if (sidecar.upstream) networks.push({ name: plan.networks.egress, aliases: [] });
  return {
    name: sidecar.name,
    image: sidecar.image,
    role: sidecar.role,
    labels: labelsFor(plan, runId, sidecar.role),
    networks,
    env: {
      BOTTLE_SIDECAR_ROLE: sidecar.role,
      BOTTLE_SIDECAR_PORT: String(sidecar.port),
      BOTTLE_IDENTITY: plan.identity,
      BOTTLE_BOTTLE: plan.bottle,
      BOTTLE_RUN: runId,
      // The address policy of every sidecar that dials upstreams (sidecars/common/address-policy.ts):
      // never the bottle networks' gateways or the Docker host's addresses; private ranges only
      // inside the manifest's private_networks.
      ...(sidecar.upstream ? { BOTTLE_ADDRESS_DENY: gateways.join(','), BOTTLE_PRIVATE_NETWORKS: (plan.privateNetworks ?? []).join(',') } : {}),
      // The audit budget (sidecars/common/audit-budget.ts), sized against the log rotation below.
      BOTTLE_AUDIT_LIMITS: [plan.limits.audit.burst, plan.limits.audit.perSecond, plan.limits.audit.maxBytes, plan.limits.audit.summaryMs].join(','),
      ...(sidecar.role === 'egress'
        ? {
            BOTTLE_EGRESS_ALLOWLIST: EGRESS_ALLOWLIST_PATH,
            BOTTLE_EGRESS_SECRET_HASHES_FILE: EGRESS_HASHES_PATH,
            // The canary: the placeholder, and the route tokens only as `<length>:<sha256>`, so the
            // proxy can block a credential leaving in a request without ever holding one.
            ...(plan.routes.length > 0 ? { BOTTLE_EGRESS_CANARY: placeholderToken(runId) } : {}),
            ...(secretHashes.length > 0 ? { BOTTLE_EGRESS_SECRET_HASHES: secretHashes.join(',') } : {}),
          }
        : {}),
      ...(sidecar.role === 'cred-proxy' ? { BOTTLE_CRED_ROUTES: CRED_ROUTES_PATH, BOTTLE_CRED_PLACEHOLDER: placeholderToken(runId) } : {}),
      ...(sidecar.role === 'supervise'
        ? { BOTTLE_SUPERVISE_DIR: SUPERVISE_DIR, BOTTLE_SUPERVISE_LIMITS: `${plan.limits.proposals.pending},${plan.limits.proposals.perMinute}` }
        : {}),
      ...(sidecar.role === 'git-gate' ? { BOTTLE_GIT_GATE_CONFIG: GIT_GATE_CONFIG_PATH } : {}),
    },
    cmd: [`/opt/bot-bottle/sidecars/${sidecarProgram(sidecar.role)}.mjs`],
    mounts: [],
    copyIn: configFiles.map((f) => ({ ...f, mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID })),
    tty: false,
    openStdin: false,
    hardened: true,
    pidsLimit: plan.limits.sidecars.pids,
    memoryBytes: plan.limits.sidecars.memoryBytes,
    cpus: plan.limits.sidecars.cpus,
    log: plan.limits.sidecars.log,
  };
}

export const CRED_DIR = '/run/bottle/cred-proxy';
export const CRED_ROUTES_PATH = `${CRED_DIR}/routes.json`;
export const credTokenPath = (i: number) => `${CRED_DIR}/secrets/${i}`;
export const credCaPath = (i: number) => `${CRED_DIR}/ca/${i}.pem`;

/**
 * The cred-proxy's configuration as files for its container only: the routes (no secrets)
 * and, per route, the token and the optional CA bundle, each 0600 and owned by the sidecar
 * user. `read` resolves a secret ref on the host at this moment.
 */
export function credProxyFiles(plan: BottlePlan, read: (ref: { file: string } | { env: string }) => string): FileToPut[] {
  const own = { mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID };
  const routes = plan.routes.map((r, i) => ({
    path: r.path,
    upstream: r.upstream,
    inject: r.inject,
    roles: r.roles,
    token_file: credTokenPath(i),
    ...(r.ca ? { ca_file: credCaPath(i) } : {}),
  }));
  const files: FileToPut[] = [{ containerPath: CRED_ROUTES_PATH, content: `${JSON.stringify({ routes }, null, 2)}\n`, ...own }];
  plan.routes.forEach((r, i) => {
    files.push({ containerPath: credTokenPath(i), content: read(r.token), ...own });
    if (r.ca) files.push({ containerPath: credCaPath(i), content: read(r.ca), ...own });
  });
  return files;
}

/** Which program each sidecar runs: sidecars/<role>/main.ts, bundled to <role>.mjs in the sidecar image. */
export function sidecarProgram(role: SidecarPlan['role']): string {
  return role;
}

/**
 * The agent's network namespace lives in a container of its own that does nothing but
 * sleep, on the internal network with the alias `agent`. Docker (before 25) gives even an
 * internal network a default route; the fixer below deletes it in this namespace before
 * the agent joins, so the agent never sees a route out, under runc and under gVisor alike.
 */
export function netnsHolderSpec(plan: BottlePlan, runId: string): ContainerSpec {
  return {
    name: plan.netns.holder,
    image: plan.images.sidecar,
    role: 'network',
    labels: labelsFor(plan, runId, 'network'),
    networks: [{ name: plan.networks.internal, aliases: ['agent'] }],
    // Closed DNS: Docker's embedded DNS answers the bottle's own names and sends every
    // other question here, where nothing listens. No name lookup ever leaves the bottle.
    dns: ['127.0.0.1'],
    // A question nobody can answer fails within a second instead of hanging the agent.
    dnsOptions: ['timeout:1', 'attempts:1'],
    env: {},
    entrypoint: ['sleep', 'infinity'],
    // The workspace is a tmpfs volume, which Docker unmounts (and so empties) when no container
    // has it mounted: the holder, which lives for the whole run, keeps it, so the agent's
    // container can be recreated on it (a Dockerfile change) without losing the work.
    mounts: [{ type: 'volume', source: plan.volume, target: WORKSPACE_KEEPER_PATH, readOnly: true }],
    tty: false,
    openStdin: false,
    hardened: true,
    pidsLimit: 8,
    memoryBytes: 16 * 1024 ** 2,
    cpus: 0.1,
    log: { maxBytes: 1024 ** 2, files: 1 },
  };
}

/** One-shot: NET_ADMIN in the holder's namespace for as long as it takes to delete the default routes. */
export function netFixerSpec(plan: BottlePlan, runId: string): ContainerSpec {
  return {
    name: plan.netns.fixer,
    image: plan.images.sidecar,
    role: 'network',
    labels: labelsFor(plan, runId, 'network'),
    networks: [],
    networkMode: { container: plan.netns.holder },
    env: {},
    user: '0:0',
    entrypoint: ['sh', '-c', 'ip route del default 2>/dev/null; ip -6 route del default 2>/dev/null; if ip route show default | grep -q .; then echo "default route still present" >&2; exit 1; fi'],
    capAdd: ['NET_ADMIN'],
    mounts: [],
    tty: false,
    openStdin: false,
    hardened: true,
    pidsLimit: 16,
    memoryBytes: 32 * 1024 ** 2,
    cpus: 0.5,
    log: { maxBytes: 1024 ** 2, files: 1 },
  };
}

export const SUPERVISE_DIR = '/run/bottle/supervise';
/** Where the agent's session state (Claude Code's transcript) lives in the built-in agent image. */
export const AGENT_SESSION_DIR = '/home/agent/.claude';

/**
 * What the agent proposes against when no Dockerfile was approved yet: the text is built with
 * the current agent image as build arg AGENT_IMAGE and no build context.
 */
export const DOCKERFILE_TEMPLATE = [
  '# The Dockerfile of this bottle. Propose a whole new text: it is built FROM the image the',
  '# agent runs now (build arg AGENT_IMAGE), with no build context, so COPY has nothing to copy.',
  '# The built-in image runs as the user `agent`; switch to root to install packages.',
  'ARG AGENT_IMAGE',
  'FROM $' + '{AGENT_IMAGE}',
  '',
].join('\n');

/** What the supervise sidecar shows the agent: no secrets, only where they are injected. */
export interface SuperviseCurrent {
  dockerfile: string;
  allowlist: string[];
  routes: { path: string; upstream: string; inject: { header: string; format: string }; roles: string[] }[];
}

export interface SuperviseDecision {
  id: string;
  status: 'approved' | 'denied' | 'failed';
  reason?: string;
  error?: string;
  at?: string;
}

export function superviseFiles(part: { current?: SuperviseCurrent; decisions?: SuperviseDecision[] }): FileToPut[] {
  const own = { mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID };
  const files: FileToPut[] = [];
  if (part.current) files.push({ containerPath: `${SUPERVISE_DIR}/current.json`, content: `${JSON.stringify(part.current, null, 2)}\n`, ...own });
  if (part.decisions) files.push({ containerPath: `${SUPERVISE_DIR}/decisions.json`, content: `${JSON.stringify({ decisions: part.decisions }, null, 2)}\n`, ...own });
  return files;
}
