import { SIDECAR_PORTS } from './names.js';
import type { BottlePlan, PlannedSecretRef } from './plan.js';
import type { FileToPut } from './ports.js';

/**
 * The git gate's side of a plan, as pure functions: the files its container gets (the remotes,
 * and per remote its key, known_hosts, token and CA, each 0600 and the sidecar user's), and the
 * `.git/config` the --cwd workspace gets instead of the user's own (every declared remote
 * pointing at the gate, no other remote, no credential settings).
 */

/** uid/gid of the `sidecar` user in the sidecar image (as in specs.ts). */
const SIDECAR_UID = 1001;
export const GIT_GATE_DIR = '/run/bottle/git-gate';
export const GIT_GATE_CONFIG_PATH = `${GIT_GATE_DIR}/remotes.json`;
const secretPath = (i: number, what: string) => `${GIT_GATE_DIR}/secrets/${i}/${what}`;

/** The URL of a declared remote inside the bottle. */
export function gateRemoteUrl(name: string): string {
  return `http://git-gate:${SIDECAR_PORTS['git-gate']}/${name}.git`;
}

/**
 * The gate's files, read from the refs by `read` at this moment and handed to its container
 * through the Docker API: never a staged host file, an env var or a log record.
 */
export function gitGateFiles(plan: Pick<BottlePlan, 'git'>, read: (ref: PlannedSecretRef) => string): FileToPut[] {
  const own = { mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID };
  const files: FileToPut[] = [];
  // ssh wants a key file that ends in a newline; a ref's value has its trailing newline dropped.
  const line = (text: string) => (text.endsWith('\n') ? text : `${text}\n`);
  const remotes = plan.git.map((g, i) => {
    const entry: Record<string, unknown> = { name: g.name, upstream: g.upstream, push: g.push };
    if (g.key) {
      entry.key_file = secretPath(i, 'key');
      files.push({ containerPath: secretPath(i, 'key'), content: line(read(g.key)), ...own });
    }
    if (g.known_hosts) {
      entry.known_hosts_file = secretPath(i, 'known_hosts');
      files.push({ containerPath: secretPath(i, 'known_hosts'), content: line(read(g.known_hosts)), ...own });
    }
    if (g.token) {
      entry.token_file = secretPath(i, 'token');
      files.push({ containerPath: secretPath(i, 'token'), content: read(g.token), ...own });
    }
    if (g.ca) {
      entry.ca_file = secretPath(i, 'ca.pem');
      files.push({ containerPath: secretPath(i, 'ca.pem'), content: line(read(g.ca)), ...own });
    }
    return entry;
  });
  return [{ containerPath: GIT_GATE_CONFIG_PATH, content: `${JSON.stringify({ remotes }, null, 2)}\n`, ...own }, ...files];
}

/**
 * The gate's files that come from file refs, for pushing a rotated secret into the running
 * gate (it reads each one when it uses it). `newline`: the file must end in one (ssh's files).
 */
export function gitGateFileRefs(plan: Pick<BottlePlan, 'git'>): { file: string; containerPath: string; newline: boolean }[] {
  const out: { file: string; containerPath: string; newline: boolean }[] = [];
  plan.git.forEach((g, i) => {
    const fields = [
      ['key', g.key, true],
      ['known_hosts', g.known_hosts, true],
      ['token', g.token, false],
      ['ca.pem', g.ca, true],
    ] as const;
    for (const [what, ref, newline] of fields) if (ref && 'file' in ref) out.push({ file: ref.file, containerPath: secretPath(i, what), newline });
  });
  return out;
}

/** Sections of a project's .git/config that name hosts, credentials or host files: never copied into a bottle. */
const DROPPED_SECTIONS = new Set(['remote', 'credential', 'http', 'url', 'include', 'includeif', 'lfs', 'submodule']);
/** Keys of kept sections that run host programs or name host files. */
const DROPPED_KEYS = new Set(['core.sshcommand', 'core.askpass', 'core.gitproxy', 'core.hookspath', 'core.fsmonitor', 'core.excludesfile', 'core.attributesfile']);

/**
 * The workspace's .git/config: the project's own, minus every remote and every setting that
 * carries a URL, a credential or a host path, plus one remote per declared git remote pointing
 * at the gate. Branch sections are kept (their `remote = NAME` resolves when NAME is declared).
 */
export function workspaceGitConfig(original: string, remotes: readonly string[]): string {
  const out: string[] = [];
  let section = '';
  let drop = false;
  for (const raw of original.split('\n')) {
    const header = /^\s*\[\s*([A-Za-z0-9.-]+)(?:\s+"(?:[^"\\]|\\.)*")?\s*\]/.exec(raw);
    if (header) {
      section = header[1]!.toLowerCase();
      const base = section.split('.')[0]!;
      drop = DROPPED_SECTIONS.has(base);
      // `[core] sshCommand = ...` may follow the header on the same line: only the header is kept.
      if (!drop) out.push(header[0].trim());
      continue;
    }
    if (drop) continue;
    const key = /^\s*([A-Za-z][A-Za-z0-9-]*)\s*(=|$)/.exec(raw);
    if (key && DROPPED_KEYS.has(`${section.split('.')[0]}.${key[1]!.toLowerCase()}`)) continue;
    out.push(raw);
  }
  while (out.length > 0 && out[out.length - 1]!.trim() === '') out.pop();
  for (const name of remotes) {
    out.push(`[remote "${name}"]`, `\turl = ${gateRemoteUrl(name)}`, `\tfetch = +refs/heads/*:refs/remotes/${name}/*`);
  }
  return `${out.join('\n')}\n`;
}

/** What the --cwd copy leaves out of the project's .git besides its config: files that record remote URLs. */
export const WORKSPACE_GIT_IGNORES = ['/.git/config', '/.git/FETCH_HEAD', '/.git/logs/'];
