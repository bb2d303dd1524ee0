import type { Manifest } from '../config/manifest.js';
import { BottleError } from '../config/errors.js';
import { resolveManifestPath } from '../config/files.js';
import {
  bottleIdentity,
  containerCandidates,
  MAX_CONTAINER_SUFFIX,
  names,
  SIDECAR_PORTS,
  type SidecarRole,
} from './names.js';
import { type BottleLimits, limitsSummary, resourceLimits } from './limits.js';

/**
 * Planning is pure: everything it must know about the world (existing containers,
 * runtimes, whether a per-bottle Dockerfile exists, image tags) comes in as `PlanInput`,
 * so the same input always yields the same plan, in `bottle plan`, in a live run and
 * in replay. It never reads a secret or a forwarded env value: the plan holds names.
 */

export interface PlanOverrides {
  /** BOTTLE_IMAGE: the agent image. */
  image?: string;
  /** BOTTLE_DERIVED_IMAGE: the --cwd image. */
  derivedImage?: string;
  /** BOTTLE_CONTAINER: pins the agent container name. */
  container?: string;
}

export interface WorldFacts {
  /** Which of the names asked about already exist as containers. */
  existingContainers: string[];
  /** Runtimes the daemon lists. */
  runtimes: string[];
  /** bottles/<identity>/Dockerfile exists (a capability change was approved). */
  perBottleDockerfile: boolean;
}

export interface PlanInput {
  manifest: Manifest;
  manifestDir: string;
  /** For `~/` in manifest paths. */
  homeDir: string;
  /** BOTTLE_HOME: labelled on every object so liveness is judged in the right store. */
  home: string;
  agent: string;
  /** realpath of --cwd, or null. */
  cwd: string | null;
  overrides: PlanOverrides;
  /** Tags of the built-in images (content-hash tags computed by the image code). */
  images: { agent: string; sidecar: string };
  /** Unique per run; the placeholder token is derived from it. */
  runId: string;
  /** The run was started from a terminal: the agent gets a TTY. */
  tty?: boolean;
}

export interface SidecarPlan {
  role: SidecarRole;
  name: string;
  /** The DNS name the agent uses (`egress`, `cred-proxy`, ...). */
  alias: string;
  port: number;
  image: string;
  /** True when the sidecar must reach upstream hosts (joins the egress network). */
  upstream: boolean;
}

export interface ImagePlan {
  /** The agent image before --cwd layering. */
  image: string;
  /** How `image` comes to exist. */
  source:
    | { kind: 'builtin' }
    | { kind: 'ref' }
    | { kind: 'override' }
    | { kind: 'dockerfile'; dockerfile: string }
    | { kind: 'per-bottle'; dockerfile: string };
  /** The --cwd image (project copied to /workspace), or null. */
  derived: string | null;
  /** What the agent container runs: derived ?? image. */
  runtime: string;
  sidecar: string;
}

export interface BottlePlan {
  identity: string;
  home: string;
  agent: string;
  bottle: string;
  cwd: string | null;
  container: string;
  containerPinned: boolean;
  networks: { internal: string; egress: string };
  /** Containers that give the agent its network: the namespace holder and the one-shot route fixer. */
  netns: { holder: string; fixer: string };
  volume: string;
  images: ImagePlan;
  runtime: 'runsc' | 'runc';
  sidecars: SidecarPlan[];
  allowlist: string[];
  /**
   * The manifest's private_networks: non-global blocks the sidecars may dial (config/address-policy.ts).
   * Absent when there are none, so a plan folded from a log written before the key existed is unchanged.
   */
  privateNetworks?: string[];
  env: {
    /** From `{value}` entries: written to the 0600 env-file. */
    literals: Record<string, string>;
    /** From `{from_host}` entries: agent name -> host name; values read at launch only. */
    forwarded: Record<string, string>;
    /** Set by bot-bottle itself (proxy, base URL, placeholder, switches). Non-secret. */
    agentSide: Record<string, string>;
  };
  prompt: { text: string } | { file: string };
  command: string[] | null;
  skills: string[];
  /** Routes with their secret refs (names, never values; file refs resolved to absolute paths). */
  routes: PlannedRoute[];
  /** Remotes of the git gate with their secret refs (names, never values; file refs resolved to absolute paths). */
  git: PlannedGitRemote[];
  supervise: boolean;
  tty: boolean;
  /** CPU, memory, pids and disk of the agent and the sidecars, proposal and audit bounds, and what is not bounded. */
  limits: BottleLimits;
}

