/**
 * The git gate's configuration file (written into its container by the engine, see
 * machines/git-gate.ts): the declared remotes, never a secret. Secrets are separate files
 * the config names.
 *
 *   {"remotes": [{"name", "upstream", "push": [...], "key_file"?, "known_hosts_file"?,
 *                 "token_file"?, "ca_file"?}]}
 */

export interface GateRemote {
  name: string;
  upstream: string;
  push: string[];
  keyFile?: string;
  knownHostsFile?: string;
  tokenFile?: string;
  caFile?: string;
}

const NAME = /^[A-Za-z0-9._-]+$/;

export function parseRemotes(text: string): { ok: true; remotes: GateRemote[] } | { ok: false; errors: string[] } {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    return { ok: false, errors: [`not JSON: ${(err as Error).message}`] };
  }
  const list = (doc as { remotes?: unknown } | null)?.remotes;
  if (!Array.isArray(list)) return { ok: false, errors: ['expected {"remotes": [...]}'] };
  const errors: string[] = [];
  const remotes: GateRemote[] = [];
  const seen = new Set<string>();
  list.forEach((raw: unknown, i) => {
    const r = (raw ?? {}) as Record<string, unknown>;
    const at = `remotes[${i}]`;
    const str = (k: string) => (typeof r[k] === 'string' ? (r[k] as string) : undefined);
    const name = str('name');
    if (!name || !NAME.test(name) || name === '.' || name === '..') errors.push(`${at}.name: expected letters, digits and . _ -`);
    else if (seen.has(name)) errors.push(`${at}.name: duplicate remote ${name}`);
    else seen.add(name);
    const upstream = str('upstream');
    let scheme = '';
    try {
      scheme = new URL(upstream ?? '').protocol;
    } catch {
      errors.push(`${at}.upstream: not a URL`);
    }
    if (upstream && scheme && !['ssh:', 'https:', 'http:'].includes(scheme)) errors.push(`${at}.upstream: scheme ${scheme} is not served`);
    const push = r.push;
    if (!Array.isArray(push) || push.some((p) => typeof p !== 'string' || p === '')) errors.push(`${at}.push: expected a list of patterns`);
    for (const k of ['key_file', 'known_hosts_file', 'token_file', 'ca_file']) {
      if (r[k] !== undefined && (typeof r[k] !== 'string' || !(r[k] as string).startsWith('/'))) errors.push(`${at}.${k}: expected an absolute path`);
    }
    if (scheme === 'ssh:' && r.key_file === undefined) errors.push(`${at}.key_file: required for an ssh:// upstream`);
    if (name && upstream && Array.isArray(push)) {
      remotes.push({
        name,
        upstream,
        push: push as string[],
        ...(str('key_file') ? { keyFile: str('key_file')! } : {}),
        ...(str('known_hosts_file') ? { knownHostsFile: str('known_hosts_file')! } : {}),
        ...(str('token_file') ? { tokenFile: str('token_file')! } : {}),
        ...(str('ca_file') ? { caFile: str('ca_file')! } : {}),
      });
    }
  });
  return errors.length > 0 ? { ok: false, errors } : { ok: true, remotes };
}

/**
 * Why the gate cannot talk to this upstream at all, if it cannot: an ssh upstream without
 * known_hosts would need host keys to be trusted on first use, which the gate never does.
 */
export function upstreamProblem(remote: GateRemote): string | undefined {
  if (remote.upstream.startsWith('ssh:') && !remote.knownHostsFile) {
    return `remote ${remote.name} has no known_hosts in the manifest: the upstream's host key cannot be checked, so the gate does not connect`;
  }
  return undefined;
}

