import { createHash } from 'node:crypto';

/**
 * Identity and every per-bottle name derive from here, so two bottles never share a
 * name unless they share an identity. The identity is slug(agent), plus
 * "-" + sha256(realpath(cwd))[:12] with --cwd: the same agent against two projects
 * gets two identities, and with them distinct containers, networks, state and audit.
 */

/** Upper bound for the agent container suffix search (bottle-<id>, bottle-<id>-2, ...). */
export const MAX_CONTAINER_SUFFIX = 20;

const SLUG_MAX = 40;

/** Lower-case, runs of anything outside [a-z0-9] become one "-", never empty. */
export function slugify(name: string): string {
  const slug = name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, SLUG_MAX)
    .replace(/-+$/g, '');
  return slug === '' ? 'agent' : slug;
}

/** `cwd` must already be a realpath (resolving it is I/O and happens in the CLI). */
export function bottleIdentity(agent: string, cwd: string | null): string {
  const slug = slugify(agent);
  if (cwd === null) return slug;
  const digest = createHash('sha256').update(cwd).digest('hex').slice(0, 12);
  return `${slug}-${digest}`;
}

/** Docker's rule for container, network and volume names. */
export const DOCKER_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export function containerCandidates(identity: string): string[] {
  const base = `bottle-${identity}`;
  const names = [base];
  for (let i = 2; i <= MAX_CONTAINER_SUFFIX; i++) names.push(`${base}-${i}`);
  return names;
}

export type SidecarRole = 'egress' | 'cred-proxy' | 'git-gate' | 'supervise';

export const SIDECAR_PORTS: Record<SidecarRole, number> = {
  egress: 3128,
  'cred-proxy': 9099,
  'git-gate': 8418,
  supervise: 9100,
};

export function names(identity: string) {
  const base = `bottle-${identity}`;
  return {
    sidecar: (role: SidecarRole) => `${base}-${role}`,
    internalNetwork: `${base}-internal`,
    egressNetwork: `${base}-egress-net`,
    workspaceVolume: `${base}-workspace`,
    /** Holds the agent's network namespace (the agent joins it), so its routes are fixed before the agent runs. */
    netns: `${base}-netns`,
    netfix: `${base}-netfix`,
    perBottleImage: `bot-bottle/bottle:${identity}`,
    customImage: `bot-bottle/custom:${identity}`,
    derivedImage: `bot-bottle/cwd:${identity}`,
  };
}