export type PlannedSecretRef = { file: string } | { env: string };
export interface PlannedRoute {
  path: string;
  upstream: string;
  roles: string[];
  inject: { header: string; format: string };
  token: PlannedSecretRef;
  ca?: { file: string };
}

export interface PlannedGitRemote {
  name: string;
  upstream: string;
  push: string[];
  key?: PlannedSecretRef;
  known_hosts?: PlannedSecretRef;
  token?: PlannedSecretRef;
  ca?: { file: string };
}

export const PROMPT_PATH = '/run/bottle/prompt';

/** Variables bot-bottle sets inside the bottle; the manifest may not override them. */
export const RESERVED_ENV = new Set([
  'HTTP_PROXY',
  'HTTPS_PROXY',
  'http_proxy',
  'https_proxy',
  'NO_PROXY',
  'no_proxy',
  'ANTHROPIC_BASE_URL',
  'CLAUDE_CODE_OAUTH_TOKEN',
  'BOTTLE_PROMPT_FILE',
  'BOTTLE_SUPERVISE_URL',
]);

/** The placeholder the agent holds instead of a real token; also a canary the egress proxy looks for. */
export function placeholderToken(runId: string): string {
  return `bottle-placeholder-${runId}`;
}

/** Names planning asks the world about: the pinned name, or every candidate. */
export function containerNamesToProbe(identity: string, overrides: PlanOverrides): string[] {
  return overrides.container ? [overrides.container] : containerCandidates(identity);
}

function chooseContainer(identity: string, overrides: PlanOverrides, existing: Set<string>) {
  if (overrides.container) {
    if (existing.has(overrides.container)) {
      throw new BottleError(
        'CONTAINER_EXISTS',
        `container '${overrides.container}' already exists (pinned by BOTTLE_CONTAINER); bot-bottle never replaces it`,
        `remove it with 'docker rm -f ${overrides.container}' or unset BOTTLE_CONTAINER`,
      );
    }
    return { name: overrides.container, pinned: true };
  }
  const free = containerCandidates(identity).find((n) => !existing.has(n));
  if (!free) {
    throw new BottleError(
      'NO_FREE_NAME',
      `no free container name for bottle '${identity}': bottle-${identity} through bottle-${identity}-${MAX_CONTAINER_SUFFIX} all exist`,
      `run 'bottle cleanup' to remove leftovers of ours, or 'docker ps -a --filter name=bottle-${identity}' and 'docker rm -f NAME' for others`,
    );
  }
  return { name: free, pinned: false };
}

