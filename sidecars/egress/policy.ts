import { parseIPv6 } from '../../config/address-policy.js';

export { parseIp, parseIPv6 } from '../../config/address-policy.js';

/**
 * The egress sidecar's policy, as pure functions: which targets the allowlist lets through,
 * how a `host:port` the client names is read, and which addresses the proxy never dials.
 * Node built-ins only (this runs on Debian's Node 18 in the sidecar image).
 *
 * Allowlist entries (one per line in the allowlist file):
 *   host            that host on ports 80 and 443
 *   host:port       that host on that port only
 *   *.domain        every subdomain of domain (any depth) on 80 and 443, never domain itself
 *   *.domain:port   the same on that port only
 *   1.2.3.4[:port]  an IPv4 literal (IP targets are allowed only when listed literally)
 *   [v6][:port]     an IPv6 literal, in brackets
 * Blank lines and lines starting with # are ignored; entries are case-insensitive and a
 * trailing dot on a name is dropped (`example.com.` is `example.com`).
 */

export interface Target {
  /** Lowercased name without a trailing dot, a dotted-quad IPv4, or a canonical IPv6 (no brackets). */
  host: string;
  port: number;
}

export interface Rule {
  /** The entry as written in the allowlist (trimmed), reported as the decision's `rule`. */
  text: string;
  kind: 'exact' | 'wildcard';
  /** The exact host, or for a wildcard the domain after `*.`. */
  host: string;
  /** The ports this entry allows. */
  ports: readonly number[];
}

export interface EntryError {
  entry: string;
  message: string;
}

export type Decision = { allowed: true; rule: string; reason: string } | { allowed: false; rule?: undefined; reason: string };

export interface Policy {
  readonly rules: readonly Rule[];
  /** Entries that could not be read; they allow nothing. */
  readonly errors: readonly EntryError[];
  decide(target: Target): Decision;
}

export const DEFAULT_PORTS: readonly number[] = [80, 443];

const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;
const PORT = /^[1-9][0-9]{0,4}$/;
const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const IPV4 = new RegExp(`^${OCTET}(\\.${OCTET}){3}$`);
/** What inet_aton (and so getaddrinfo) would read as a number: digits, or 0x-hex. */
const NUMERIC_LABEL = /^(0x[0-9a-f]*|[0-9]+)$/;

export type ParseResult<T> = { ok: true; value: T } | { ok: false; message: string };

const fail = <T>(message: string): ParseResult<T> => ({ ok: false, message });

/** A port written as 1..65535 in plain decimal (no sign, no leading zero). */
export function parsePort(text: string): number | undefined {
  if (!PORT.test(text)) return undefined;
  const port = Number(text);
  return port <= 65535 ? port : undefined;
}

export function isIPv4Literal(host: string): boolean {
  return IPV4.test(host);
}

/**
 * Reads a host name or IPv4 literal (no brackets, no port); returns it lowercased without a
 * trailing dot. Anything a resolver might read as a number in another spelling (`127.1`,
 * `0x7f.0.0.1`, `2130706433`, `0177.0.0.1`) is refused: an IP target must be a plain dotted quad.
 */
export function parseHostName(raw: string): ParseResult<string> {
  let host = raw.toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  if (host === '') return fail('the host is missing');
  if (host.length > 253) return fail('the host name is longer than 253 characters');
  if (IPV4.test(host)) return { ok: true, value: host };
  const labels = host.split('.');
  for (const label of labels) {
    if (label === '') return fail('the host name has an empty label');
    if (!LABEL.test(label)) return fail(`"${label}" is not a valid host name label`);
  }
  if (NUMERIC_LABEL.test(labels[labels.length - 1]!)) {
    return fail('an IP address must be written as a plain dotted quad such as 192.0.2.1');
  }
  return { ok: true, value: host };
}

/** Reads the inside of `[...]` as an IPv6 literal and returns its canonical form, or undefined. */
export function canonicalIPv6(text: string): string | undefined {
  if (text.includes('%')) return undefined; // zone ids name an interface of the proxy's host
  if (parseIPv6(text) === undefined) return undefined;
  try {
    const host = new URL(`http://[${text}]/`).hostname;
    return host.slice(1, -1);
  } catch {
    return undefined;
  }
}

/**
 * Reads an authority `host:port`, `host`, `[v6]:port` or `[v6]` strictly. The port is
 * required unless `defaultPort` is given (CONNECT targets need one; absolute URIs default to 80).
 */