/** Single-quotes a word for sh (paths in GIT_SSH_COMMAND and the credential helper). */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The environment for a git command that talks to the remote's upstream. Secrets stay in
 * their files: ssh reads the key itself, and for https a credential helper `cat`s the token
 * file when the server asks (HTTP Basic: the URL's user name, or x-access-token), so a token
 * is never in an argv, a URL or an environment variable. `caBundle` is the system CAs plus the
 * remote's own (made by the gate at start).
 */
/** Where the gate may connect for an upstream: its host and port and the addresses vetted for them (address-policy.vetHost). */
export interface PinnedUpstream {
  host: string;
  port: number;
  addresses: readonly string[];
}

/** The upstream's host (IPv6 without brackets) and port, as git would dial them. */
export function upstreamHostPort(upstream: string): { host: string; port: number } {
  const url = new URL(upstream);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = url.port !== '' ? Number(url.port) : url.protocol === 'ssh:' ? 22 : url.protocol === 'https:' ? 443 : 80;
  return { host, port };
}

export function upstreamEnv(remote: GateRemote, caBundle?: string, pinned?: PinnedUpstream): Record<string, string> {
  const config: [string, string][] = [
    // No prompt can ever be answered here.
    ['core.askPass', ''],
  ];
  const env: Record<string, string> = { GIT_TERMINAL_PROMPT: '0' };
  const url = new URL(remote.upstream);
  if (url.protocol === 'ssh:') {
    const ssh = [
      'ssh',
      '-F',
      '/dev/null',
      '-o',
      'BatchMode=yes',
      '-o',
      'IdentitiesOnly=yes',
      '-o',
      'IdentityAgent=none',
      '-o',
      'StrictHostKeyChecking=yes',
      '-o',
      `UserKnownHostsFile=${shQuote(remote.knownHostsFile ?? '/dev/null')}`,
      '-o',
      'GlobalKnownHostsFile=/dev/null',
      '-o',
      'ConnectTimeout=15',
      '-o',
      'ServerAliveInterval=15',
      '-i',
      shQuote(remote.keyFile ?? '/dev/null'),
    ];
    if (pinned !== undefined && pinned.addresses[0] !== pinned.host) {
      // ssh connects to the vetted address (no lookup of its own) and checks the host key
      // against the name's known_hosts entry (with the port, as ssh writes it for another port).
      const alias = pinned.port === 22 ? pinned.host : `[${pinned.host}]:${pinned.port}`;
      ssh.push('-o', `HostName=${shQuote(pinned.addresses[0]!)}`, '-o', `HostKeyAlias=${shQuote(alias)}`);
    }
    env.GIT_SSH_COMMAND = ssh.join(' ');
    env.GIT_SSH_VARIANT = 'ssh';
  } else {
    // An empty helper first clears any inherited helper list.
    config.push(['credential.helper', '']);
    if (remote.tokenFile) {
      const user = decodeURIComponent(url.username) || 'x-access-token';
      const helper = `!f() { test "$1" = get || exit 0; echo ${shQuote(`username=${user}`)}; printf 'password='; cat ${shQuote(remote.tokenFile)}; echo; }; f`;
      config.push(['credential.helper', helper]);
    }
    if (caBundle) config.push(['http.sslCAInfo', caBundle]);
    // A stalled upstream fails instead of holding the agent's fetch forever.
    config.push(['http.lowSpeedLimit', '1'], ['http.lowSpeedTime', '60']);
    // A redirect is never followed: it would lead to a host nobody vetted.
    config.push(['http.followRedirects', 'false']);
    if (pinned !== undefined && pinned.addresses[0] !== pinned.host) {
      // curl connects to the vetted addresses only (no lookup of its own); TLS still checks the name.
      const addrs = pinned.addresses.map((a) => (a.includes(':') ? `[${a}]` : a)).join(',');
      config.push(['http.curloptResolve', `${pinned.host}:${pinned.port}:${addrs}`]);
    }
  }
  env.GIT_CONFIG_COUNT = String(config.length);
  config.forEach(([k, v], i) => {
    env[`GIT_CONFIG_KEY_${i}`] = k;
    env[`GIT_CONFIG_VALUE_${i}`] = v;
  });
  return env;
}