export function buildPlan(input: PlanInput, world: WorldFacts): BottlePlan {
  const { manifest, agent: agentName } = input;
  const agent = manifest.agents[agentName];
  if (!agent) {
    const known = Object.keys(manifest.agents).join(', ') || '(none)';
    throw new BottleError('AGENT_UNKNOWN', `agent '${agentName}' is not in the manifest (agents: ${known})`, 'run `bottle validate` or pick one of the agents listed');
  }
  const bottle = manifest.bottles[agent.bottle];
  if (!bottle) {
    throw new BottleError('MANIFEST_INVALID', `agents.${agentName}.bottle: bottle '${agent.bottle}' does not exist`, 'run `bottle validate`');
  }
  const identity = bottleIdentity(agentName, input.cwd);
  const n = names(identity);
  const existing = new Set(world.existingContainers);
  const container = chooseContainer(identity, input.overrides, existing);

  let runtime: 'runsc' | 'runc';
  const hasRunsc = world.runtimes.includes('runsc');
  if (bottle.runtime === 'runsc') {
    if (!hasRunsc) {
      throw new BottleError(
        'MANIFEST_INVALID',
        `bottles.${agent.bottle}.runtime: runsc was asked for but the Docker daemon does not list it`,
        'register gVisor in /etc/docker/daemon.json (see docs/security.md) or set runtime: auto',
      );
    }
    runtime = 'runsc';
  } else if (bottle.runtime === 'runc') {
    runtime = 'runc';
  } else {
    runtime = hasRunsc ? 'runsc' : 'runc';
  }

  const images = planImages(input, world, identity, n);

  const sidecars: SidecarPlan[] = [];
  const addSidecar = (role: SidecarRole, upstream: boolean) =>
    sidecars.push({ role, name: n.sidecar(role), alias: role, port: SIDECAR_PORTS[role], image: input.images.sidecar, upstream });
  addSidecar('egress', true);
  if (bottle.git.length > 0) addSidecar('git-gate', true);
  if (bottle.cred_proxy.routes.length > 0) addSidecar('cred-proxy', true);
  if (bottle.supervise) addSidecar('supervise', false);

  const literals: Record<string, string> = {};
  const forwarded: Record<string, string> = {};
  for (const [key, entry] of Object.entries(bottle.env)) {
    if (RESERVED_ENV.has(key)) {
      throw new BottleError('MANIFEST_INVALID', `bottles.${agent.bottle}.env.${key}: ${key} is set by bot-bottle and cannot be overridden`, 'remove it from the manifest');
    }
    if ('value' in entry) literals[key] = entry.value;
    else forwarded[key] = entry.from_host;
  }

  const proxy = `http://egress:${SIDECAR_PORTS.egress}`;
  const agentSide: Record<string, string> = {
    HTTP_PROXY: proxy,
    HTTPS_PROXY: proxy,
    http_proxy: proxy,
    https_proxy: proxy,
    NO_PROXY: sidecars.map((s) => s.alias).join(','),
    no_proxy: sidecars.map((s) => s.alias).join(','),
    BOTTLE_PROMPT_FILE: PROMPT_PATH,
  };
  const anthropic = bottle.cred_proxy.routes.find((r) => r.roles.includes('anthropic-base-url'));
  if (anthropic) {
    agentSide.ANTHROPIC_BASE_URL = `http://cred-proxy:${SIDECAR_PORTS['cred-proxy']}${anthropic.path}`.replace(/\/+$/, '');
    agentSide.CLAUDE_CODE_OAUTH_TOKEN = placeholderToken(input.runId);
  }
  for (const key of ['CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC', 'DISABLE_ERROR_REPORTING']) {
    if (!(key in literals) && !(key in forwarded)) agentSide[key] = '1';
  }
  if (bottle.supervise) agentSide.BOTTLE_SUPERVISE_URL = `http://supervise:${SIDECAR_PORTS.supervise}`;

  return {
    identity,
    home: input.home,
    agent: agentName,
    bottle: agent.bottle,
    cwd: input.cwd,
    container: container.name,
    containerPinned: container.pinned,
    networks: { internal: n.internalNetwork, egress: n.egressNetwork },
    netns: { holder: n.netns, fixer: n.netfix },
    volume: n.workspaceVolume,
    images,
    runtime,
    sidecars,
    allowlist: [...new Set(bottle.egress.allow.map((h) => h.toLowerCase()))],
    ...((bottle.private_networks ?? []).length > 0 ? { privateNetworks: [...new Set(bottle.private_networks)] } : {}),
    env: { literals, forwarded, agentSide },
    prompt: agent.prompt_file ? { file: resolveManifestPath(input.manifestDir, agent.prompt_file, input.homeDir) } : { text: agent.prompt ?? '' },
    command: agent.command ?? null,
    skills: agent.skills.map((s) => resolveManifestPath(input.manifestDir, s, input.homeDir)),
    routes: bottle.cred_proxy.routes.map((r) => {
      const ref = (x: { file: string } | { env: string }) => ('file' in x ? { file: resolveManifestPath(input.manifestDir, x.file, input.homeDir) } : { env: x.env });
      return {
        path: r.path,
        upstream: r.upstream,
        roles: [...r.roles],
        inject: { header: r.inject.header, format: r.inject.format },
        token: ref(r.token),
        ...(r.ca ? { ca: { file: resolveManifestPath(input.manifestDir, r.ca.file, input.homeDir) } } : {}),
      };
    }),
    git: bottle.git.map((g) => {
      const ref = (x: { file: string } | { env: string }) => ('file' in x ? { file: resolveManifestPath(input.manifestDir, x.file, input.homeDir) } : { env: x.env });
      return {
        name: g.name,
        upstream: g.upstream,
        push: [...g.push],
        ...(g.key ? { key: ref(g.key) } : {}),
        ...(g.known_hosts ? { known_hosts: ref(g.known_hosts) } : {}),
        ...(g.token ? { token: ref(g.token) } : {}),
        ...(g.ca ? { ca: { file: resolveManifestPath(input.manifestDir, g.ca.file, input.homeDir) } } : {}),
      };
    }),
    supervise: bottle.supervise,
    tty: input.tty ?? false,
    limits: resourceLimits(bottle.resources, runtime),
  };
}