export function parseAuthority(authority: string, defaultPort?: number): ParseResult<Target> {
  if (authority === '') return fail('the target is empty');
  let hostPart: string;
  let portPart: string | undefined;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close === -1) return fail('an IPv6 literal is missing its closing bracket');
    hostPart = authority.slice(0, close + 1);
    const rest = authority.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return fail('unexpected text after the IPv6 literal');
      portPart = rest.slice(1);
    }
  } else {
    const colon = authority.indexOf(':');
    if (colon !== authority.lastIndexOf(':')) return fail('an IPv6 literal must be written in brackets, as in [2001:db8::1]:443');
    hostPart = colon === -1 ? authority : authority.slice(0, colon);
    portPart = colon === -1 ? undefined : authority.slice(colon + 1);
  }
  let port: number | undefined;
  if (portPart === undefined) {
    if (defaultPort === undefined) return fail('the target needs a port, as in host:443');
    port = defaultPort;
  } else {
    port = parsePort(portPart);
    if (port === undefined) return fail(`the port "${portPart}" is not a number from 1 to 65535`);
  }
  if (hostPart.startsWith('[')) {
    const v6 = canonicalIPv6(hostPart.slice(1, -1));
    if (v6 === undefined) return fail('not a valid IPv6 literal');
    return { ok: true, value: { host: v6, port } };
  }
  const host = parseHostName(hostPart);
  if (!host.ok) return host;
  return { ok: true, value: { host: host.value, port } };
}

/** `host:port`, with IPv6 hosts in brackets. */
export function formatTarget(t: Target): string {
  return `${t.host.includes(':') ? `[${t.host}]` : t.host}:${t.port}`;
}

/** Reads one allowlist entry (see the file comment). */
export function parseEntry(raw: string): ParseResult<Rule> {
  const text = raw.trim();
  if (text === '') return fail('the entry is empty');
  if (/\s/.test(text)) return fail('an entry must not contain whitespace');
  if (text.includes('://') || text.includes('/')) return fail('write a host, host:port or *.domain, not a URL');
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the range is all of ASCII
  if (!/^[\u0000-\u007f]*$/.test(text)) return fail('an entry must be ASCII (write an international name in its xn-- form)');
  const wildcard = text.startsWith('*.');
  const rest = wildcard ? text.slice(2) : text;
  if (rest.includes('*')) return fail('a wildcard is only allowed as the whole first label, as in *.example.com');
  const parsed = parseAuthority(rest, 0);
  if (!parsed.ok) return parsed;
  const { host, port } = parsed.value;
  const ports = port === 0 ? DEFAULT_PORTS : [port];
  if (wildcard) {
    if (host.includes(':') || IPV4.test(host)) return fail('a wildcard needs a domain name, not an IP address');
    if (!host.includes('.')) return fail('a wildcard needs a domain of at least two labels, as in *.example.com');
    return { ok: true, value: { text, kind: 'wildcard', host, ports } };
  }
  return { ok: true, value: { text, kind: 'exact', host, ports } };
}

/** Splits an allowlist file's text into its entries (drops blank lines and # comments). */
export function allowlistLines(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

function matches(rule: Rule, host: string): boolean {
  return rule.kind === 'exact' ? rule.host === host : host.endsWith(`.${rule.host}`);
}

/** Compiles allowlist entries into a policy. Bad entries are reported in `errors` and allow nothing. */
export function createPolicy(entries: readonly string[]): Policy {
  const rules: Rule[] = [];
  const errors: EntryError[] = [];
  for (const entry of entries) {
    const parsed = parseEntry(entry);
    if (parsed.ok) rules.push(parsed.value);
    else errors.push({ entry, message: parsed.message });
  }
  const decide = (target: Target): Decision => {
    // Targets come from parseAuthority; normalise again so a hand-made one cannot slip past.
    let host = target.host.toLowerCase();
    if (host.endsWith('.')) host = host.slice(0, -1);
    const named = rules.filter((r) => matches(r, host));
    const rule = named.find((r) => r.ports.includes(target.port));
    const where = formatTarget({ host, port: target.port });
    if (rule) return { allowed: true, rule: rule.text, reason: `${where} is allowed by "${rule.text}"` };
    if (named.length > 0) {
      const ports = [...new Set(named.flatMap((r) => r.ports))].sort((a, b) => a - b);
      return { allowed: false, reason: `port ${target.port} is not allowed for ${host} (allowed: ${ports.join(', ')})` };
    }
    return { allowed: false, reason: `${host} is not in the allowlist` };
  };
  return { rules, errors, decide };
}

/** The allowlist entry that would allow `target`: the bare host for 80/443, else host:port. */
export function suggestedEntry(target: Target): string {
  const host = target.host.includes(':') ? `[${target.host}]` : target.host;
  return DEFAULT_PORTS.includes(target.port) ? host : `${host}:${target.port}`;
}

// The addresses the proxy never dials are the shared address policy's:
// sidecars/common/address-policy.ts (classes in config/address-policy.ts).