function planImages(input: PlanInput, world: WorldFacts, identity: string, n: ReturnType<typeof names>): ImagePlan {
  const agent = input.manifest.agents[input.agent]!;
  const bottle = input.manifest.bottles[agent.bottle]!;
  let image: string;
  let source: ImagePlan['source'];
  if (input.overrides.image) {
    image = input.overrides.image;
    source = { kind: 'override' };
  } else if (world.perBottleDockerfile) {
    image = n.perBottleImage;
    source = { kind: 'per-bottle', dockerfile: `bottles/${identity}/Dockerfile` };
  } else if (bottle.image && 'ref' in bottle.image) {
    image = bottle.image.ref;
    source = { kind: 'ref' };
  } else if (bottle.image && 'dockerfile' in bottle.image) {
    image = n.customImage;
    source = { kind: 'dockerfile', dockerfile: resolveManifestPath(input.manifestDir, bottle.image.dockerfile, input.homeDir) };
  } else {
    image = input.images.agent;
    source = { kind: 'builtin' };
  }
  // Skills are copied in by the same layer as the --cwd project.
  const derived = input.cwd === null && agent.skills.length === 0 ? null : (input.overrides.derivedImage ?? n.derivedImage);
  return { image, source, derived, runtime: derived ?? image, sidecar: input.images.sidecar };
}

/** What `bottle plan --json` prints (CONTRACT.md shape; env as names, never values). */
export function planSummary(plan: BottlePlan) {
  return {
    identity: plan.identity,
    agent: plan.agent,
    bottle: plan.bottle,
    container: plan.container,
    container_pinned: plan.containerPinned,
    networks: plan.networks,
    volume: plan.volume,
    sidecars: plan.sidecars.map((s) => s.role),
    sidecar_containers: plan.sidecars.map((s) => s.name),
    image: plan.images.runtime,
    base_image: plan.images.image,
    derived_image: plan.images.derived,
    runtime: plan.runtime,
    allowlist: plan.allowlist,
    private_networks: plan.privateNetworks ?? [],
    env: [...Object.keys(plan.env.literals), ...Object.keys(plan.env.forwarded), ...Object.keys(plan.env.agentSide)].sort(),
    routes: plan.routes.map((r) => r.path),
    git: plan.git.map((g) => g.name),
    supervise: plan.supervise,
    limits: limitsSummary(plan.limits),
  };
}
